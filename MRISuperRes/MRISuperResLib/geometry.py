"""Every geometric rule of the product in one place: the slab convention and the grids it implies.

Slab convention: voxel n along an axis is the centre of a slab (box slice profile) that spans
[n − ½, n + ½] in index units. A grid resampled to spacing `t` along an axis of `n` voxels at spacing `s`
keeps the same physical extent: it has `round(n·s/t)` voxels, its first voxel centre lies at the first
voxel's edge + t/2, and its direction is unchanged. Thick-slice simulation (`degrade`) and
pre-interpolation (`resample`) both follow this rule, so simulation, inference and geometry agree.
"""

from __future__ import annotations

import numpy as np

from .volume import Grid

# Spacings closer than this (relative) count as equal: header round-off must not trigger upsampling.
SPACING_TOLERANCE = 1e-4


def resampled_size(size: int, spacing: float, new_spacing: float) -> int:
    """Voxels needed to cover `size` voxels of `spacing` at `new_spacing` (never fewer than one)."""
    return max(1, int(round(size * spacing / new_spacing)))


def resampled_grid(grid: Grid, new_spacing: tuple[float, float, float],
                   new_size: tuple[int, int, int] | None = None) -> Grid:
    """The grid covering `grid`'s extent at `new_spacing`, by the slab convention.

    `new_size` overrides the voxel count (thick-slice simulation drops an incomplete last slab).
    """
    new_spacing = tuple(float(s) for s in new_spacing)
    if new_size is None:
        new_size = tuple(resampled_size(n, s, t) for n, s, t in zip(grid.size, grid.spacing, new_spacing))
    shift_index_units = (np.asarray(new_spacing) - np.asarray(grid.spacing)) / 2.0
    origin = np.asarray(grid.origin) + grid.direction @ shift_index_units
    return Grid(new_size, new_spacing, tuple(origin), grid.direction)


def source_positions(n_out: int, spacing_in: float, spacing_out: float) -> np.ndarray:
    """Continuous input indices of the `n_out` output voxel centres along one axis (slab convention)."""
    return (np.arange(n_out) + 0.5) * (spacing_out / spacing_in) - 0.5


def scale_factors(source: Grid, target: Grid) -> tuple[float, float, float]:
    """How many times finer `target` is than `source` along each axis (i, j, k)."""
    return tuple(s / t for s, t in zip(source.spacing, target.spacing))


def upsampled_axes(source: Grid, target: Grid) -> tuple[int, ...]:
    """Axes (0 = i, 1 = j, 2 = k) along which `target` is finer than `source`."""
    return tuple(a for a, f in enumerate(scale_factors(source, target)) if f > 1 + SPACING_TOLERANCE)


def voxel_extent_along(grid: Grid, direction: np.ndarray) -> float:
    """How far one of `grid`'s voxels reaches along the physical `direction` (mm): its spacing there when
    one of its axes runs that way, a blend of its spacings when its axes are oblique to it."""
    unit = np.asarray(direction, dtype=np.float64) / np.linalg.norm(direction)
    return float(np.sqrt(np.sum((grid.direction.T @ unit) ** 2 * np.asarray(grid.spacing) ** 2)))


def overlap_fraction(grid: Grid, other: Grid) -> float:
    """Fraction of `grid`'s voxel centres that fall inside `other`'s extent (sampled on a coarse lattice)."""
    steps = [np.linspace(0, n - 1, min(n, 16)) for n in grid.size]
    index = np.stack(np.meshgrid(*steps, indexing="ij"), axis=-1).reshape(-1, 3)
    inside_index = other.physical_to_index(grid.index_to_physical(index))
    inside = np.all((inside_index >= -0.5) & (inside_index <= np.asarray(other.size) - 0.5), axis=1)
    return float(inside.mean())


def lattice_difference(grid: Grid, other: Grid) -> str | None:
    """Why `grid` and `other` sample different lattices: "spacing", "direction" or "offset" (origins not a whole
    number of voxels apart); None when they sample the same one."""
    if not np.allclose(grid.spacing, other.spacing, rtol=SPACING_TOLERANCE):
        return "spacing"
    if not np.allclose(grid.direction, other.direction, atol=1e-6):
        return "direction"
    offset = other.physical_to_index(np.asarray(grid.origin))  # grid's first voxel, in other's indices
    return None if np.allclose(offset, np.round(offset), atol=1e-3) else "offset"


def common_voxels(grid: Grid, other: Grid) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    """When `grid` and `other` sample the same lattice (`lattice_difference`): the numpy (k, j, i) slices of
    each array that hold their shared voxels (empty when they do not overlap); None when they are different
    lattices. A thick-slice volume drops an incomplete last slab, so its super-resolved result is such a
    sub-grid of the volume it was made from."""
    if lattice_difference(grid, other):
        return None
    offset = np.round(other.physical_to_index(np.asarray(grid.origin))).astype(int)
    first = np.maximum(offset, 0)
    last = np.minimum(offset + np.asarray(grid.size), np.asarray(other.size))
    last = np.maximum(last, first)
    in_grid = tuple(slice(int(a - o), int(b - o)) for a, b, o in zip(first, last, offset))[::-1]
    in_other = tuple(slice(int(a), int(b)) for a, b in zip(first, last))[::-1]
    return in_grid, in_other
