"""The slab convention: target grids, pre-interpolation and thick-slice simulation agree."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import FLIPPED, OBLIQUE
from MRISuperResLib import Volume
from MRISuperResLib.degrade import bicubic_downsample, kspace_truncate, thick_slices
from MRISuperResLib.geometry import overlap_fraction, resampled_grid, source_positions, voxel_extent_along
from MRISuperResLib.resample import _catmull_rom_weights, catmull_rom, preinterpolate, resample_to_grid


def ramp_volume(direction, spacing=(0.9, 0.8, 4.0), shape_kji=(10, 12, 14), slopes=(3.0, -2.0, 0.5)):
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape_kji), indexing="ij")
    array = slopes[0] * k + slopes[1] * j + slopes[2] * i + 7.0
    return Volume(array.astype(np.float32), spacing, (4.0, -3.0, 11.0), direction)


def test_output_grid_follows_the_slab_convention():
    volume = ramp_volume(OBLIQUE)
    grid = resampled_grid(volume.grid, (0.8, 0.8, 0.8))
    assert grid.size == (round(14 * 0.9 / 0.8), 12, 50)
    # First output voxel centre = first input voxel edge + half an output voxel, along each axis.
    first_edge = volume.grid.index_to_physical(np.array([-0.5, -0.5, -0.5]))
    expected = first_edge + OBLIQUE @ (np.array([0.8, 0.8, 0.8]) / 2)
    np.testing.assert_allclose(grid.origin, expected, atol=1e-9)
    np.testing.assert_allclose(grid.direction, OBLIQUE, atol=0)
    # The extent is the input's (up to rounding of the voxel count).
    np.testing.assert_allclose(grid.corners()[0], volume.grid.corners()[0], atol=1e-9)
    np.testing.assert_allclose(grid.corners()[-1], volume.grid.corners()[-1], atol=0.8 / 2 + 1e-9)


def test_each_output_voxel_lies_inside_the_slab_it_came_from():
    positions = source_positions(n_out=16, spacing_in=4.0, spacing_out=1.0)
    assert np.all(np.floor(positions + 0.5) == np.repeat(np.arange(4), 4))


@pytest.mark.parametrize("direction", [np.eye(3), OBLIQUE, FLIPPED], ids=["identity", "oblique", "flipped"])
@pytest.mark.parametrize("target", [(0.9, 0.8, 1.0), (0.45, 0.8, 4.0 / 3), (0.3, 0.4, 0.7)])
def test_constant_stays_constant_and_ramp_stays_ramp(direction, target):
    volume = ramp_volume(direction)
    grid = resampled_grid(volume.grid, target)
    constant = preinterpolate(volume.with_array(np.full(volume.array.shape, 5.5, np.float32)), grid)
    np.testing.assert_allclose(constant.array, 5.5, atol=1e-5)
    ramp = preinterpolate(volume, grid)
    # The ramp is linear in physical space, so it is linear in the output's continuous input index.
    index = np.stack(np.meshgrid(*(np.arange(n) for n in grid.size), indexing="ij"), axis=-1).astype(float)
    source_index = volume.grid.physical_to_index(grid.index_to_physical(index))
    expected = 0.5 * source_index[..., 0] - 2.0 * source_index[..., 1] + 3.0 * source_index[..., 2] + 7.0
    np.testing.assert_allclose(ramp.array, np.transpose(expected, (2, 1, 0)), atol=1e-3)


@pytest.mark.parametrize("factor", [2, 3, 4, 5])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_thick_slices_then_preinterpolation_returns_the_truth_grid(axis, factor):
    truth = ramp_volume(OBLIQUE, spacing=(1.0, 1.0, 1.0), shape_kji=(20, 21, 22))
    thick = thick_slices(truth, axis, factor, "box")
    assert thick.spacing[axis] == factor
    grid = resampled_grid(thick.grid, truth.spacing)
    assert grid.size[axis] == (truth.grid.size[axis] // factor) * factor
    np.testing.assert_allclose(grid.origin, truth.origin, atol=1e-9)
    restored = preinterpolate(thick, grid)
    crop = tuple(slice(0, n) for n in restored.array.shape)
    np.testing.assert_allclose(restored.array, truth.array[crop], atol=1e-3)  # box of a ramp is its centre value


def test_gaussian_profile_blurs_more_than_box():
    rng = np.random.default_rng(1)
    truth = Volume(rng.normal(size=(24, 16, 16)).astype(np.float32), (1.0, 1.0, 1.0))
    box, gaussian = thick_slices(truth, 2, 4, "box"), thick_slices(truth, 2, 4, "gaussian")
    assert box.grid.same_as(gaussian.grid)
    assert 0 < gaussian.array.std() < truth.array.std()


def test_kspace_truncation_keeps_extent_and_low_frequencies():
    k, j, i = np.meshgrid(np.arange(8), np.arange(32), np.arange(32), indexing="ij")
    smooth = np.cos(2 * np.pi * i / 32) + 2.0
    volume = Volume(smooth.astype(np.float32), (0.5, 0.5, 3.0), direction=OBLIQUE)
    low = kspace_truncate(volume, (0, 1), 2)
    assert low.grid.size == (16, 16, 8)
    assert low.spacing == (1.0, 1.0, 3.0)
    np.testing.assert_allclose(low.grid.corners(), volume.grid.corners(), atol=1e-9)
    np.testing.assert_allclose(low.array, (np.cos(2 * np.pi * (2 * i[:, :16, :16] + 0.5) / 32) + 2.0), atol=1e-4)


def test_the_cubic_kernel_and_its_interpolation_taps_agree():
    t = np.linspace(0, 0.999, 50)
    taps = np.stack([catmull_rom(t + 1), catmull_rom(t), catmull_rom(1 - t), catmull_rom(2 - t)])
    np.testing.assert_allclose(_catmull_rom_weights(t), taps, atol=1e-6)


@pytest.mark.parametrize("factor", [2, 4])
def test_bicubic_downsampling_lands_on_the_kspace_grid_and_keeps_ramps(factor):
    truth = ramp_volume(OBLIQUE, spacing=(1.0, 1.0, 1.0), shape_kji=(6, 48, 48))
    low = bicubic_downsample(truth, (0, 1), factor)
    assert low.grid.same_as(kspace_truncate(truth, (0, 1), factor).grid)
    # Inside, a symmetric kernel of a ramp returns the ramp at the slab centre; the kernel (±2 coarse voxels)
    # and the cubic pre-interpolation (±2 more) carry the renormalised edges 4 coarse voxels in.
    restored = preinterpolate(low, resampled_grid(low.grid, truth.spacing))
    inner = (slice(None), slice(4 * factor, -4 * factor), slice(4 * factor, -4 * factor))
    np.testing.assert_allclose(restored.array[inner], truth.array[inner], atol=1e-3)
    noise = Volume(np.random.default_rng(0).normal(size=(4, 64, 64)).astype(np.float32), (1.0, 1.0, 1.0))
    assert bicubic_downsample(noise, (0, 1), factor).array.std() < 0.6  # antialiased: white noise is averaged down


def test_reference_resampling_masks_what_it_does_not_cover():
    volume = ramp_volume(OBLIQUE, spacing=(1.0, 1.0, 1.0), shape_kji=(10, 10, 10))
    half = Volume(volume.array[:5], volume.spacing, volume.origin, volume.direction)
    values, mask = resample_to_grid(half, volume.grid)
    assert mask.array[:5].all() and not mask.array[5:].any()
    np.testing.assert_allclose(values.array[1:4], volume.array[1:4], atol=1e-3)
    assert overlap_fraction(volume.grid, half.grid) == pytest.approx(0.5, abs=0.05)


def test_a_reference_already_on_the_grid_comes_back_as_resampling_would_give_it():
    import SimpleITK as sitk

    volume = ramp_volume(OBLIQUE, spacing=(1.0, 1.0, 1.0), shape_kji=(10, 11, 12))
    values, mask = resample_to_grid(volume, volume.grid)               # the shortcut
    resampled, resampled_mask = resample_to_grid(volume, volume.grid, sitk.Transform())   # the full path
    np.testing.assert_allclose(values.array, resampled.array, atol=1e-4)
    assert np.array_equal(mask.array, resampled_mask.array) and values.grid.same_as(volume.grid)
    assert values.array is not volume.array                              # a copy: the input stays untouched


def test_slab_average_from_a_grid_finer_on_one_axis_and_coarser_on_another():
    """A target may be finer than a short input along one axis and coarser along another (found by the fuzz
    test). Slab-averaging it back onto the input's grid gives exactly that grid; along the axis where the
    target is finer, a ramp comes back exactly away from the edges (cubic interpolation keeps it, and so does
    the box average of the samples centred on each voxel; at the edges the box repeats the last sample), and
    along the one where it is coarser, it stays increasing."""
    from MRISuperResLib.resample import slab_average

    i_ramp = np.broadcast_to(np.arange(4, dtype=np.float32) * 3.0, (6, 5, 4)).copy()
    k_ramp = np.broadcast_to(np.arange(6, dtype=np.float32)[:, None, None], (6, 5, 4)).copy()
    for ramp in (i_ramp, k_ramp):
        source = Volume(ramp, (1.0, 1.0, 2.0))
        target = resampled_grid(source.grid, (0.5, 1.0, 3.0))  # i finer (width-2 slabs back), k coarser
        back = slab_average(preinterpolate(source, target), source.grid)
        assert back.grid.same_as(source.grid)
        if ramp is i_ramp:
            assert np.allclose(back.array[..., 1:-1], i_ramp[..., 1:-1], atol=1e-4)
        else:
            assert (np.diff(back.array, axis=0) > 0.5).all()
            assert np.allclose(back.array, back.array[:, :1, :1], atol=1e-5)


def test_a_single_sample_along_an_axis_is_constant_along_it_and_has_no_edges():
    from MRISuperResLib.confidence import _edge_strength
    from MRISuperResLib.resample import cubic_resample_axis

    one = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    spread = cubic_resample_axis(one, 0, np.array([-0.4, 0.0, 0.4]))
    assert spread.shape == (3, 3, 4) and np.array_equal(spread, np.repeat(one, 3, axis=0))
    edges = _edge_strength(one)
    assert edges.shape == one.shape and np.isfinite(edges).all()
    assert np.allclose(edges, np.hypot(4.0, 1.0))  # the gradients along j (4 per row) and i (1 per column)


def test_a_voxels_extent_along_a_direction_is_its_spacing_there_or_a_blend_when_oblique():
    grid = Volume(np.zeros((4, 4, 4), np.float32), (1.0, 2.0, 5.0)).grid
    assert [voxel_extent_along(grid, axis) for axis in np.eye(3)] == pytest.approx([1.0, 2.0, 5.0])
    assert voxel_extent_along(grid, (0.0, 0.0, -3.0)) == pytest.approx(5.0)  # any length, either sense
    turned = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])  # k runs along x
    rotated = Volume(np.zeros((4, 4, 4), np.float32), (1.0, 2.0, 5.0), direction=turned).grid
    assert voxel_extent_along(rotated, (1.0, 0.0, 0.0)) == pytest.approx(5.0)
    assert voxel_extent_along(rotated, (0.0, 0.0, 1.0)) == pytest.approx(1.0)
    diagonal = np.array([1.0, 0.0, 1.0])
    assert voxel_extent_along(grid, diagonal) == pytest.approx(np.sqrt((1.0 + 25.0) / 2))
