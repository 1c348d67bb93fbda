"""`Volume`: a 3D array that never travels without its spacing, origin and direction.

Conventions are SimpleITK's: physical space is LPS in millimetres; `spacing`, `origin` and the columns
of `direction` are in voxel-axis order (i, j, k); `array` is indexed `array[k, j, i]` (what
`SimpleITK.GetArrayFromImage` returns, and the KJI order of Slicer's `arrayFromVolume`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from .errors import MRISuperResError

AXIS_NAMES = ("i", "j", "k")
# Resampling and the networks compute in float32: a larger finite value becomes inf there, then NaN everywhere.
FLOAT32_MAX = float(np.finfo(np.float32).max)
# How far DᵀD may stray from the identity before a direction counts as sheared or scaled (header round-off passes).
ORTHONORMAL_TOLERANCE = 1e-4


def check_float32_range(array: np.ndarray, role: str = "volume") -> None:
    """Refuse finite voxel values beyond float32's range (only float64 and wider can hold them)."""
    array = np.asarray(array)
    if array.dtype.kind != "f" or array.dtype.itemsize <= 4 or array.size == 0:
        return
    if -FLOAT32_MAX <= array.min() and array.max() <= FLOAT32_MAX:  # the usual case, without temporaries
        return
    beyond = np.abs(array) > FLOAT32_MAX  # also reached by a NaN above, which fails both comparisons
    beyond &= np.isfinite(array)  # inf has its own sentence (check_scalar_volume), NaN never compares greater
    if beyond.any():
        values = array[beyond]
        extreme = values[np.argmax(np.abs(values))]
        raise MRISuperResError(
            f"The {role} has voxel values as large as {extreme:.3g}, beyond the ±3.4e38 that super-resolution "
            "can compute with; rescale the image (for example divide it by a constant) first.")


def _axis_pair(a: int, b: int) -> str:
    return f"{AXIS_NAMES[a]} and {AXIS_NAMES[b]} axes"


def _degeneracy(direction: np.ndarray) -> str | None:
    """Why `direction` places no voxel in space (None when its axes span 3D)."""
    if not np.all(np.isfinite(direction)):
        return "it holds NaN or infinite entries"
    lengths = np.linalg.norm(direction, axis=0)
    zero = [AXIS_NAMES[a] for a in range(3) if lengths[a] < 1e-6]
    if zero:
        return f"its {' and '.join(zero)} {'axis has' if len(zero) == 1 else 'axes have'} zero length"
    unit = direction / lengths
    if abs(np.linalg.det(unit)) >= 1e-6:
        return None
    parallel = [(a, b) for a, b in ((0, 1), (0, 2), (1, 2)) if abs(unit[:, a] @ unit[:, b]) > 1 - 1e-6]
    return f"its {_axis_pair(*parallel[0])} are parallel" if parallel else "its three axes lie in one plane"


def check_direction(direction: np.ndarray, role: str = "volume") -> None:
    """Refuse a direction that is not a rotation or reflection.

    A singular one places no voxel in space; a sheared or scaled one describes a grid that the slab convention
    (geometry.py), the resampling and ITK's NIfTI writer all take to be orthogonal with unit axes.
    """
    direction = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    degeneracy = _degeneracy(direction)
    if degeneracy:
        raise MRISuperResError(
            f"The {role} has a degenerate direction matrix ({degeneracy}), so its voxels have no position in space; "
            "fix its header or re-export it.")
    deviation = direction.T @ direction - np.eye(3)
    if np.max(np.abs(deviation)) <= ORTHONORMAL_TOLERANCE:
        return
    lengths = np.linalg.norm(direction, axis=0)
    pairs = [(a, b) for a, b in ((0, 1), (0, 2), (1, 2)) if abs(deviation[a, b]) > ORTHONORMAL_TOLERANCE]
    if pairs:
        angle = {(a, b): abs(90.0 - np.degrees(np.arccos(np.clip(
            deviation[a, b] / (lengths[a] * lengths[b]), -1.0, 1.0)))) for a, b in pairs}
        worst = max(angle, key=angle.get)
        problem = f"its {_axis_pair(*worst)} are sheared by {angle[worst]:.3g} degrees"
    else:
        axis = int(np.argmax(np.abs(lengths - 1)))
        problem = f"its {AXIS_NAMES[axis]} axis has length {lengths[axis]:.6g} instead of 1"
    raise MRISuperResError(
        f"The {role} has a direction matrix that is not orthonormal ({problem}); resample it onto an orthogonal "
        "grid first, for example with 3D Slicer's Resample Scalar/Vector/DWI Volume module.")


