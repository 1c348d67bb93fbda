"""Where a scan holds signal: the bounding box of the anatomy in each group of slices, so that the slice
networks need not run over the air around it.

MRI fields of view are mostly air (on a head about half of every sagittal or coronal slice's box), and air
carries nothing to super-resolve: there the output is the interpolated input. The background is recognised
from the volume's border, and only when the border is dark or a constant fill (a zero-padded or masked
volume), so that a tight field of view whose border crosses tissue is never cropped. Noise and single bright
voxels do not widen a box: the test is made on a local mean.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import uniform_filter

from .intensity import IntensityScale

# On the normalised scale (intensity.IntensityScale: 0.5th percentile -> 0, 99.5th -> 1).
BACKGROUND_TOLERANCE = 0.05
# The border is background when its median is at most this bright, or when this share of it is one value.
DARK_BORDER = 0.1
CONSTANT_BORDER_SHARE = 0.9
# Local mean over this many voxels per side before the test: Rician noise of 2 % of the range exceeds the
# tolerance in about one voxel in a thousand, its 5³ mean practically never.
SMOOTHING_VOXELS = 5
# Voxels kept around the anatomy in every direction of a slice, so that the network sees the edge of the
# anatomy as it does inside a full slice (as tiles overlap by plan.TILE_OVERLAP on each side, twice that).
MARGIN = 32


def background_level(array: np.ndarray) -> float | None:
    """The intensity of the air around the anatomy (the median of the volume's six faces), or None when the
    border is neither dark nor a constant fill, that is, when it may cross tissue."""
    faces = [np.take(array, index, axis=axis).ravel()
             for axis in range(array.ndim) if array.shape[axis] > 2 for index in (0, -1)]
    if not faces:  # every axis two voxels or fewer: all of it is border
        return None
    faces = np.concatenate(faces)
    if faces.size == 0:
        return None
    level = float(np.median(faces))
    constant = np.mean(np.abs(faces - level) <= 1e-3 * BACKGROUND_TOLERANCE) >= CONSTANT_BORDER_SHARE
    return level if level <= DARK_BORDER or constant else None


def signal_mask(array: np.ndarray) -> np.ndarray | None:
    """True where the local mean differs from the background by more than the tolerance; None when the
    background cannot be told (nothing is then cropped)."""
    level = background_level(array)
    if level is None:
        return None
    local = uniform_filter(array.astype(np.float32, copy=False), size=SMOOTHING_VOXELS, mode="nearest")
    return np.abs(local - level) > BACKGROUND_TOLERANCE


Box = tuple[int, int, int, int]


def group_boxes(mask: np.ndarray | None, height: int, width: int, n_slices: int, group: int,
                context: int = 0) -> list[Box | None]:
    """For each group of `group` consecutive slices of an oriented (slices, rows, columns) `mask`: the rows
    r0:r1 and columns c0:c1 holding signal in those slices or their `context` neighbours, widened by
    `MARGIN`; None for a group without signal. Without a mask every box is the whole slice."""
    firsts = range(0, n_slices, group)
    if mask is None:
        return [(0, height, 0, width)] * len(firsts)
    rows_with_signal, columns_with_signal = mask.any(axis=2), mask.any(axis=1)
    boxes: list[Box | None] = []
    for first in firsts:
        span = slice(max(0, first - context), min(n_slices, first + group + context))
        rows = np.flatnonzero(rows_with_signal[span].any(axis=0))
        columns = np.flatnonzero(columns_with_signal[span].any(axis=0))
        if rows.size == 0 or columns.size == 0:
            boxes.append(None)
            continue
        boxes.append((max(0, int(rows[0]) - MARGIN), min(height, int(rows[-1]) + 1 + MARGIN),
                      max(0, int(columns[0]) - MARGIN), min(width, int(columns[-1]) + 1 + MARGIN)))
    return boxes


def box_share(boxes: list[Box | None], height: int, width: int, n_slices: int, group: int) -> float:
    """The share of the slices' pixels that lie in their group's box."""
    covered = sum((box[1] - box[0]) * (box[3] - box[2]) * min(group, n_slices - first)
                  for first, box in zip(range(0, n_slices, group), boxes) if box is not None)
    return covered / max(1, n_slices * height * width)


def signal_shares(normalised: np.ndarray, group: int) -> dict[int, float]:
    """For slices normal to each numpy axis of `normalised` (a volume on the normalised scale), the share of
    their pixels that the slice networks run over, in groups of `group` slices: the plan's time estimate."""
    mask = signal_mask(normalised)
    shares = {}
    for normal in range(normalised.ndim):
        oriented = None if mask is None else np.moveaxis(mask, normal, 0)
        n, height, width = np.moveaxis(normalised, normal, 0).shape
        shares[normal] = box_share(group_boxes(oriented, height, width, n, group), height, width, n, group)
    return shares


def scan_signal_shares(array: np.ndarray, group: int) -> dict[int, float]:
    """`signal_shares` of a scan as read (any intensity scale): what every time estimate of it uses, so that
    `mrisuperres plan` and `mrisuperres devices` give one scan the same time."""
    return signal_shares(IntensityScale.fit(array).normalise(array), group)
