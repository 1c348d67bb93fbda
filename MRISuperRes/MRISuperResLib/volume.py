"""`Volume`: a 3D array that never travels without its spacing, origin and direction.

Conventions are SimpleITK's: physical space is LPS in millimetres; `spacing`, `origin` and the columns
of `direction` are in voxel-axis order (i, j, k); `array` is indexed `array[k, j, i]` (what
`SimpleITK.GetArrayFromImage` returns, and the KJI order of Slicer's `arrayFromVolume`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

AXIS_NAMES = ("i", "j", "k")


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
