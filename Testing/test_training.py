"""Training: pairs cut as inference sees slices, the losses, and a seeded, resumable training run."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from MRISuperResLib.io import write_volume
from MRISuperResLib.models.registry import sha256_of
from MRISuperResLib.phantom import make_phantom
from MRISuperResLib.training.losses import CompositeLoss, ScatteringFeatures, VGG19_PLAN
from MRISuperResLib.training.pairs import Instance, cut_patches

REPO = Path(__file__).resolve().parents[1]


def test_patches_put_the_degraded_axis_along_rows():
    k = np.arange(40, dtype=np.float32)
    varying_along_i = np.broadcast_to(k[None, None, :] / 40 + 0.5, (30, 36, 40)).copy()  # varies along i only
    instance = Instance(truth=varying_along_i, lr=varying_along_i.copy(), reference=None, axes=(0,), factor=4)
    patches = cut_patches(instance, 8, 16, random.Random(0), 0.0, 2, 0.0)
    assert len(patches) == 8
    for patch in patches:
        truth = patch[1]
        assert np.ptp(truth, axis=1).max() < 1e-6  # constant along columns
        assert np.ptp(truth[:, 0]) > 0.2           # varies along rows: the degraded axis
        assert not patch[2].any() and not patch[3].any()  # no reference: blank, mask 0


def test_inplane_patches_put_a_degraded_axis_along_rows_from_every_plane_holding_one():
    k = np.arange(30, dtype=np.float32)
    varying_along_k = np.broadcast_to(k[:, None, None] / 30 + 0.5, (30, 36, 40)).copy()  # k is not degraded
    instance = Instance(truth=varying_along_k, lr=varying_along_k.copy(), reference=None, axes=(0, 1), factor=2)
    patches = cut_patches(instance, 60, 16, random.Random(0), 0.0, 2, 0.0)
    assert len(patches) == 60
    assert all(np.ptp(patch[1], axis=0).max() < 1e-6 for patch in patches)  # rows run along i or j: constant
    varies_along_columns = [np.ptp(patch[1]) > 0.2 for patch in patches]
    assert any(varies_along_columns) and not all(varies_along_columns)  # the ik/jk planes and the ij plane


def test_reference_misregistration_rotates_only_when_asked():
    k, j, i = np.meshgrid(np.arange(20), np.arange(40), np.arange(40), indexing="ij")
    ramp = (0.3 + (3 * k + 2 * j + i) / 200).astype(np.float32)  # varies in every plane
    instance = Instance(truth=ramp, lr=ramp.copy(), reference=ramp.copy(), axes=(2,), factor=2)
    straight = cut_patches(instance, 6, 16, random.Random(0), 0.0, 2, 0.0)
    np.testing.assert_array_equal(np.stack(straight)[:, 2], np.stack(straight)[:, 1])  # aligned reference
    turned = cut_patches(instance, 6, 16, random.Random(0), 0.0, 2, 0.0, rotation_probability=1.0, max_rotation=5.0)
    for patch in turned:
        assert not np.allclose(patch[2], patch[1], atol=1e-4)  # turned away from the truth
        assert abs(patch[2][8, 8] - patch[1][8, 8]) < 0.01  # about the patch centre


def test_scattering_features_and_composite_loss():
    images = torch.rand(2, 1, 32, 32)
    features = ScatteringFeatures()(images)
    assert features.shape == (2, 81, 8, 8)
    loss = CompositeLoss(l1=1.0, perceptual=0.1, texture=0.1)
    total, parts = loss(images, images)
    assert total.item() == pytest.approx(0.0, abs=1e-7) and set(parts) == {"l1", "perceptual", "texture"}
    output = (images + 0.1 * torch.randn_like(images)).requires_grad_()
    total, _ = loss(output, images)
    total.backward()
    assert total.item() > 0 and output.grad.abs().sum() > 0


def test_vgg19_features_load_a_user_supplied_file(tmp_path):
    layers, channels, state = 0, 3, {}
    for entry in VGG19_PLAN:  # torchvision's layout: features.<index>.weight for each convolution
        if entry != "M":
            state[f"features.{layers}.weight"] = torch.randn(entry, channels, 3, 3) * 0.01
            state[f"features.{layers}.bias"] = torch.zeros(entry)
            channels = entry
            layers += 1
        layers += 1
    state["classifier.0.weight"] = torch.zeros(1)  # ignored
    torch.save(state, tmp_path / "vgg19.pt")
    loss = CompositeLoss(perceptual=1.0, features="vgg19", vgg19_weights=str(tmp_path / "vgg19.pt"))
    images = torch.rand(2, 1, 32, 32)
    total, parts = loss(images + 0.1, images)
    assert parts["perceptual"] > 0
    with pytest.raises(ValueError, match="need a weights file"):
        CompositeLoss(perceptual=1.0, features="vgg19")


@pytest.mark.parametrize("texture", [False, True])
def test_training_is_seeded_resumable_and_writes_a_card(tmp_path, texture):
    data = tmp_path / "data"
    phantom = make_phantom((40, 56, 48), seed=2)
    for split in ("train", "val"):
        (data / split / "p").mkdir(parents=True)
        write_volume(phantom["T2"], data / split / "p" / "T2.nii.gz")
        write_volume(phantom["T1"], data / split / "p" / "T1.nii.gz")
    spec = "{target: %s/p/T2.nii.gz, reference: %s/p/T1.nii.gz, axes: [0, 1]}"
    config = tmp_path / "tiny.yaml"
    config.write_text("\n".join([
        "name: tiny", "title: tiny", "description: test", "architecture: vdsr",
        "arguments: {features: 4, depth: 3, reference_features: 4, use_reference: true, texture_transfer: %s}"
        % str(texture).lower(), "uses_reference: true", "reference_modes: [paired, self]",
        "texture: {paired: 0.5, bank: 0.4}",
        "degradation: thick slices", "factors: [2, 3]", "inplane_probability: %s" % (0.0 if texture else 0.5), "seed: 1", "steps: 2", "batch_size: 4", "patch_size: 16",
        "learning_rate: 0.001", "lr_milestones: [100]", "checkpoint_every: 1", "validate_every: 2",
        "pool_instances: 2", "patches_per_instance: 8", "refresh_every: 1", "noise_probability: 0.5",
        "shift_probability: 0.5", "max_shift: 2", "absent_probability: 0.3",
        "loss: {l1: 1.0, perceptual: 0.1, texture: 0.1, feature_patches: 2}",
        f"train:\n  - {spec % ('train', 'train')}", f"val:\n  - {spec % ('val', 'val')}"]) + "\n")
    command = [sys.executable, "-m", "MRISuperResLib.cli", "train", str(config), "--data", str(data),
               "--runs", str(tmp_path / "runs"), "--threads", "1"]
    first = subprocess.run(command, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 2 and "pass --resume" in again.stderr
    second = subprocess.run(command + ["--steps", "4", "--resume"], capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert "resumed at step 2" in second.stdout
    run = tmp_path / "runs" / "tiny"
    card = json.loads((run / "card.json").read_text())
    assert card["sha256"] == sha256_of(run / "tiny.pt") and card["macs_per_pixel"] > 0
    finest = min(phantom["T2"].spacing)  # the card records what an input's spacing is compared with
    assert card["spacings"] == [pytest.approx(finest, abs=1e-3)] * 2
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4] and {"l1", "perceptual", "texture"} <= set(log[0])
    assert ("model_ref_texture" in log[0]["val_psnr"]) == texture
    assert ("val_psnr_inplane" in log[0]) == (not texture) == ("patch_psnr_db_inplane" in card["validation"])
    assert card["reference_modes"] == ["paired", "self"]


def _phantom_data(root: Path) -> str:
    phantom = make_phantom((40, 56, 48), seed=3)
    (root / "p").mkdir(parents=True)
    write_volume(phantom["T2"], root / "p" / "T2.nii.gz")
    write_volume(phantom["T1"], root / "p" / "T1.nii.gz")
    return "{target: p/T2.nii.gz, reference: p/T1.nii.gz, axes: [0, 1]}"


def _mrisuperres(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "MRISuperResLib.cli", *map(str, arguments)],
                          capture_output=True, text=True)


def _tiny_edsr_config(tmp_path: Path, name: str, *settings: str, validate: bool = True) -> Path:
    """A one-block 2.5D EDSR config on the phantom pair (written under tmp_path/data), with `settings`."""
    pair = _phantom_data(tmp_path / "data")
    config = tmp_path / f"{name}.yaml"
    config.write_text("\n".join([
        f"name: {name}", "architecture: edsr", "arguments: {features: 8, blocks: 1, context: 1, use_reference: true}",
        "uses_reference: true", "batch_size: 4", "patch_size: 16", "patches_per_instance: 8", *settings,
        f"train:\n  - {pair}", *([f"val:\n  - {pair}"] if validate else [])]))
    return config


def test_a_user_trains_a_2_5d_model_installs_it_and_runs_it_with_models_dir(tmp_path):
    config = _tiny_edsr_config(tmp_path, "mine", "factors: [3, 4]", "steps: 3", "pool_instances: 2", "validate_every: 3")
    models = tmp_path / "models"
    trained = _mrisuperres("train", config, "--data", tmp_path / "data", "--runs", tmp_path / "runs",
                           "--threads", "1", "--install", "--models-dir", models)
    assert trained.returncode == 0, trained.stderr
    card = json.loads((models / "models.json").read_text())["models"][0]
    assert card["name"] == "mine" and card["sha256"] == sha256_of(models / "mine.pt")
    assert card["arguments"]["context"] == 1 and card["validation"]["patch_psnr_db"]["cubic"] > 0
    thick = tmp_path / "thick.nii.gz"
    write_volume(make_phantom((32, 32, 32), seed=4)["T2"], tmp_path / "t2.nii.gz")
    assert _mrisuperres("degrade", tmp_path / "t2.nii.gz", "-o", thick, "--factor", 4).returncode == 0
    ran = _mrisuperres("run", thick, "-o", tmp_path / "sr.nii.gz", "--models-dir", models, "--model", "mine",
                       "--quiet", "--threads", "1")
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "sr.nii.gz").is_file()
    # Without --model the folder's own model runs, not plain interpolation.
    planned = _mrisuperres("plan", thick, "--models-dir", models, "--json")
    assert json.loads(planned.stdout)["model"] == "mine"


def test_a_stopped_training_keeps_its_steps_and_says_how_to_go_on(tmp_path):
    config = _tiny_edsr_config(tmp_path, "stopped", "factors: [4]", "steps: 100000", "pool_instances: 2",
                               "validate_every: 100000", "checkpoint_every: 3", validate=False)
    command = [sys.executable, "-m", "MRISuperResLib.cli", "train", str(config), "--data", str(tmp_path / "data"),
               "--runs", str(tmp_path / "runs"), "--threads", "1"]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Output to a pipe: no progress bar, so a line per checkpoint shows the run is alive.
    for line in child.stdout:
        if line.startswith("step 3 of 100000, checkpoint written"):
            break
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    message = err.strip().splitlines()[-1]
    assert message.startswith("mrisuperres: error: Training stopped at step ") and "continue with --resume" in message
    stopped_at = int(message.split("at step ")[1].split()[0])
    checkpoint = tmp_path / "runs" / "stopped" / "checkpoint.pt"
    assert stopped_at >= 3 and torch.load(checkpoint, weights_only=False)["step"] == stopped_at
    assert not (tmp_path / "runs" / "stopped" / "stopped.pt").exists()  # no weights from a stopped run


@pytest.mark.parametrize("change, message", [
    ("colour: red\n", "unknown setting(s) colour"),
    ("", "does not exist"),            # the pair names a missing file
    ("train: []\n", "no training pairs"),
    ("lr_decay: linear\n", "use 'milestones' or 'cosine'"),
])
def test_a_bad_training_config_is_refused_with_one_sentence(tmp_path, change, message):
    pair = "{target: nowhere/T2.nii.gz, axes: [0]}" if not change else "{target: p/T2.nii.gz, axes: [0]}"
    if change.startswith(("colour", "lr_decay")):
        _phantom_data(tmp_path)
    base = f"name: bad\narchitecture: vdsr\ntrain:\n  - {pair}\n"
    config = tmp_path / "bad.yaml"
    config.write_text(base.replace(f"train:\n  - {pair}\n", change) if change.startswith("train") else base + change)
    result = _mrisuperres("train", config, "--data", tmp_path, "--runs", tmp_path / "runs")
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs" / "bad" / "bad.pt").exists()


def test_cosine_decay_warms_up_then_falls_to_zero_at_the_last_step_and_milestones_cut_by_0_3():
    from MRISuperResLib.training.config import TrainingConfig
    from MRISuperResLib.training.loop import _learning_rate_schedule

    base = {"name": "s", "architecture": "vdsr", "train": [{"target": "t.nii.gz", "axes": [0]}], "steps": 100}
    cosine = _learning_rate_schedule(TrainingConfig.from_dict({**base, "lr_decay": "cosine", "warmup_steps": 10}))
    factors = [cosine(step) for step in range(101)]
    assert factors[0] == pytest.approx(0.1, abs=0.01) and factors[9] == pytest.approx(0.976, abs=0.01)
    assert factors[50] == pytest.approx(0.5) and factors[100] == pytest.approx(0.0, abs=1e-12)
    assert all(later <= earlier for earlier, later in zip(factors[9:], factors[10:]))
    stepped = _learning_rate_schedule(TrainingConfig.from_dict({**base, "lr_milestones": [40, 80]}))
    assert [stepped(s) for s in (0, 39, 40, 80)] == pytest.approx([1.0, 1.0, 0.3, 0.09])


def test_2_5d_patches_carry_the_neighbouring_slices_as_inference_does():
    from MRISuperResLib.inference import with_neighbours

    k, j, i = np.meshgrid(np.arange(20), np.arange(40), np.arange(40), indexing="ij")
    volume = (0.3 + (3 * k + 2 * j + i) / 200).astype(np.float32)
    instance = Instance(truth=volume, lr=volume.copy(), reference=None, axes=(2,), factor=2)
    for patch in cut_patches(instance, 6, 16, random.Random(0), 0.0, 0, 0.0, context=1):
        assert patch.shape == (6, 16, 16)
        # Rows run along k, columns along i or j: the slices step along the other in-plane axis.
        steps = {round(float(np.mean(patch[5] - patch[0])), 4), round(float(np.mean(patch[0] - patch[4])), 4)}
        assert steps <= {0.0, 0.005, 0.01, -0.005, -0.01} and len(steps) <= 2
    slices = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((1, 3, 3), np.float32)
    stacked = with_neighbours(slices, 0, 5, 1)
    assert stacked.shape == (5, 3, 3, 3)
    np.testing.assert_array_equal(stacked[:, :, 0, 0], [[0, 0, 1], [1, 0, 2], [2, 1, 3], [3, 2, 4], [4, 3, 4]])


def test_background_workers_bf16_and_a_time_limit_stop_with_a_checkpoint(tmp_path):
    config = _tiny_edsr_config(tmp_path, "timed", "factors: [2, 3]", "steps: 100000", "pool_instances: 3",
                               "refresh_every: 1", "data_workers: 2", "bf16: true", "time_limit_minutes: 0.05",
                               "validate_every: 100000", validate=False)
    trained = _mrisuperres("train", config, "--data", tmp_path / "data", "--runs", tmp_path / "runs", "--threads", "1")
    assert trained.returncode == 0, trained.stderr
    run = tmp_path / "runs" / "timed"
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert 0 < state["step"] < 100000
    assert f"time limit of 0.05 minutes reached at step {state['step']}" in trained.stdout + trained.stderr
    card = json.loads((run / "card.json").read_text())
    assert card["training"].startswith(f"{state['step']} steps") and card["sha256"] == sha256_of(run / "timed.pt")
    again = _mrisuperres("train", config, "--data", tmp_path / "data", "--runs", tmp_path / "runs", "--threads", "1",
                         "--resume")
    assert again.returncode == 0 and f"resumed at step {state['step']}" in again.stdout


def test_device_pack_round_trips_the_training_scans_to_eight_bits(tmp_path):
    pair = _phantom_data(tmp_path / "data")
    config = tmp_path / "packed.yaml"
    config.write_text("\n".join(["name: packed", "architecture: edsr", f"train:\n  - {pair}\n  - {pair}"]))
    packed = tmp_path / "scans.npz"
    made = subprocess.run([sys.executable, REPO / "scripts" / "device_train.py", "pack", config, packed,
                           "--data", tmp_path / "data"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert "2 scans, 2 distinct volumes" in made.stdout  # the same target twice is stored once
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from device_train import unpack
    finally:
        sys.path.remove(str(REPO / "scripts"))
    from MRISuperResLib.training.config import TrainingConfig
    from MRISuperResLib.training.pairs import load_scans
    originals = load_scans(tmp_path / "data", TrainingConfig.from_yaml(config).pair_specs("train"))
    for original, scan in zip(originals, unpack(packed)):
        span = float(original.truth.max() - original.truth.min())
        assert np.abs(scan.truth - original.truth).max() <= span / 255 / 2 + 1e-6
        assert np.abs(scan.reference - original.reference).max() <= 0.51 / 255 * float(np.ptp(original.reference))
        assert scan.template.grid.same_as(original.template.grid) and scan.spec == original.spec


@pytest.mark.parametrize("config", sorted((Path(__file__).resolve().parents[1] / "scripts" / "configs").glob("*.yaml")),
                         ids=lambda path: path.stem)
def test_every_shipped_training_config_reads(config):
    from MRISuperResLib.training.config import TrainingConfig

    loaded = TrainingConfig.from_yaml(config)
    assert loaded.name == config.stem and loaded.train


def test_synthetic_lesions_are_local_soft_blobs_the_reference_mostly_shares_and_sometimes_holds_alone(monkeypatch):
    from MRISuperResLib.training import lesions

    rng = np.random.default_rng(0)
    truth = (0.5 + 0.02 * rng.standard_normal((40, 48, 48))).astype(np.float32)
    reference = (0.4 + 0.02 * rng.standard_normal((40, 48, 48))).astype(np.float32)
    before = truth.copy(), reference.copy()
    counts = {"both": 0, "target only": 0, "reference only": 0}
    for seed in range(40):
        with_truth, with_reference = lesions.with_lesions(truth, reference, (1.0, 1.0, 2.0), random.Random(seed))
        changed, changed_reference = np.abs(with_truth - truth) > 0.05, np.abs(with_reference - reference) > 0.05
        # A few blobs, not a volume-wide change.
        assert changed.mean() < 0.1 and changed_reference.mean() < 0.1
        counts["both"] += bool((changed & changed_reference).any())
        counts["target only"] += bool((changed & ~changed_reference).any())
        counts["reference only"] += bool((changed_reference & ~changed).any())
        np.testing.assert_array_equal(
            with_truth, lesions.with_lesions(truth, reference, (1.0, 1.0, 2.0), random.Random(seed))[0])
    assert all(counts.values()), counts
    np.testing.assert_array_equal(truth, before[0])  # the scan itself is never changed
    np.testing.assert_array_equal(reference, before[1])
    # One lesion at a time (as in a small volume): at most 12 mm across, give or take its elongation and soft
    # edge (here 1 mm in-plane, 2 mm slices), with partial-volume values between the surround and the lesion.
    monkeypatch.setattr(lesions, "VOLUME_PER_LESION_MM3", 1e9)
    for seed in range(20):
        with_truth, _ = lesions.with_lesions(truth, None, (1.0, 1.0, 2.0), random.Random(seed))
        difference = np.abs(with_truth - truth)
        changed = difference > 0.05
        extent = [np.ptp(np.nonzero(changed.any(axis=tuple(a for a in range(3) if a != axis)))[0]) + 1
                  for axis in range(3)]
        assert extent[0] <= 10 and max(extent[1:]) <= 18, extent
        assert ((difference > 0.03) & (difference < 0.5 * difference.max())).any()


def test_lesions_go_into_the_truth_before_it_is_degraded_and_a_config_without_them_draws_as_before():
    from MRISuperResLib.training.config import PairSpec
    from MRISuperResLib.training.pairs import Degradations, Scan, degrade_instance

    phantom = make_phantom((32, 48, 48), seed=1)["T2"]
    scan = Scan(phantom.array / phantom.array.max(), None, PairSpec("t", None, None, (2,)), phantom)
    plain_rng, lesion_free_rng = random.Random(5), random.Random(5)
    plain = degrade_instance(scan, plain_rng, Degradations(factors=(4,)))
    degrade_instance(scan, lesion_free_rng, Degradations(factors=(4,), lesion_probability=0.0))
    assert plain_rng.random() == lesion_free_rng.random()  # no extra random number drawn
    lesioned = degrade_instance(scan, random.Random(5), Degradations(factors=(4,), lesion_probability=1.0))
    assert lesioned.truth.shape == plain.truth.shape and not np.array_equal(lesioned.truth, plain.truth)
    # The input is the lesioned truth made thick: it differs where the truth does.
    assert not np.array_equal(lesioned.lr, plain.lr)
