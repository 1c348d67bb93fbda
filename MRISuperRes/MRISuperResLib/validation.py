"""Checks that turn bad volumes into one sentence naming the problem and the fix."""

from __future__ import annotations

import numpy as np

from .errors import MRISuperResError
from .volume import Volume, check_direction, check_float32_range


def refuse_non_finite(count: int, role: str) -> None:
    """The refusal of `count` NaN or infinite voxels (counted in the array, or in a file's raw data)."""
    raise MRISuperResError(f"The {role} has {count} NaN or infinite voxels; replace them (for example with 0) first.")


def check_scalar_volume(volume: Volume, role: str = "input", allow_constant: bool = False) -> None:
    """Refuse arrays a slice-wise 3D super-resolution cannot use: 2D, non-finite or constant (`allow_constant`:
    a map the product wrote itself, such as a confidence map of zeros, may be constant)."""
    array = volume.array
    if array.ndim != 3:
        raise MRISuperResError(f"The {role} has {array.ndim} dimensions; give one 3D scalar volume.")
    if min(array.shape) < 2:
        raise MRISuperResError(
            f"The {role} is a 2D image ({' × '.join(map(str, array.shape[::-1]))} voxels); "
            "super-resolution needs a 3D volume with at least 2 slices along every axis.")
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise MRISuperResError(f"The {role} holds {array.dtype} voxels; give a real-valued scalar volume.")
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all():
            refuse_non_finite(int(array.size - np.count_nonzero(finite)), role)
        # Again here, not only when the Volume was made: its array may have been changed in place since.
        check_float32_range(array, role)
    if not allow_constant and array.size and array.min() == array.max():
        # `role` may carry the file's path ("reference '/data/t1.nii.gz'").
        is_reference = role.split(" ", 1)[0] == "reference"
        what = "it has no anatomy to guide the result" if is_reference else "there is nothing to super-resolve"
        raise MRISuperResError(
            f"The {role} is constant (every voxel is {array.flat[0]}); {what}, check that the right volume was "
            "loaded.")
    if np.any(np.asarray(volume.spacing) <= 0):
        raise MRISuperResError(f"The {role} has a non-positive spacing {volume.spacing}; fix its header.")
    # Sheared, scaled or degenerate directions, also from the Python API or a Slicer node (files are checked
    # when read, with their path in the message).
    check_direction(volume.direction, role)


def check_reference_is_not_input(volume: Volume, reference: Volume) -> None:
    """Refuse a reference that is the input itself (the same object, or the same grid and voxels)."""
    if reference is volume or (reference.grid.same_as(volume.grid) and np.array_equal(reference.array, volume.array)):
        raise MRISuperResError("The reference is the input itself; choose a volume of another contrast, or no reference.")
