"""Simulated low resolution, with geometry updated by the slab convention of `geometry`.

- `thick_slices`: k neighbouring slices become one slab (box profile: their mean; Gaussian profile: a
  Gaussian of FWHM k slices sampled at the slab centre). Spacing ×k, the origin moves by (k − 1)/2 voxels,
  an incomplete last slab is dropped.
- `kspace_truncate`: keep the central 1/k of k-space along the given axes (as a scanner acquiring fewer
  phase-encoding lines does); the grid gets k times fewer, k times larger voxels over the same extent.
- `bicubic_downsample`: the super-resolution literature's "bicubic" degradation (MATLAB `imresize` with
  antialiasing): a Catmull-Rom kernel stretched by k, sampled at slab centres; same grid as `kspace_truncate`.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d

from .errors import MRISuperResError
from .geometry import resampled_grid
from .resample import catmull_rom
from .volume import Volume

PROFILES = ("box", "gaussian")
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


def thick_slices(volume: Volume, axis: int, factor: int, profile: str = "box") -> Volume:
    """Merge every `factor` slices along `axis` (0 = i, 1 = j, 2 = k) into one thick slice."""
    if profile not in PROFILES:
        raise MRISuperResError(f"Unknown slice profile '{profile}'; use one of {', '.join(PROFILES)}.")
    if int(factor) != factor or factor < 2:
        raise MRISuperResError(f"The thick-slice factor must be an integer of at least 2, not {factor}.")
    factor = int(factor)
    axis_np = 2 - axis
    n_slabs = volume.array.shape[axis_np] // factor
    if n_slabs < 2:
        raise MRISuperResError(
            f"Axis {axis} has {volume.array.shape[axis_np]} voxels, too few for {factor}× thick slices; "
            "use a smaller factor.")
    array = volume.array.astype(np.float32)
    if profile == "box":
        blocks = np.take(array, np.arange(n_slabs * factor), axis=axis_np)
        shape = array.shape[:axis_np] + (n_slabs, factor) + array.shape[axis_np + 1:]
        thick = blocks.reshape(shape).mean(axis=axis_np + 1)
    else:
        smooth = gaussian_filter1d(array, factor / FWHM_PER_SIGMA, axis=axis_np, mode="nearest")
        centres = np.arange(n_slabs) * factor + (factor - 1) / 2.0
        lower = np.floor(centres).astype(int)
        upper = np.ceil(centres).astype(int)
        thick = 0.5 * (np.take(smooth, lower, axis=axis_np) + np.take(smooth, upper, axis=axis_np))
    spacing = list(volume.spacing)
    spacing[axis] *= factor
    size = list(volume.grid.size)
    size[axis] = n_slabs
    return Volume.on_grid(thick.astype(np.float32), resampled_grid(volume.grid, tuple(spacing), tuple(size)))


def kspace_truncate(volume: Volume, axes: tuple[int, ...], factor: float) -> Volume:
    """Keep the central 1/`factor` of k-space along `axes`; return the coarser grid over the same extent."""
    if factor <= 1:
        raise MRISuperResError(f"The k-space truncation factor must be above 1, not {factor}.")
    array = volume.array.astype(np.float64)
    spacing = list(volume.spacing)
    size = list(volume.grid.size)
    for axis in axes:
        axis_np = 2 - axis
        n = array.shape[axis_np]
        kept = max(2, int(round(n / factor)))
        # Shift by half the new voxel minus half the old one, so that new samples sit at slab centres.
        shift = (n / kept - 1.0) / 2.0
        phase = np.exp(2j * np.pi * np.fft.fftfreq(n) * shift).reshape([-1 if a == axis_np else 1 for a in range(3)])
        spectrum = np.fft.fftshift(np.fft.fft(array, axis=axis_np) * phase, axes=axis_np)
        start = n // 2 - kept // 2
        spectrum = np.take(spectrum, np.arange(start, start + kept), axis=axis_np)
        array = np.fft.ifft(np.fft.ifftshift(spectrum, axes=axis_np), axis=axis_np).real * (kept / n)
        spacing[axis] *= n / kept
        size[axis] = kept
    return Volume.on_grid(array.astype(np.float32), resampled_grid(volume.grid, tuple(spacing), tuple(size)))


def _bicubic_matrix(n_in: int, factor: int) -> np.ndarray:
    """(n_in // factor, n_in) weights: output n averages the inputs around its slab centre with the kernel
    stretched by `factor`, renormalised where it runs off the ends."""
    centres = np.arange(n_in // factor) * factor + (factor - 1) / 2.0
    weights = catmull_rom((np.arange(n_in)[None, :] - centres[:, None]) / factor)
    return weights / weights.sum(axis=1, keepdims=True)


def bicubic_downsample(volume: Volume, axes: tuple[int, ...], factor: int) -> Volume:
    """Downsample by the integer `factor` along `axes` (0 = i, 1 = j, 2 = k) with an antialiased bicubic kernel."""
    if int(factor) != factor or factor < 2:
        raise MRISuperResError(f"The bicubic downsampling factor must be an integer of at least 2, not {factor}.")
    factor = int(factor)
    array = volume.array.astype(np.float64)
    spacing = list(volume.spacing)
    size = list(volume.grid.size)
    for axis in axes:
        axis_np = 2 - axis
        if array.shape[axis_np] // factor < 2:
            raise MRISuperResError(
                f"Axis {axis} has {array.shape[axis_np]} voxels, too few for {factor}× downsampling; use a smaller factor.")
        matrix = _bicubic_matrix(array.shape[axis_np], factor)
        array = np.moveaxis(np.tensordot(matrix, np.moveaxis(array, axis_np, 0), axes=1), 0, axis_np)
        spacing[axis] *= factor
        size[axis] = array.shape[axis_np]
    return Volume.on_grid(array.astype(np.float32), resampled_grid(volume.grid, tuple(spacing), tuple(size)))