@dataclass(frozen=True)
class Grid:
    """A voxel grid in physical space: size and spacing per axis (i, j, k), origin and a 3×3 direction."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(int(n) for n in self.size))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(o) for o in self.origin))
        object.__setattr__(self, "direction", np.asarray(self.direction, dtype=np.float64).reshape(3, 3))

    @property
    def shape_kji(self) -> tuple[int, int, int]:
        """The numpy shape of an array on this grid."""
        return self.size[::-1]

    @property
    def voxel_count(self) -> int:
        return int(np.prod(self.size))

    def index_to_physical(self, index_ijk: np.ndarray) -> np.ndarray:
        """Physical points (…, 3) of continuous indices (…, 3) given in (i, j, k) order."""
        index_ijk = np.asarray(index_ijk, dtype=np.float64)
        return np.asarray(self.origin) + (index_ijk * np.asarray(self.spacing)) @ self.direction.T

    def physical_to_index(self, points: np.ndarray) -> np.ndarray:
        """Continuous (i, j, k) indices of physical points (…, 3)."""
        offset = np.asarray(points, dtype=np.float64) - np.asarray(self.origin)
        return (offset @ np.linalg.inv(self.direction).T) / np.asarray(self.spacing)

    def corners(self) -> np.ndarray:
        """The 8 physical corners of the grid's extent (voxel edges, not centres)."""
        lo = np.full(3, -0.5)
        hi = np.asarray(self.size, dtype=np.float64) - 0.5
        idx = np.array([[(hi if b else lo)[a] for a, b in enumerate(bits)]
                        for bits in np.ndindex(2, 2, 2)])
        return self.index_to_physical(idx)

    def same_as(self, other: "Grid", tolerance: float = 1e-6) -> bool:
        return (self.size == other.size
                and np.allclose(self.spacing, other.spacing, atol=tolerance, rtol=0)
                and np.allclose(self.origin, other.origin, atol=tolerance, rtol=0)
                and np.allclose(self.direction, other.direction, atol=tolerance, rtol=0))

    def describe(self) -> str:
        spacing = " × ".join(f"{s:.3g}" for s in self.spacing)
        size = " × ".join(str(n) for n in self.size)
        return f"{size} voxels at {spacing} mm"


@dataclass
class Volume:
    """A scalar 3D image: `array[k, j, i]` plus the grid it lives on."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        if self.array.ndim != 3:
            raise ValueError(f"a Volume needs a 3D array, got shape {self.array.shape}")
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        # Refused on construction: every Volume (read from a file, built through the Python API or from a
        # Slicer node) passes here, and once a later step has cast to float32 the values are lost as inf.
        check_float32_range(self.array)

    @property
    def grid(self) -> Grid:
        return Grid(self.array.shape[::-1], self.spacing, self.origin, self.direction)

    @classmethod
    def on_grid(cls, array: np.ndarray, grid: Grid) -> "Volume":
        if tuple(array.shape) != grid.shape_kji:
            raise ValueError(f"array shape {array.shape} does not match grid {grid.shape_kji}")
        return cls(array, grid.spacing, grid.origin, grid.direction)

    def with_array(self, array: np.ndarray) -> "Volume":
        """The same grid holding another array of the same shape."""
        return Volume.on_grid(array, self.grid)

    def to_sitk(self) -> sitk.Image:
        image = sitk.GetImageFromArray(self.array)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(tuple(self.direction.ravel()))
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> "Volume":
        return cls(sitk.GetArrayFromImage(image), image.GetSpacing(), image.GetOrigin(),
                   np.asarray(image.GetDirection()).reshape(3, 3))
