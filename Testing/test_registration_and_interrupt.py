"""Rigid registration of a misplaced reference, and Ctrl-C leaving no output behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import rotation
from MRISuperResLib import Volume, superresolve
from MRISuperResLib.io import write_volume
from MRISuperResLib.phantom import make_phantom
from MRISuperResLib.registration import (MAX_SAMPLES, SAMPLING_SHARE, RegistrationFailed, pyramid_levels, register_rigid,
                                         sampling_shares)
from MRISuperResLib.resample import resample_to_grid

REPO = Path(__file__).resolve().parents[1]


def test_registration_recovers_a_known_rigid_misplacement():
    phantom = make_phantom((48, 64, 56), seed=3)
    fixed, moving = phantom["T2"], phantom["T1"]
    # Move the reference: rotate by 4 degrees about k and shift it by (3, -2, 2) mm.
    truth = sitk.Euler3DTransform((0, 0, 0), 0.0, 0.0, np.radians(4.0), (3.0, -2.0, 2.0))
    moved_grid = moving.grid
    moved_values, _ = resample_to_grid(moving, moved_grid, truth.GetInverse())
    misplaced = Volume.on_grid(moved_values.array, moved_grid)
    found = register_rigid(fixed, misplaced)
    points = fixed.grid.index_to_physical(np.array([[10, 10, 10], [40, 50, 30], [28, 32, 24]], dtype=float))
    # misplaced(x) = reference(T⁻¹(x)): the reference's content at p now lies at T(p), where it must be found.
    expected = np.array([truth.TransformPoint(tuple(p)) for p in points])
    recovered = np.array([found.TransformPoint(tuple(p)) for p in points])
    assert np.abs(recovered - expected).max() < 1.0  # within a voxel


def test_registration_gives_the_same_transform_every_time():
    # With ITK's threads the metric's sums came in varying order: 21 or 22 iterations, transforms 1e-3 mm apart.
    phantom = make_phantom((48, 64, 56), seed=3)
    thick = Volume(phantom["T2"].array[::4], (1.0, 1.0, 4.0), phantom["T2"].origin, phantom["T2"].direction)
    moved = Volume(phantom["T1"].array, (1.0, 1.0, 1.0), tuple(np.add(phantom["T1"].origin, (0.7, -0.4, 0.3))),
                   phantom["T1"].direction)
    results = [register_rigid(thick, moved).GetParameters() for _ in range(4)]
    assert all(r == results[0] for r in results[1:]), results


def test_the_metric_samples_at_most_a_fixed_number_of_voxels_per_level():
    small = sampling_shares((48, 64, 56))  # 172 k voxels: 20 % at every level
    assert small == [SAMPLING_SHARE] * 3
    large = sampling_shares((256, 256, 64))  # the benchmark input: 4.2 M voxels
    assert large[0] == SAMPLING_SHARE and large[-1] < SAMPLING_SHARE
    assert abs(large[-1] * 256 * 256 * 64 - MAX_SAMPLES) < 1


def test_a_stack_of_two_or_three_slices_registers_at_full_resolution_only():
    """ITK smooths the images at full resolution for every smoothed level and cannot along an axis of fewer than
    4 voxels (found by the fuzz test): such a stack registers at the finest, unsmoothed level alone."""
    assert [shrink for shrink, _ in pyramid_levels((64, 64, 4), (40, 48, 36))] == [4, 2, 1]
    assert pyramid_levels((64, 64, 3), (40, 48, 36)) == [(1, 0.0)]
    phantom = make_phantom((32, 40, 36), seed=5)
    fixed, moving = phantom["T2"], phantom["T1"]
    thin = Volume(fixed.array[:12:4], (fixed.spacing[0], fixed.spacing[1], 4 * fixed.spacing[2]), fixed.origin,
                  fixed.direction)  # 3 thick slices
    register_rigid(thin, moving)
    report = {}
    superresolve(thin, moving, model="vdsr-mixed", threads=1, self_check=False, report=report)
    assert "moved_mm" in report["registration"]


def test_a_pair_itk_cannot_register_is_left_where_it_was_and_the_run_says_why():
    """Found by the fuzz test: on a nearly uniform input, ITK's mutual information fails inside `Execute`."""
    phantom = make_phantom((32, 40, 36), seed=5)
    rng = np.random.default_rng(0)
    flat = Volume(rng.integers(1, 5, (13, 15, 6)).astype(np.int16), (0.97, 0.30, 4.98), (10.0, 10.0, 10.0))
    with pytest.raises(RegistrationFailed, match="^Zero-valued spacing is not supported"):
        register_rigid(flat, phantom["T1"])
    messages, report = [], {}
    result = superresolve(flat, phantom["T1"], model="vdsr-mixed", threads=1, self_check=False,
                          progress=messages.append, report=report)
    assert report["registration"]["kept"] is False and report["registration"]["failed"].startswith("Zero-valued")
    assert any(m.message.startswith("reference left where it was: registration failed in ITK (") and m.warning
               for m in messages)
    assert np.isfinite(result.array).all()


