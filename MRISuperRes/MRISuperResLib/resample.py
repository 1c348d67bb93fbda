"""Resampling volumes onto a target grid: pre-interpolation of the input and the reference.

The input's target grid is parallel to the input grid (same direction, same extent), so its
pre-interpolation is separable: one 1D cubic (Catmull–Rom) pass per resampled axis at the positions the
slab convention of `geometry` gives. The ends are extended linearly rather than clamped, so a constant
stays constant and a linear ramp stays exactly a ramp out to the outer half-slabs, which SimpleITK's
boundary handling (clamping) would flatten. The reference is on an arbitrary grid, so it goes through
SimpleITK's physical-space resampler.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter1d, uniform_filter1d

from .geometry import SPACING_TOLERANCE, source_positions
from .volume import Grid, Volume


def catmull_rom(x: np.ndarray) -> np.ndarray:
    """The cubic convolution kernel with a = -0.5 (support ±2), for kernels stretched or placed freely."""
    x = np.abs(x)
    return np.where(x <= 1, 1.5 * x ** 3 - 2.5 * x ** 2 + 1,
                    np.where(x < 2, -0.5 * x ** 3 + 2.5 * x ** 2 - 4 * x + 2, 0.0))


def _catmull_rom_weights(t: np.ndarray) -> np.ndarray:
    """The same kernel's 4 taps at offsets t + 1, t, 1 − t, 2 − t, as polynomials: the interpolation hot path."""
    t2, t3 = t * t, t * t * t
    return np.stack([-0.5 * t3 + t2 - 0.5 * t,
                     1.5 * t3 - 2.5 * t2 + 1.0,
                     -1.5 * t3 + 2.0 * t2 + 0.5 * t,
                     0.5 * t3 - 0.5 * t2]).astype(np.float32)


def _pad_linear(array: np.ndarray, axis: int, width: int = 2) -> np.ndarray:
    """Extend `array` by `width` samples at both ends of `axis`, continuing its first and last slopes."""
    first, second = np.take(array, [0], axis), np.take(array, [1], axis)
    last, before_last = np.take(array, [-1], axis), np.take(array, [-2], axis)
    head = [first + (first - second) * step for step in range(width, 0, -1)]
    tail = [last + (last - before_last) * step for step in range(1, width + 1)]
    return np.concatenate(head + [array] + tail, axis=axis)


def cubic_resample_axis(array: np.ndarray, axis: int, positions: np.ndarray) -> np.ndarray:
    """Sample `array` along numpy `axis` at continuous `positions` (input index units), cubic interpolation."""
    if array.shape[axis] == 1:  # one sample has no slope to continue: it is constant along the axis
        return np.repeat(array.astype(np.float32), len(positions), axis=axis)
    padded = _pad_linear(array.astype(np.float32, copy=False), axis)
    base = np.floor(positions).astype(np.int64)
    weights = _catmull_rom_weights((positions - base).astype(np.float32))
    shape = [1] * array.ndim
    shape[axis] = len(positions)
    result = np.zeros(array.shape[:axis] + (len(positions),) + array.shape[axis + 1:], dtype=np.float32)
    for tap in range(4):
        # base − 1 + tap in input units is base + 1 + tap in the padded array (2 samples of padding).
        contribution = np.take(padded, base + 1 + tap, axis=axis)
        contribution *= weights[tap].reshape(shape)
        result += contribution
    return result


def preinterpolate(volume: Volume, grid: Grid) -> Volume:
    """Resample `volume` onto a grid parallel to it (as `geometry.resampled_grid` makes) by separable cubic."""
    array = volume.array.astype(np.float32)
    for axis_ijk in range(3):
        n_out, spacing_in, spacing_out = grid.size[axis_ijk], volume.spacing[axis_ijk], grid.spacing[axis_ijk]
        if n_out == array.shape[2 - axis_ijk] and spacing_in == spacing_out:
            continue
        axis_np = 2 - axis_ijk
        if spacing_out > spacing_in:
            # Going coarser: low-pass first so the cubic samples do not alias.
            sigma = 0.5 * np.sqrt((spacing_out / spacing_in) ** 2 - 1.0)
            array = gaussian_filter1d(array, sigma, axis=axis_np, mode="nearest")
        array = cubic_resample_axis(array, axis_np, source_positions(n_out, spacing_in, spacing_out))
    return Volume.on_grid(array, grid)


def slab_average(volume: Volume, grid: Grid) -> Volume:
    """`volume` on a parallel `grid` as thick slices would see it: along each axis where `grid` is at least 1.5×
    coarser, the mean over the slab of each output voxel (box profile, the slab convention of `geometry`), then
    sampled at the slab centres; along the others, only resampled (a target may be finer than the input along
    one axis and coarser along another)."""
    array = volume.array.astype(np.float32)
    for axis_ijk in range(3):
        n_out, spacing_in, spacing_out = grid.size[axis_ijk], volume.spacing[axis_ijk], grid.spacing[axis_ijk]
        axis_np = 2 - axis_ijk
        if abs(spacing_out / spacing_in - 1) <= SPACING_TOLERANCE and array.shape[axis_np] == n_out:
            continue
        width = max(1, int(round(spacing_out / spacing_in)))
        if width > 1 and width % 2:
            array = uniform_filter1d(array, width, axis=axis_np, mode="nearest")
        elif width > 1:  # an even box is centred between voxels: average its two placements to centre it on one
            array = 0.5 * (uniform_filter1d(array, width, axis=axis_np, mode="nearest")
                           + uniform_filter1d(array, width, axis=axis_np, mode="nearest", origin=-1))
        array = cubic_resample_axis(array, axis_np, source_positions(n_out, spacing_in, spacing_out))
    return Volume.on_grid(array, grid)


def _reference_image(grid: Grid) -> sitk.Image:
    image = sitk.Image(list(grid.size), sitk.sitkUInt8)
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(tuple(grid.direction.ravel()))
    return image


def resample_to_grid(volume: Volume, grid: Grid, transform: sitk.Transform | None = None,
                     interpolator: int = sitk.sitkBSpline) -> tuple[Volume, Volume]:
    """Resample `volume` onto `grid` in physical space; also return the mask of voxels it really covers.

    `transform` maps points of `grid`'s space into `volume`'s (as SimpleITK registration returns it).
    Outside `volume`'s extent the values are 0 and the mask (uint8) is 0.
    """
    if transform is None and volume.grid.same_as(grid):
        # Already on the grid (a reference resampled there beforehand): interpolating at the voxel centres
        # gives the values back, so skip two resamplings of the whole volume.
        return (Volume.on_grid(volume.array.astype(np.float32), grid),
                Volume.on_grid(np.ones(grid.shape_kji, dtype=np.uint8), grid))
    transform = transform or sitk.Transform()
    target = _reference_image(grid)
    image = sitk.Cast(volume.to_sitk(), sitk.sitkFloat32)
    values = sitk.Resample(image, target, transform, interpolator, 0.0, sitk.sitkFloat32)
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    mask = sitk.Resample(ones, target, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return (Volume.on_grid(sitk.GetArrayFromImage(values), grid),
            Volume.on_grid(sitk.GetArrayFromImage(mask), grid))
