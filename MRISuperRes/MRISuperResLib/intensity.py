"""Robust intensity normalisation, and its exact inverse so results come back in the input's units."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5


@dataclass(frozen=True)
class IntensityScale:
    """Maps `low` → 0 and `high` → 1 linearly; values outside are kept, not clipped."""

    low: float
    high: float

    @classmethod
    def fit(cls, array: np.ndarray, mask: np.ndarray | None = None) -> "IntensityScale":
        """Percentiles of `array` (inside `mask` if given); falls back to min/max when they coincide."""
        values = array[mask > 0] if mask is not None and np.any(mask > 0) else array
        values = values[::max(1, values.size // 2_000_000)]  # a regular subsample is plenty for percentiles
        low, high = np.percentile(values, [LOW_PERCENTILE, HIGH_PERCENTILE])
        if high <= low:
            low, high = float(values.min()), float(values.max())
        if high <= low:
            high = low + 1.0
        return cls(float(low), float(high))

    def normalise(self, array: np.ndarray) -> np.ndarray:
        """A float32 copy of `array` on the normalised scale."""
        scaled = array.astype(np.float32, copy=True)
        scaled -= self.low
        scaled /= self.high - self.low
        return scaled

    def restore(self, array: np.ndarray, in_place: bool = False) -> np.ndarray:
        """`array` back in the original units (overwriting it when `in_place`, to spare a volume of memory)."""
        restored = array if in_place and array.dtype == np.float32 else array.astype(np.float32, copy=True)
        restored *= self.high - self.low
        restored += self.low
        return restored
