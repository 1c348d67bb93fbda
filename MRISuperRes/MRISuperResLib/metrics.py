"""Image quality against a ground truth: PSNR and SSIM over the foreground.

Rules, stated once:
- data range: the truth's maximum minus its minimum over the whole volume;
- foreground: the given mask, or else voxels where the truth exceeds 5 % of its 99th percentile;
- SSIM: Wang et al. (2004) with a 3D Gaussian window of σ = 1.5 voxels, K1 = 0.01, K2 = 0.03, averaged
  over the foreground.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from .errors import MRISuperResError

FOREGROUND_FRACTION = 0.05


def foreground_mask(truth: np.ndarray) -> np.ndarray:
    return truth > FOREGROUND_FRACTION * np.percentile(truth, 99)


def _checked_mask(truth: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    mask = foreground_mask(truth) if mask is None else mask > 0
    if mask.shape != truth.shape:
        raise MRISuperResError(f"The mask has shape {mask.shape} but the truth {truth.shape}; give a mask on the truth's grid.")
    if not mask.any():
        raise MRISuperResError("The foreground mask is empty; give a mask that covers the object.")
    return mask


def psnr(result: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    mask = _checked_mask(truth, mask)
    data_range = float(truth.max() - truth.min())
    mse = float(np.mean((result[mask].astype(np.float64) - truth[mask]) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(data_range ** 2 / mse)


def ssim(result: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    mask = _checked_mask(truth, mask)
    x, y = result.astype(np.float64), truth.astype(np.float64)
    data_range = float(truth.max() - truth.min())
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    blur = lambda a: gaussian_filter(a, 1.5, truncate=3.5)  # noqa: E731
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return float(ssim_map[mask].mean())


def score(result: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    if result.shape != truth.shape:
        raise MRISuperResError(
            f"The result has shape {result.shape} but the truth {truth.shape}; compare volumes on the same grid.")
    return {"psnr": psnr(result, truth, mask), "ssim": ssim(result, truth, mask)}
