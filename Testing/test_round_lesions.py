"""Small round lesions restored within their slabs (`round_lesions`): a ball that two thick slabs show gets its
contrast back and each slab keeps its mean; what is no ball, or could lie anywhere in one slab, is left alone."""

from __future__ import annotations

import numpy as np
import pytest

from MRISuperResLib.consistency import disjoint_slabs, profile_matrix
from MRISuperResLib.round_lesions import restore

SHAPE = (64, 48, 48)  # (k, j, i), 1 mm voxels; k is made thick
FACTOR = 4
SURROUND, LESION, NOISE = 400.0, 850.0, 8.0


def tissue_with(*shapes) -> np.ndarray:
    """Noisy flat tissue with the given occupancy masks painted at lesion intensity."""
    rng = np.random.default_rng(0)
    shape = shapes[0].shape if shapes else SHAPE
    image = np.full(shape, SURROUND) + NOISE * rng.standard_normal(shape)
    for shape in shapes:
        image = image * (1 - shape) + LESION * shape
    return image.astype(np.float32)


def ball(centre, radius, shape=SHAPE, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Each voxel's share of the ball (centre in voxels, radius in mm; 4 samples per voxel and axis): partial
    volume, as a scan has it."""
    offsets = (np.arange(4) + 0.5) / 4 - 0.5
    share = np.zeros(shape, np.float32)
    grid = np.indices(shape).astype(np.float32)
    for dk in offsets:
        for dj in offsets:
            for di in offsets:
                inside = (((grid[0] + dk - centre[0]) * spacing[0]) ** 2 + ((grid[1] + dj - centre[1]) * spacing[1]) ** 2
                          + ((grid[2] + di - centre[2]) * spacing[2]) ** 2) <= radius ** 2
                share += inside / offsets.size ** 3
    return share


def acquire_and_spread(truth: np.ndarray):
    """The thick slabs, the output a network that spreads each slab evenly would give, and the slab map."""
    slabs = truth.reshape(SHAPE[0] // FACTOR, FACTOR, *SHAPE[1:]).mean(axis=1)
    slab_of = disjoint_slabs(profile_matrix("box", len(slabs), SHAPE[0], float(FACTOR), 1.0))
    return slabs, np.repeat(slabs, FACTOR, axis=0), slab_of


def contrast(image: np.ndarray, share: np.ndarray) -> float:
    """The mean over the lesion's voxels (those at least half inside it), above the surround."""
    return float(image[share >= 0.5].mean() - SURROUND)


@pytest.mark.parametrize("centre_k", [31.5, 32.0])  # halves in two slabs; a quarter and a half
def test_a_3_mm_lesion_across_two_slabs_gets_its_contrast_back(centre_k):
    lesion = ball((centre_k, 24, 24), 1.5)
    truth = tissue_with(lesion)
    slabs, spread, slab_of = acquire_and_spread(truth)
    restored, balls = restore(spread, slabs, slab_of, 0, (1.0, 1.0, 1.0))
    assert len(balls) == 1, balls
    assert abs(balls[0].z_mm - centre_k) < 0.6 and 1.2 < balls[0].radius_mm < 2.2, balls
    assert contrast(spread, lesion) < 0.7 * contrast(truth, lesion)  # what the slabs left of it
    assert abs(contrast(restored, lesion) / contrast(truth, lesion) - 1) < 0.1
    # Every slab keeps its mean: the output still acquires the input.
    again = restored.reshape(SHAPE[0] // FACTOR, FACTOR, *SHAPE[1:]).mean(axis=1)
    np.testing.assert_allclose(again, slabs, atol=1e-2)


def test_what_is_no_small_ball_is_left_alone():
    k, j, i = np.indices(SHAPE)
    vessel = (((j - 12) ** 2 + (i - 12) ** 2) <= 1.5 ** 2).astype(np.float32)  # along the thick axis
    in_one_slab = ball((33.5, 36, 36), 1.2)  # wholly inside slab 8: it could lie anywhere in it
    in_plane_tube = ((np.abs(k - 30.5) <= 1.5) & (np.abs(j - 36) <= 1.5) & (i > 6) & (i < 20)).astype(np.float32)
    truth = tissue_with(vessel, in_one_slab, in_plane_tube)
    slabs, spread, slab_of = acquire_and_spread(truth)
    restored, balls = restore(spread, slabs, slab_of, 0, (1.0, 1.0, 1.0))
    assert balls == []
    np.testing.assert_array_equal(restored, spread)


def test_pixels_too_coarse_to_show_a_small_lesion_round_are_left_alone():
    truth = tissue_with(ball((31.5, 24, 24), 1.5))
    slabs, spread, slab_of = acquire_and_spread(truth)
    # 3 mm pixels in-plane: a lesion of 3.6 mm or more (the smallest searched) shows in full in one 4 mm slab.
    restored, balls = restore(spread, slabs, slab_of, 0, (1.0, 3.0, 3.0))
    assert balls == [] and restored is spread


@pytest.mark.parametrize("lesions", [True, False], ids=["default", "off"])
def test_the_run_restores_after_projecting_onto_box_slabs_unless_told_not_to(lesions):
    from MRISuperResLib import Volume
    from MRISuperResLib.pipeline import _consistent_with_input, plan_run

    share = ball((31.5, 24, 24), 1.5)
    truth = Volume(tissue_with(share), (1.0, 1.0, 1.0))
    thick = Volume(acquire_and_spread(truth.array)[0], (1.0, 1.0, float(FACTOR)))
    plan = plan_run(thick, target_spacing=truth.spacing, model="cubic")
    spread = np.repeat(thick.array, FACTOR, axis=0)
    report: dict = {}
    made = _consistent_with_input(thick, spread, plan, None, None, report, tuned_for="box", lesions=lesions)
    assert report.get("round_lesions") == (1 if lesions else None)
    restored = abs(contrast(made, share) / contrast(truth.array, share) - 1) < 0.1
    assert restored == lesions


def test_the_switch_reaches_the_command_line():
    from MRISuperResLib.cli import build_parser
    from MRISuperResLib.job import RunOptions

    assert RunOptions(round_lesions=False).arguments()[-1] == "--no-round-lesions"
    assert "--no-round-lesions" not in RunOptions().arguments()
    for command in ("run", "batch"):
        assert build_parser().parse_args([command, "in.nii.gz", "out", "--no-round-lesions"]).no_round_lesions


def test_any_slab_axis_and_oblong_pixels():
    """Slabs along the last numpy axis and pixels of 0.8 x 1.1 mm, the lesion across two 4 mm slabs."""
    shape, spacing = (40, 36, 64), (0.8, 1.1, 1.0)
    share = ball((20, 18, 31.5), 1.6, shape, spacing)
    truth = tissue_with(share)
    slabs = truth.reshape(40, 36, 16, FACTOR).mean(axis=3)
    slab_of = disjoint_slabs(profile_matrix("box", 16, 64, float(FACTOR), 1.0))
    restored, balls = restore(np.repeat(slabs, FACTOR, axis=2), slabs, slab_of, 2, spacing)
    assert len(balls) == 1 and abs(balls[0].z_mm - 31.5) < 0.6, balls
    assert abs(balls[0].a_px - 20) < 0.5 and abs(balls[0].b_px - 18) < 0.5, balls
    assert abs(contrast(restored, share) / contrast(truth, share) - 1) < 0.1
    np.testing.assert_allclose(restored.reshape(40, 36, 16, FACTOR).mean(axis=3), slabs, atol=1e-2)


def test_a_slab_that_holds_no_output_voxel_is_no_trouble():
    share = ball((31.5, 24, 24), 1.5)
    truth = tissue_with(share)
    slabs, spread, slab_of = acquire_and_spread(truth)
    slab_of = np.where(slab_of == 2, -1, slab_of)  # slab 2 holds nothing on this output grid
    restored, balls = restore(spread, slabs, slab_of, 0, (1.0, 1.0, 1.0))
    assert len(balls) == 1 and abs(contrast(restored, share) / contrast(truth, share) - 1) < 0.1


def test_one_lesion_is_one_ball_in_fine_pixels_and_thick_slabs():
    """0.45 mm pixels and 5 mm slabs: the blob responds in many pixels and radii, and is fitted once."""
    shape, spacing, factor = (40, 64, 64), (0.5, 0.45, 0.45), 10
    share = ball((20, 32, 32), 2.0, shape, spacing)
    truth = tissue_with(share)
    slabs = truth.reshape(4, factor, 64, 64).mean(axis=1)
    slab_of = disjoint_slabs(profile_matrix("box", 4, 40, float(factor), 1.0))
    restored, balls = restore(np.repeat(slabs, factor, axis=0), slabs, slab_of, 0, spacing)
    assert len(balls) == 1, balls
    assert abs(contrast(restored, share) / contrast(truth, share) - 1) < 0.1