def test_run_with_registration_prints_the_transform(tmp_path, cli, untrained_models_dir):
    phantom = make_phantom((32, 48, 40), seed=4)
    from MRISuperResLib.degrade import thick_slices

    thick = write_volume(thick_slices(phantom["T2"], 2, 4), tmp_path / "thick.nii.gz")
    # The reference moved by 6 and 5 voxels in-plane: registration has something to find.
    moved = phantom["T1"].with_array(np.roll(phantom["T1"].array, (6, 5), axis=(1, 2)))
    reference = write_volume(moved, tmp_path / "t1.nii.gz")
    code, _, err = cli("run", thick, "--reference", reference, "--register-reference", "-o", tmp_path / "o.nii.gz",
                       "--quiet", "--model", "tiny", "--models-dir", untrained_models_dir, "--no-self-check")
    assert code == 0, err
    assert "reference registered (edge agreement" in err and "mutual information" in err
    assert "rotation" in err and "translation" in err


def test_ctrl_c_stops_cleanly_and_writes_nothing(tmp_path, untrained_models_dir):
    array = np.random.default_rng(0).random((40, 200, 200)).astype(np.float32)
    source = write_volume(Volume(array, (0.9, 0.9, 4.0), direction=rotation("x", 10)), tmp_path / "in.nii.gz")
    output = tmp_path / "out.nii.gz"
    child = subprocess.Popen(
        [sys.executable, "-m", "MRISuperResLib.cli", "run", str(source), "-o", str(output), "--progress-json",
         "--model", "tiny", "--models-dir", str(untrained_models_dir), "--threads", "1", "--batch-size", "1",
         "--no-self-check"],  # an untrained network would fall back to cubic and never reach the model stage
        cwd=REPO / "MRISuperRes", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # A shell that runs the tests as a background job ignores SIGINT, and its children inherit that;
        # Python installs its KeyboardInterrupt handler only where SIGINT has its default action.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in child.stdout:
        event = json.loads(line)
        if event["stage"] == "model" and event["done"] >= 2:
            child.send_signal(signal.SIGINT)
            break
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130
    assert "cancelled; no output was written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii.gz", "models"]


def test_registration_choice_reaches_the_child_and_the_batch_manifest():
    from MRISuperResLib.cli import build_parser
    from MRISuperResLib.cohort import _option_value
    from MRISuperResLib.job import RunOptions

    assert RunOptions().arguments() == ["--device", "auto"]   # registered by default
    assert RunOptions(register_reference=False).arguments()[-1] == "--no-register-reference"
    parse = lambda *flags: build_parser().parse_args(["run", "in.nii", "-o", "o.nii", *flags])  # noqa: E731
    assert [parse(*f).register_reference for f in ((), ("--register-reference",), ("--no-register-reference",))] \
        == [True, True, False]
    assert [_option_value("register_reference", t) for t in ("yes", "0", "no", "true")] == [True, False, False, True]


def test_the_thread_count_limits_itk_too():
    import SimpleITK as sitk
    import torch

    from MRISuperResLib.devices import set_threads

    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(), torch.get_num_threads()
    try:
        set_threads(1)
        assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 1 and torch.get_num_threads() == 1
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before[0])
        torch.set_num_threads(before[1])
