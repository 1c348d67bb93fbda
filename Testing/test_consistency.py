"""Data consistency: the slice-profile operators, the exact projection, the profile estimate, and the run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import smooth_volume
from MRISuperResLib import Volume, pipeline, superresolve
from MRISuperResLib.consistency import ProfileOperator, estimate_profile, profile_matrix, project, range_projector
from MRISuperResLib.degrade import kspace_truncate, thick_slices
from MRISuperResLib.geometry import resampled_grid
from MRISuperResLib.phantom import make_phantom
from MRISuperResLib.pipeline import _consistent_with_input, plan_run
from MRISuperResLib.resample import preinterpolate


def truth_volume() -> Volume:
    return make_phantom(shape_kji=(48, 64, 56), seed=2)["T2"]


@pytest.mark.parametrize("profile", ["box", "gaussian", "point", "sinc"])
@pytest.mark.parametrize("ratio", [4.0, 6.11])
def test_every_acquired_slice_is_a_weighted_average_of_the_output(profile, ratio):
    matrix = profile_matrix(profile, 9, int(9 * ratio), ratio, 1.0)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-9)
    assert matrix.shape == (9, int(9 * ratio))


@pytest.mark.parametrize("profile", ["box", "gaussian"])
def test_the_operators_acquire_the_slices_that_simulation_makes(profile):
    truth = truth_volume()
    thick = thick_slices(truth, 2, 4, profile)
    operator = ProfileOperator.between(profile, thick, truth.array.shape, truth.spacing, (2,))
    other = ProfileOperator.between({"box": "gaussian", "gaussian": "box"}[profile], thick, truth.array.shape,
                                    truth.spacing, (2,))
    spread = float(np.ptp(thick.array))

    def error(op: ProfileOperator) -> float:  # the end slabs differ by how each treats the volume's edge
        return float(np.max(np.abs(op.acquire(truth.array.astype(np.float32)) - thick.array)[1:-1])) / spread

    # the box is the same average; the simulation's Gaussian is a discretised one, sampled between voxels
    assert error(operator) < (1e-5 if profile == "box" else 0.015)
    assert error(other) > 0.03


@pytest.mark.parametrize("profile", ["box", "gaussian"])
@pytest.mark.parametrize("spacings", [(1.0, 1.0, 4.0), (0.9, 3.7, 5.5)], ids=["4x-k", "two-axes-fractional"])
def test_the_projection_acquires_exactly_the_input_and_moves_a_consistent_output_nowhere(profile, spacings):
    rng = np.random.default_rng(0)
    source = Volume(rng.random((7, 9, 20)).astype(np.float32), spacing=spacings)
    target_spacing = (0.9, 0.9, 0.9)
    axes = tuple(a for a in range(3) if spacings[a] > 0.9 + 1e-6)
    shape = tuple(reversed(resampled_grid(source.grid, target_spacing).size))
    output = rng.random(shape).astype(np.float32)
    projected = project(source, output, target_spacing, axes, profile)
    operator = ProfileOperator.between(profile, source, shape, target_spacing, axes)
    np.testing.assert_allclose(operator.acquire(projected), source.array, atol=1e-4)
    # a projection: applied to its own result it changes nothing
    np.testing.assert_allclose(project(source, projected, target_spacing, axes, profile), projected, atol=1e-4)


def test_in_a_magnitude_image_slabs_acquired_as_zero_stay_zero_and_the_others_are_projected():
    rng = np.random.default_rng(1)
    # Non-negative slabs, some of them 0 (air), and an output that rings either side of 0 there.
    source = Volume(np.where(rng.random((7, 9, 10)) < 0.3, 0.0, rng.random((7, 9, 10))).astype(np.float32),
                    spacing=(1.0, 1.0, 4.0))
    output = rng.normal(0.3, 0.5, (28, 9, 10)).astype(np.float32)
    plain = project(source, output, (1.0, 1.0, 1.0), (2,), "box")
    kept = project(source, output, (1.0, 1.0, 1.0), (2,), "box", non_negative=True)
    operator = ProfileOperator.between("box", source, kept.shape, (1.0, 1.0, 1.0), (2,))
    np.testing.assert_allclose(operator.acquire(kept), source.array, atol=1e-5)
    air = np.repeat(source.array == 0, 4, axis=0)
    assert air.any() and (plain[air] < -0.1).any()
    assert not kept[air].any()
    np.testing.assert_array_equal(kept[~air], plain[~air])
    # Overlapping or unequal boxes (a fractional factor) keep the plain projection: a voxel set to 0 would
    # change a neighbouring slab's mean.
    fractional = Volume(source.array, spacing=(1.0, 1.0, 4.3))
    shape = tuple(reversed(resampled_grid(fractional.grid, (1.0, 1.0, 1.0)).size))
    output = rng.normal(0.3, 0.5, shape).astype(np.float32)
    np.testing.assert_array_equal(project(fractional, output, (1.0, 1.0, 1.0), (2,), "box", non_negative=True),
                                  project(fractional, output, (1.0, 1.0, 1.0), (2,), "box"))


def test_the_run_keeps_the_air_of_a_magnitude_image_at_zero():
    truth = truth_volume()
    thick = thick_slices(truth, 2, 4, "box")
    thick.array[:, :, :8] = 0  # masked: air
    plan = plan_run(thick, target_spacing=truth.spacing, model="cubic")
    output = preinterpolate(thick, plan.target).array - 50  # an output that undershoots everywhere
    made = _consistent_with_input(thick, output, plan, None, None, {}, tuned_for="box")
    assert not made[:, :, :8].any() and made.min() < 0  # air at 0; elsewhere the projection decides
    shifted = Volume(thick.array - 50, thick.spacing, thick.origin, thick.direction)  # not a magnitude image
    made = _consistent_with_input(shifted, output, plan, None, None, {}, tuned_for="box")
    np.testing.assert_array_equal(made, project(shifted, output, plan.target.spacing, plan.upsampled, "box"))


@pytest.mark.parametrize("profile", ["box", "gaussian"])
@pytest.mark.parametrize("first,size", [(0, 64), (5, 24), (3, 30)])
def test_the_range_projector_projects_onto_what_the_slices_within_a_patch_see(profile, first, size):
    matrix = profile_matrix(profile, 16, 64, 4.0, 1.0)
    projector = range_projector(matrix, first, size)
    np.testing.assert_allclose(projector @ projector, projector, atol=1e-9)
    np.testing.assert_allclose(projector, projector.T, atol=1e-9)
    within = matrix[:, first:first + size]
    within = within[within.sum(axis=1) >= 1 - 1e-3]
    # Those slices see nothing of what is left, and the projector keeps one dimension per slice.
    assert len(within) >= 3 and round(np.trace(projector)) == len(within)
    np.testing.assert_allclose(within @ (np.eye(size) - projector), 0, atol=1e-9)
    assert not range_projector(matrix, 0, 3).any()  # no 4-voxel slice fits in 3 voxels


@pytest.mark.parametrize("degradation, expected", [
    (lambda v: thick_slices(v, 2, 4, "box"), "box"),
    (lambda v: thick_slices(v, 2, 4, "gaussian"), "gaussian"),
    (lambda v: thick_slices(v, 2, 3, "box"), "box"),
    (lambda v: thick_slices(v, 2, 2, "box"), "box"),  # where a box of two is also a point sample between them
    (lambda v: kspace_truncate(v, (0, 1), 2), None),  # in-plane k-space truncation: recognised, left alone
], ids=["box-4x", "gaussian-4x", "box-3x", "box-2x", "kspace-2x"])
def test_the_profile_that_made_the_input_is_the_one_estimated_from_the_truth(degradation, expected):
    truth = truth_volume()
    low = degradation(truth)
    axes = tuple(a for a in range(3) if low.spacing[a] > truth.spacing[a] + 1e-6)
    shape = tuple(reversed(resampled_grid(low.grid, truth.spacing).size))
    output = truth.array[tuple(slice(0, n) for n in shape)].astype(np.float32)
    estimate = estimate_profile(low, output, truth.spacing, axes)
    assert estimate.profile == expected, estimate.describe()
    assert {"box", "gaussian", "sinc"} <= set(estimate.misfits)


def test_a_run_agrees_with_the_acquired_slices_unless_told_not_to():
    truth = truth_volume()
    thick = thick_slices(truth, 2, 4, "box")
    before = thick.array.copy()
    report: dict = {}
    # the default model: an untrained one's output is nearly cubic, which passes through the slice centres
    common = dict(self_check=False, target_spacing=truth.spacing, threads=2)
    result = superresolve(thick, report=report, **common)
    np.testing.assert_array_equal(thick.array, before)
    assert report["slice_profile"] == "box"
    slabs = result.array[: thick.array.shape[0] * 4].reshape(thick.array.shape[0], 4, *thick.array.shape[1:]).mean(1)
    np.testing.assert_allclose(slabs, thick.array, atol=1e-3 * float(np.ptp(thick.array)))

    untouched_report: dict = {}
    untouched = superresolve(thick, report=untouched_report, consistency=False, **common)
    assert "slice_profile" not in untouched_report
    assert not np.allclose(untouched.array, result.array)


def test_the_self_check_and_adaptation_count_the_error_the_consistency_step_leaves_when_it_will_project():
    truth = truth_volume()
    thick = thick_slices(truth, 2, 4, "box")
    reports = {}
    for consistency in (True, False):
        reports[consistency] = {}
        superresolve(thick, model="vdsr-mixed", target_spacing=truth.spacing, threads=2, adapt=0,
                     consistency=consistency, report=reports[consistency])
    assert reports[True]["pairs_profile"] == "box" and reports[True]["self_check_after_consistency"]
    assert not reports[False]["self_check_after_consistency"]
    # The part of the error the acquired slices fix no longer counts, so the estimate differs.
    assert reports[True]["estimated_gain_db"] != reports[False]["estimated_gain_db"]


def test_a_model_adapted_for_a_profile_is_projected_onto_it_whatever_the_estimate():
    truth = truth_volume()
    thick = thick_slices(truth, 2, 4, "box")
    plan = plan_run(thick, target_spacing=truth.spacing, model="cubic")
    # Cubic interpolation passes through the slice centres: no profile fits it clearly.
    output = preinterpolate(thick, plan.target).array
    report: dict = {}
    assert _consistent_with_input(thick, output, plan, None, None, report) is output
    assert report["slice_profile"] is None
    made = _consistent_with_input(thick, output, plan, None, None, report, tuned_for="box")
    assert report["slice_profile"] == "box"
    acquired = ProfileOperator.between("box", thick, made.shape, plan.target.spacing, plan.upsampled).acquire(made)
    np.testing.assert_allclose(acquired, thick.array, atol=1e-3 * float(np.ptp(thick.array)))


def test_an_output_resampled_along_a_kept_axis_is_neither_projected_nor_checked_as_if_it_would_be(monkeypatch):
    truth = truth_volume()
    thick = thick_slices(truth, 2, 4, "box")
    report: dict = {}
    # Even when the central block's profile is clear.
    monkeypatch.setattr(pipeline, "_profile_of_the_scan", lambda *args: ("box", True, False))
    # Coarser in-plane, finer through the slices: the in-plane axes are resampled, not upsampled.
    superresolve(thick, model="vdsr-mixed", target_spacing=(1.5, 1.5, 1.0), threads=2, adapt=0, report=report)
    assert report["self_check"] == "done" and not report["self_check_after_consistency"]
    assert "slice_profile" not in report


def test_a_cubic_run_is_plain_cubic_interpolation():
    volume = smooth_volume()
    report: dict = {}
    superresolve(volume, model="cubic", report=report)
    assert "slice_profile" not in report


@pytest.mark.parametrize("flag", [[], ["--no-consistency"]], ids=["default", "off"])
def test_the_command_line_reports_the_profile_unless_told_not_to(tmp_path, cli, thick_file, untrained_models_dir, flag):
    code, out, err = cli("run", thick_file, tmp_path / "out.nii.gz", "--model", "tiny", "--models-dir",
                         untrained_models_dir, "--no-self-check", "--progress-json", *flag)
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])["report"]
    assert ("slice_profile_misfits" in report) == (not flag)


@pytest.mark.parametrize("profile", ["box", "gaussian"])
def test_the_scans_own_pairs_are_coarsened_with_the_profile_of_its_slices(profile):
    truth = truth_volume()
    report: dict = {}
    superresolve(thick_slices(truth, 2, 4, profile), target_spacing=truth.spacing, threads=2, adapt=0,
                 consistency=False, report=report)
    assert report["pairs_profile"] == profile
    assert report["self_check"] == "done"


def test_pairs_made_with_another_profile_differ():
    from MRISuperResLib.adapt import scan_pairs

    volume = truth_volume()
    scan = (volume.array / volume.array.max()).astype(np.float32)
    low = thick_slices(volume, 2, 4)
    pairs = {profile: scan_pairs(scan, volume, (2,), 4.0, None, profile=profile)[0] for profile in ("box", "gaussian")}
    np.testing.assert_array_equal(pairs["box"].truth, pairs["gaussian"].truth)  # the same patches, seeded
    assert not np.allclose(pairs["box"].lr, pairs["gaussian"].lr)
    assert low.spacing[2] == 4.0


def test_a_close_call_between_box_and_gaussian_projects_nothing_but_names_the_nearer_for_the_pairs():
    from MRISuperResLib.consistency import ProfileEstimate

    close = ProfileEstimate(None, {"box": 0.038, "gaussian": 0.036, "point": 0.108, "sinc": 0.081})
    assert close.closest_projected == "gaussian"
    assert ProfileEstimate(None, {"box": 0.05, "gaussian": 0.09, "sinc": 0.03}).closest_projected == "box"
