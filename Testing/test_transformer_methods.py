"""The transformer seed methods: TransMRSR with its generative prior, and the CNN + ViT disentanglement network."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from MRISuperResLib.io import read_volume, write_volume
from MRISuperResLib.models.architectures import build_architecture
from MRISuperResLib.models.disentangle import SwappedAutoencoder
from MRISuperResLib.models.swin import SwinLayer
from MRISuperResLib.phantom import make_phantom
from MRISuperResLib.training.priors import DisentanglementSettings, disentanglement_loss, kmeans

TINY = {
    "transmrsr": {"widths": [8, 8, 8, 8], "latent_dim": 8, "heads": 2, "window": 4, "context": 1, "centroids": 3},
    "cnn-vit": {"features": 8, "blocks": 1, "vit_dim": 8, "vit_layers": 1, "heads": 2, "context": 1},
}


def _mrisuperres(*arguments) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "MRISuperResLib.cli", *map(str, arguments)], capture_output=True, text=True)


def _inputs_reaching(layer: SwinLayer, x: torch.Tensor, pixel: tuple[int, int, int]) -> torch.Tensor:
    """Which input positions (B, H, W) one output pixel (b, row, column) depends on: where its gradient is
    not zero (masked attention contributes exact zeros)."""
    x = x.clone().requires_grad_(True)
    layer(x)[pixel[0], :, pixel[1], pixel[2]].sum().backward()
    return x.grad.abs().amax(dim=1) > 0


def _window(shape, image: int, rows: slice, columns: slice) -> torch.Tensor:
    window = torch.zeros(shape, dtype=torch.bool)
    window[image, rows, columns] = True
    return window


def test_window_attention_stays_inside_windows_and_never_wraps_around():
    torch.manual_seed(0)
    plain, shifted = SwinLayer(4, 2, window=4, shift=0), SwinLayer(4, 2, window=4, shift=2)
    x = torch.rand(2, 4, 12, 16)                     # whole windows, a batch of two
    shape = (2, 12, 16)
    # Exactly its own window, in its own image.
    assert torch.equal(_inputs_reaching(plain, x, (0, 9, 13)), _window(shape, 0, slice(8, 12), slice(12, 16)))
    # Shifted by 2, an inner window is the 4 × 4 block starting at (2, 2).
    assert torch.equal(_inputs_reaching(shifted, x, (1, 3, 3)), _window(shape, 1, slice(2, 6), slice(2, 6)))
    # The roll brings the top-left 2 × 2 and the bottom-right 2 × 2 into one window; the mask keeps them apart.
    assert torch.equal(_inputs_reaching(shifted, x, (1, 0, 0)), _window(shape, 1, slice(0, 2), slice(0, 2)))
    assert torch.equal(_inputs_reaching(shifted, x, (1, 11, 15)), _window(shape, 1, slice(10, 12), slice(14, 16)))


@pytest.mark.parametrize("architecture", sorted(TINY))
def test_an_untrained_transformer_network_starts_as_cubic_and_keeps_any_slice_size(architecture):
    network = build_architecture(architecture, TINY[architecture]).eval()
    for height, width in ((37, 45), (9, 20), (64, 64)):
        lr = torch.rand((2, 3, height, width))
        with torch.no_grad():
            output = network(lr)
        assert output.shape == (2, 1, height, width)
        torch.testing.assert_close(output, lr[:, :1])   # the last layer starts at zero
    assert network.macs_per_output_pixel > 0
    # Trained (here: a random last layer), the padding and cropping keep the slice's own pixels in place: a
    # slice and its first 32 rows give the same output away from the crop's edge and the padded border.
    torch.manual_seed(2)
    last = network.reconstruction[-1] if architecture == "transmrsr" else network.tail[-1]
    torch.nn.init.normal_(last.weight, std=0.1)
    lr = torch.rand((1, 3, 64, 64))
    with torch.no_grad():
        full, top = network(lr), network(lr[..., :32, :])
    assert not torch.allclose(full, lr[:, :1]) and torch.isfinite(full).all()
    assert top.shape == (1, 1, 32, 64)


def test_truncation_pulls_each_latent_towards_its_nearest_centroid():
    network = build_architecture("transmrsr", {**TINY["transmrsr"], "latent_dim": 2, "truncation": 0.7})
    latent = torch.tensor([[1.0, 1.0], [-4.0, 0.0]])
    assert torch.equal(network.truncate(latent), latent)        # no centroids yet: unchanged
    network.centroids.copy_(torch.tensor([[0.0, 0.0], [-5.0, 0.0], [9.0, 9.0]]))
    network.has_centroids.fill_(True)
    expected = torch.tensor([[0.7, 0.7], [-4.3, 0.0]])
    torch.testing.assert_close(network.truncate(latent), expected)
    network.truncation = 1.0                                     # the ablation without truncation
    assert torch.equal(network.truncate(latent), latent)


def test_kmeans_finds_separated_clusters():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(50, 2, generator=generator) for c in centres])
    found = kmeans(points, 3)
    assert torch.cdist(found, centres).min(dim=0).values.max() < 0.1


def test_the_generator_makes_images_of_the_patch_size():
    network = build_architecture("transmrsr", TINY["transmrsr"])
    assert network.generate(torch.randn(3, 8), 32, 48).shape == (3, 1, 32, 48)


def test_disentanglement_losses_train_the_network_through_its_output_only():
    network = build_architecture("cnn-vit", TINY["cnn-vit"])
    autoencoder = SwappedAutoencoder(widths=(4, 4, 4, 4), texture_dim=8).eval().requires_grad_(False)
    loss_fn = disentanglement_loss(autoencoder, network, DisentanglementSettings(structure=1.0, texture=1.0, vit=1.0))
    lr = torch.rand(2, 3, 32, 32)
    output = (lr[:, :1] + 0.3 * torch.rand(2, 1, 32, 32)).requires_grad_(True)
    loss, parts = loss_fn(lr, output)
    assert set(parts) == {"structure", "texture", "vit"} and all(0 <= v <= 2 for v in parts.values())
    loss.backward()
    assert output.grad is not None and output.grad.abs().sum() > 0
    assert all(p.grad is None for p in network.vit.parameters())        # the ViT term cannot collapse the ViT
    same, _ = loss_fn(lr, lr[:, :1])
    assert same.item() < 1e-5                                            # the input itself loses nothing


def _data(root: Path) -> str:
    phantom = make_phantom((40, 56, 48), seed=3)
    (root / "p").mkdir(parents=True)
    write_volume(phantom["T2"], root / "p" / "T2.nii.gz")
    return "{target: p/T2.nii.gz, axes: [0, 1]}"


@pytest.mark.parametrize("architecture, stage, saved", [
    ("transmrsr", "generative_prior: {steps: 2, critic_features: 4, latent_samples: 16}", "prior.pt"),
    ("cnn-vit", "disentanglement: {autoencoder_steps: 2, critic_features: 4}", "autoencoder.pt"),
])
def test_a_transformer_method_pretrains_trains_resumes_installs_and_runs(tmp_path, architecture, stage, saved):
    pair = _data(tmp_path / "data")
    arguments = json.dumps(TINY[architecture])
    config = tmp_path / "t.yaml"
    lines = ["name: t", f"architecture: {architecture}", f"arguments: {arguments}", "factors: [4]", "steps: 2",
             "batch_size: 2", "patch_size: 32", "pool_instances: 1", "patches_per_instance: 4", "validate_every: 2",
             stage, f"train:\n  - {pair}", f"val:\n  - {pair}"]
    config.write_text("\n".join(lines))
    models, runs = tmp_path / "models", tmp_path / "runs"
    trained = _mrisuperres("train", config, "--data", tmp_path / "data", "--runs", runs, "--threads", "1",
                           "--install", "--models-dir", models)
    assert trained.returncode == 0, trained.stderr
    assert (runs / "t" / saved).is_file()
    card = json.loads((runs / "t" / "card.json").read_text())
    assert ("generative prior" if saved == "prior.pt" else "swapped autoencoder") in card["training"]
    log = [json.loads(line) for line in (runs / "t" / "log.jsonl").read_text().splitlines()]
    if saved == "prior.pt":
        weights = torch.load(runs / "t" / "t.pt", weights_only=True)
        assert bool(weights["has_centroids"]) and weights["centroids"].abs().sum() > 0
    else:
        assert {"structure", "texture", "vit"} <= set(log[-1])
    resumed = _mrisuperres("train", config, "--data", tmp_path / "data", "--runs", runs, "--threads", "1",
                           "--resume", "--steps", "3")
    assert resumed.returncode == 0, resumed.stderr
    stages = [line for line in (runs / "t" / "log.jsonl").read_text().splitlines() if '"stage"' in line]
    assert len(stages) == 1                                     # the stage ran once, not again on resume

    volume = make_phantom((32, 32, 32), seed=4)["T2"]
    write_volume(volume, tmp_path / "t2.nii.gz")
    assert _mrisuperres("degrade", tmp_path / "t2.nii.gz", "-o", tmp_path / "thick.nii.gz", "--factor", 4).returncode == 0
    ran = _mrisuperres("run", tmp_path / "thick.nii.gz", "-o", tmp_path / "sr.nii.gz", "--models-dir", models,
                       "--model", "t", "--quiet", "--threads", "1", "--no-self-check")
    assert ran.returncode == 0, ran.stderr
    assert read_volume(tmp_path / "sr.nii.gz").array.shape == (32, 32, 32)


def test_a_stage_for_the_wrong_architecture_is_refused_with_one_sentence(tmp_path):
    pair = _data(tmp_path / "data")
    config = tmp_path / "bad.yaml"
    config.write_text("\n".join(["name: bad", "architecture: edsr", "arguments: {features: 8, blocks: 1}",
                                 "steps: 1", "batch_size: 2", "patch_size: 32", "pool_instances: 1",
                                 "patches_per_instance: 4", "generative_prior: {steps: 1}", f"train:\n  - {pair}"]))
    refused = _mrisuperres("train", config, "--data", tmp_path / "data", "--runs", tmp_path / "runs")
    assert refused.returncode == 2 and "generative_prior needs a network with a generator decoder" in refused.stderr
    assert refused.stderr.strip().count("\n") == 0


def test_transmrsr_trains_under_ddp_with_its_prior_made_once(tmp_path):
    """Two gloo processes: the first runs the generative stage, the second loads it; the parts only the
    generator uses are frozen, so DDP does not wait for their gradients."""
    pair = _data(tmp_path / "data")
    config = tmp_path / "ddp.yaml"
    config.write_text("\n".join([
        "name: ddp", "architecture: transmrsr", f"arguments: {json.dumps(TINY['transmrsr'])}", "factors: [4]",
        "steps: 2", "batch_size: 2", "patch_size: 32", "pool_instances: 1", "patches_per_instance: 4",
        "generative_prior: {steps: 2, critic_features: 4, latent_samples: 16}", f"train:\n  - {pair}"]))
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "MRISuperResLib.training", str(config), "--data", str(tmp_path / "data"),
                          "--runs", str(tmp_path / "runs"), "--threads", "1"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "runs" / "ddp" / "ddp.pt").is_file()
    stages = [line for line in (tmp_path / "runs" / "ddp" / "log.jsonl").read_text().splitlines() if '"stage"' in line]
    assert len(stages) == 1
