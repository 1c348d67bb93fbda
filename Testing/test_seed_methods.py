"""The reference-guided seed methods: the progressive multi-contrast network and DAASR."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from MRISuperResLib.io import read_volume, write_volume
from MRISuperResLib.models.architectures import build_architecture
from MRISuperResLib.models.daasr import blur_rows, match_patches
from MRISuperResLib.phantom import make_phantom
from MRISuperResLib.training.pairs import Degradations, Scan, cut_patches, degrade_instance
from MRISuperResLib.training.config import PairSpec


def _inputs(height: int = 38, width: int = 45, batch: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    lr = torch.rand((batch, 3, height, width), generator=generator)
    reference = torch.rand((batch, 1, height, width), generator=generator)
    return lr, reference, torch.ones_like(reference)


@pytest.mark.parametrize("architecture, arguments", [
    ("progressive", {"levels": 2, "widths": [4, 4, 4, 4, 8, 8, 8, 8]}),
    ("progressive", {"levels": 1, "widths": [4, 4, 4, 4, 8, 8, 8, 8], "use_reference": False}),
    ("daasr", {"features": 8, "groups": 2, "heads": 2, "reference_features": 4}),
])
def test_an_untrained_network_starts_as_cubic_and_keeps_any_slice_size(architecture, arguments):
    network = build_architecture(architecture, arguments).eval()
    for height, width in ((38, 45), (10, 13)):  # the second smaller than the progressive encoder's reach
        lr, reference, mask = _inputs(height, width)
        with torch.no_grad():
            output = network(lr, reference, mask)
        # Zero-initialised last layers: every level, and the whole network, starts as the identity.
        assert output.shape == (2, 1, height, width)
        torch.testing.assert_close(output, lr[:, :1])


def test_the_progressive_network_supervises_its_first_level_at_half_the_factor():
    network = build_architecture("progressive", {"levels": 2, "widths": [4, 4, 4, 4, 8, 8, 8, 8]})
    lr, reference, mask = _inputs()
    output, intermediates = network(lr, reference, mask, auxiliary=True)
    assert set(intermediates) == {"halfway"} and intermediates["halfway"].shape == output.shape
    assert network.auxiliary_outputs == ("halfway",)
    one_level = build_architecture("progressive", {"levels": 1, "widths": [4, 4, 4, 4, 8, 8, 8, 8]})
    assert one_level(lr, reference, mask, auxiliary=True)[1] == {}


def _scan() -> Scan:
    phantom = make_phantom((32, 40, 40), seed=2)
    truth = phantom["T2"].array / phantom["T2"].array.max()
    return Scan(truth.astype(np.float32), None, PairSpec("t2", None, None, (2,)), phantom["T2"].with_array(truth))


def test_halfway_targets_lie_between_the_input_and_the_truth():
    rng = random.Random(0)
    instance = degrade_instance(_scan(), rng, Degradations(factors=(4,), halfway=True))
    error = lambda x: float(np.mean((x - instance.truth) ** 2))  # noqa: E731
    assert 0 < error(instance.halfway) < error(instance.lr)
    patches = cut_patches(instance, 4, 16, random.Random(0), 0.0, 0, 0.0, context=1)
    assert all(p.shape == (7, 16, 16) for p in patches)  # lr, truth, ref, mask, 2 neighbours, halfway
    # Below 4× the half factor is under 2: the first level learns the truth itself.
    small = degrade_instance(_scan(), random.Random(0), Degradations(factors=(3,), halfway=True))
    np.testing.assert_array_equal(small.halfway, small.truth)
    assert degrade_instance(_scan(), random.Random(0), Degradations(factors=(4,))).halfway is None


def test_patch_matching_finds_a_shifted_copy_within_its_window_and_not_beyond():
    query = torch.rand((1, 6, 24, 24), generator=torch.Generator().manual_seed(1))
    near = torch.roll(query, shifts=(1, -2), dims=(2, 3))     # the match lies at (+1, -2)
    retrieved, score, index = match_patches(query, near, near, search=2)
    inner = (slice(None), slice(None), slice(4, 20), slice(4, 20))
    side = 5
    assert torch.all(index[inner] == (1 + 2) * side + (-2 + 2))
    torch.testing.assert_close(score[inner], torch.ones_like(score[inner]))
    torch.testing.assert_close(retrieved[inner], query[inner])
    assert float(score.max()) <= 1.0 + 1e-5
    far = torch.roll(query, shifts=(4, 0), dims=(2, 3))       # outside the ±2 window
    _, far_score, _ = match_patches(query, far, far, search=2)
    assert float(far_score[inner].mean()) < 0.9


def test_matching_memory_grows_with_the_window_not_with_the_image():
    # The bound: (2·search + 1)² similarity maps of the feature map's size. A positions × positions matrix
    # for this 512² map would take 275 GB; the windowed matching needs 25 maps of 1 MB.
    query = torch.rand((1, 4, 512, 512))
    retrieved, score, index = match_patches(query, query, query, search=2)
    assert retrieved.shape == query.shape and score.shape == index.shape == (1, 1, 512, 512)
    assert torch.all(index == 12)  # the patch itself (offset 0, 0) is always the best match


def test_daasr_confidence_is_zero_without_a_reference_and_within_0_1_with_one():
    network = build_architecture("daasr", {"features": 8, "groups": 2, "heads": 2, "reference_features": 4}).eval()
    lr, reference, mask = _inputs()
    with torch.no_grad():
        _, confidence = network(lr, None, None, factor=4.0, confidence=True)
        assert confidence.shape == (2, 1, 38, 45) and float(confidence.abs().max()) == 0.0
        _, confidence = network(lr, reference, mask, factor=4.0, confidence=True)
        assert 0.0 <= float(confidence.min()) and float(confidence.max()) <= 1.0 and float(confidence.max()) > 0
        structure = network(lr, reference, mask, factor=4.0, auxiliary=True)[1]["structure"]
    assert structure.shape == (2, 1, 38, 45)


def test_daasr_reference_at_head_starts_from_weights_trained_without_it_and_then_learns_from_the_reference(tmp_path):
    from MRISuperResLib.training.loop import initialise_from
    arguments = {"features": 8, "groups": 2, "heads": 2, "reference_features": 4}
    torch.manual_seed(0)
    plain = build_architecture("daasr", arguments).eval()
    torch.nn.init.normal_(plain.tail.weight, std=0.1)   # a trained network is not the identity
    weights = tmp_path / "plain.pt"
    torch.save(plain.state_dict(), weights)
    with_head = build_architecture("daasr", {**arguments, "reference_at_head": True})
    initialise_from(with_head, str(weights))
    lr, reference, mask = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(with_head.eval()(lr, reference, mask, factor=4.0),
                                   plain(lr, reference, mask, factor=4.0), rtol=0, atol=1e-6)
    # Once training moves the new convolution, the output depends on the reference through it too.
    output = with_head.train()(lr, reference.requires_grad_(), mask, factor=4.0)
    output.sum().backward()
    assert float(with_head.reference_head.weight.grad.abs().sum()) > 0
    # A weights file that lacks a part that is not zero-initialised is still refused.
    state = plain.state_dict()
    del state["head.weight"]
    torch.save(state, weights)
    with pytest.raises(Exception, match="do not fit this architecture"):
        initialise_from(build_architecture("daasr", {**arguments, "reference_at_head": True}), str(weights))


def test_the_blurred_reference_is_degraded_along_the_rows_only():
    image = torch.zeros((1, 1, 12, 12))
    image[0, 0, 6, :] = 1.0                                    # a line across the rows' direction
    blurred = blur_rows(image, 4.0)
    assert blurred.shape == image.shape
    torch.testing.assert_close(blurred.sum(dim=2), image.sum(dim=2))   # mass kept along each column
    assert float(blurred[0, 0, :, 3].max()) == pytest.approx(0.25)
    torch.testing.assert_close(blur_rows(image, None), image)


def _mrisuperres(*arguments) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "MRISuperResLib.cli", *map(str, arguments)],
                          capture_output=True, text=True)


@pytest.mark.parametrize("architecture, arguments", [
    ("progressive", "{levels: 2, widths: [4, 4, 4, 4, 8, 8, 8, 8], context: 1, use_reference: true}"),
    ("daasr", "{features: 8, groups: 1, heads: 2, reference_features: 4, context: 1, use_reference: true}"),
])
def test_a_seed_method_trains_installs_and_runs_from_the_cli(tmp_path, architecture, arguments):
    phantom = make_phantom((40, 56, 48), seed=3)
    (tmp_path / "data" / "p").mkdir(parents=True)
    write_volume(phantom["T2"], tmp_path / "data" / "p" / "T2.nii.gz")
    write_volume(phantom["T1"], tmp_path / "data" / "p" / "T1.nii.gz")
    pair = "{target: p/T2.nii.gz, reference: p/T1.nii.gz, axes: [0, 1]}"
    config = tmp_path / "seed.yaml"
    config.write_text("\n".join([
        "name: seed", f"architecture: {architecture}", f"arguments: {arguments}", "uses_reference: true",
        "factors: [4]", "steps: 2", "batch_size: 2", "patch_size: 24", "pool_instances: 1",
        "patches_per_instance: 4", "validate_every: 2", f"train:\n  - {pair}", f"val:\n  - {pair}"]))
    models = tmp_path / "models"
    trained = _mrisuperres("train", config, "--data", tmp_path / "data", "--runs", tmp_path / "runs",
                           "--threads", "1", "--install", "--models-dir", models)
    assert trained.returncode == 0, trained.stderr
    log = [json.loads(line) for line in (tmp_path / "runs" / "seed" / "log.jsonl").read_text().splitlines()]
    assert {"halfway": "l1_halfway", "structure": "l1_structure"}[
        "halfway" if architecture == "progressive" else "structure"] in log[-1]
    write_volume(make_phantom((32, 32, 32), seed=4)["T2"], tmp_path / "t2.nii.gz")
    write_volume(make_phantom((32, 32, 32), seed=4)["T1"], tmp_path / "t1.nii.gz")
    assert _mrisuperres("degrade", tmp_path / "t2.nii.gz", "-o", tmp_path / "thick.nii.gz", "--factor", 4).returncode == 0
    confidence = ["--confidence", tmp_path / "confidence.nii.gz"] if architecture == "daasr" else []
    ran = _mrisuperres("run", tmp_path / "thick.nii.gz", "--reference", tmp_path / "t1.nii.gz", "-o", tmp_path / "sr.nii.gz",
                       "--models-dir", models, "--model", "seed", "--quiet", "--threads", "1", "--no-self-check",
                       *confidence)
    assert ran.returncode == 0, ran.stderr
    output = read_volume(tmp_path / "sr.nii.gz").array
    assert output.shape == (32, 32, 32)
    if confidence:
        values = read_volume(tmp_path / "confidence.nii.gz").array
        assert values.shape == output.shape and 0.0 <= values.min() and values.max() <= 1.0 and values.max() > 0
    else:
        refused = _mrisuperres("run", tmp_path / "thick.nii.gz", "-o", tmp_path / "sr2.nii.gz", "--models-dir", models,
                               "--model", "seed", "--confidence", tmp_path / "c.nii.gz")
        assert refused.returncode == 2 and "makes none" in refused.stderr
        assert not (tmp_path / "sr2.nii.gz").exists()


def test_the_adversarial_stage_trains_a_critic_and_resumes_with_it(tmp_path):
    from MRISuperResLib.training.adversarial import Critic, critic_loss, generator_loss

    critic = Critic(features=4)
    real, fake = torch.rand((3, 1, 24, 24)), torch.rand((3, 1, 24, 24), requires_grad=True)
    loss = critic_loss(critic, real, fake, penalty=10.0)
    loss.backward()
    assert fake.grad is None and all(p.grad is not None for p in critic.parameters())  # the critic's step only
    assert generator_loss(critic, fake).requires_grad

    phantom = make_phantom((40, 56, 48), seed=3)
    (tmp_path / "data" / "p").mkdir(parents=True)
    write_volume(phantom["T2"], tmp_path / "data" / "p" / "T2.nii.gz")
    config = tmp_path / "gan.yaml"
    lines = ["name: gan", "architecture: progressive", "arguments: {levels: 1, widths: [4, 4, 4, 4, 8, 8, 8, 8]}",
             "factors: [2]", "steps: 2", "batch_size: 2", "patch_size: 24", "pool_instances: 1",
             "patches_per_instance: 4", "validate_every: 2", "checkpoint_every: 1",
             "adversarial: {weight: 0.01, features: 4}", "train:\n  - {target: p/T2.nii.gz, axes: [0, 1]}"]
    config.write_text("\n".join(lines))
    first = _mrisuperres("train", config, "--data", tmp_path / "data", "--runs", tmp_path / "runs", "--threads", "1")
    assert first.returncode == 0, first.stderr
    state = torch.load(tmp_path / "runs" / "gan" / "checkpoint.pt", weights_only=False)
    assert "critic" in state and "critic_optimizer" in state
    log = json.loads((tmp_path / "runs" / "gan" / "log.jsonl").read_text().splitlines()[-1])
    assert "critic" in log and "adversarial" in log
    resumed = _mrisuperres("train", config, "--data", tmp_path / "data", "--runs", tmp_path / "runs", "--threads", "1",
                           "--resume", "--steps", "3")
    assert resumed.returncode == 0, resumed.stderr
    config.write_text("\n".join(lines).replace("features: 4}", "features: 4, colour: red}"))
    refused = _mrisuperres("train", config, "--data", tmp_path / "data", "--runs", tmp_path / "other")
    assert refused.returncode == 2 and "adversarial settings are wrong" in refused.stderr
