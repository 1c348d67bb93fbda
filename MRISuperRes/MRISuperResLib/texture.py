"""Reference-based texture transfer with wavelet scattering (the design papers' core method).

For each slice the networks see (pre-interpolated, an upsampled axis along rows):

1. Scattering features (J = 2, L = 8: 81 channels at 1/4 resolution) of the slice, of the sharp
   reference and of the *blurred* reference: the reference averaged over the same number of target
   pixels along the upsampled direction(s) and interpolated back (box slice profile + cubic), so that
   matching compares like with like.
2. Dense matching of 3 × 3 feature patches, stride 1, by normalised dot product (cosine), argmax per
   input patch; the best score gates the swapped features (0 where there is nothing to match), and the
   confidence map a run writes is calibrated from the match's margin (`CONFIDENCE_CALIBRATION`). The features
   are standardised per channel first (mean and spread of the blurred reference's foreground): raw
   scattering coefficients are non-negative and dominated by the low-pass channel, so their cosine is
   about 0.97 for any two patches, and matching would compare local brightness rather than texture.
3. Swapping: the matched patches of the *sharp* reference's features are put in place and overlaps
   averaged; the network projects them, with the score, to a few channels on this ¼-resolution grid
   (`TextureBranch.project`), and takes those, placed on the pixels (`TextureSource.place`), in an early
   layer.

Where the matches are searched depends on the reference mode:

- ``paired``: the reference is resampled onto the target grid (same patient, registered), so each input
  patch is compared with the blurred reference patches of the same slice within ±`window` feature pixels
  (±4 · `window` image pixels), which tolerates misregistration and costs (2·window + 1)² · 81 multiply-adds
  per position.
- ``unpaired``: any high-resolution scan, not aligned, maybe another patient: a bank of at most
  `bank_size` patches from slices of all three planes of the reference (resampled to the target
  spacing in its own orientation), searched whole for every input patch.
- ``self``: no reference: the bank comes from the input's own high-resolution planes (the acquired
  slices of a thick-slice volume are sharp in-plane), blurred the way the other planes are.

Bank matching runs in chunks of input patches so that the similarity matrix never exceeds
`memory_bytes` (default 64 MiB); on top of that it holds the matched patches of the slices in flight,
9 · 81 · 4 bytes per feature position (about 12 MB for a 256 × 256 slice).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .errors import MRISuperResError
from .plan import TEXTURE_SLICE_STRIDE
from .scattering import Scattering
TEXTURE_CHANNELS = 81
# Feature positions whose low-pass (order-0) coefficient is below this, in normalised intensity, are
# background: they are not matched (confidence 0) and do not enter a bank.
FOREGROUND_LEVEL = 0.05


# The confidence map a run writes: the probability that a match is the true patch, as a function of the
# match's margin (its score less the mean score of its candidates: the raw score itself is high in flat
# regions, where every candidate matches and the best is arbitrary) and of the input's blur factor (thicker
# slices match far less often), measured on paired train/ data where the truth is known (the same place);
# piecewise linear between these (margin, probability) knots per factor, linear between factors. Made by
# scripts/calibrate_texture_confidence.py, whose picture shows the curves on val/. The networks take the
# raw score.
CONFIDENCE_CALIBRATION: dict[float, tuple[tuple[float, float], ...]] = {
    2.0: ((0.170, 0.356), (0.344, 0.406), (0.404, 0.445), (0.456, 0.485), (0.506, 0.518), (0.556, 0.542),
          (0.608, 0.566), (0.666, 0.589), (0.805, 0.613)),
    4.0: ((0.061, 0.285), (0.175, 0.290), (0.267, 0.305), (0.336, 0.337), (0.393, 0.365), (0.445, 0.387),
          (0.495, 0.402), (0.547, 0.410), (0.603, 0.431), (0.666, 0.463), (0.742, 0.493), (0.875, 0.532)),
    6.0: ((0.161, 0.173), (0.323, 0.186), (0.379, 0.196), (0.429, 0.202), (0.478, 0.211), (0.529, 0.216),
          (0.585, 0.227), (0.650, 0.244), (0.730, 0.270), (0.868, 0.289)),
}


@dataclass(frozen=True)
class MatchSettings:
    window: int = 4
    bank_size: int = 1024
    bank_slices: int = 6
    memory_bytes: int = 64 << 20
    # At inference, one slice in `slice_stride` of a plane is scattered and matched and its texture serves the
    # slices around it: the features describe 4 × 4 pixels in the slice, so this samples them as coarsely
    # across slices (the swapped features of neighbours 0.9 mm apart hardly differ). Training matches every
    # patch (its batches hold unrelated slices).
    slice_stride: int = TEXTURE_SLICE_STRIDE


def _piecewise_linear(values: torch.Tensor, knots) -> torch.Tensor:
    x = torch.tensor([k[0] for k in knots], dtype=values.dtype, device=values.device)
    y = torch.tensor([k[1] for k in knots], dtype=values.dtype, device=values.device)
    if len(knots) == 1:
        return y[0].expand_as(values)
    index = torch.searchsorted(x, values.contiguous()).clamp(1, len(knots) - 1)
    x0, x1, y0, y1 = x[index - 1], x[index], y[index - 1], y[index]
    return y0 + ((values - x0) / (x1 - x0).clamp(min=1e-12)).clamp(0, 1) * (y1 - y0)


def calibrate_confidence(margins: torch.Tensor, factor: float, table=None) -> torch.Tensor:
    """Match margins → calibrated confidence: piecewise linear through the knots of `table` (default
    `CONFIDENCE_CALIBRATION`) for the factors on either side of `factor`, blended linearly between them,
    flat beyond the ends; a margin of 0 (background, nothing matched) stays 0."""
    table = CONFIDENCE_CALIBRATION if table is None else table
    factors = sorted(table)
    below = max([f for f in factors if f <= factor], default=factors[0])
    above = min([f for f in factors if f >= factor], default=factors[-1])
    weight = 0.0 if above == below else (factor - below) / (above - below)
    values = (1 - weight) * _piecewise_linear(margins, table[below]) + weight * _piecewise_linear(margins, table[above])
    return torch.where(margins > 0, values, torch.zeros_like(margins))


def blur_like_input(slices: torch.Tensor, factors: tuple[float, float]) -> torch.Tensor:
    """(B, H, W) slices averaged over round(factor) pixels along rows / columns and interpolated back."""
    images = slices[:, None].float()
    kernel = (max(1, round(factors[0])), max(1, round(factors[1])))
    if kernel == (1, 1):
        return slices.float()
    size = images.shape[-2:]
    coarse = F.avg_pool2d(images, kernel, stride=kernel, ceil_mode=True, count_include_pad=False)
    return F.interpolate(coarse, size=size, mode="bicubic", align_corners=False)[:, 0]


@dataclass(frozen=True)
class FeatureStatistics:
    """Per-channel mean and spread used to standardise features before matching."""

    mean: torch.Tensor  # (C,)
    spread: torch.Tensor

    @classmethod
    def of(cls, features: torch.Tensor) -> "FeatureStatistics":
        """Statistics of the foreground positions of (N, C, h, w) features (all positions if none)."""
        flat = features.transpose(0, 1).flatten(1)
        foreground = flat[:, flat[0] > FOREGROUND_LEVEL]
        if foreground.shape[1] < 2:
            foreground = flat
        return cls(foreground.mean(1), foreground.std(1).clamp(min=1e-6))

    def standardise(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean.view(1, -1, 1, 1)) / self.spread.view(1, -1, 1, 1)


def _box3(x: torch.Tensor) -> torch.Tensor:
    """Sum over each position's 3 × 3 neighbourhood (zeros outside), per channel."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=True) * 9


def _shift(x: torch.Tensor, dy: int, dx: int, radius: int) -> torch.Tensor:
    """x[..., y + dy, x + dx] from a tensor padded by `radius` on every side."""
    h, w = x.shape[-2] - 2 * radius, x.shape[-1] - 2 * radius
    return x[..., radius + dy:radius + dy + h, radius + dx:radius + dx + w]


def best_window_offsets(query: torch.Tensor, blurred: torch.Tensor, radius: int
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every position of `query` (B, C, h, w), the 3 × 3 patch of `blurred` (same slice) within
    ±`radius` positions with the highest cosine similarity of standardised features: (its score, its row
    offset, its column offset, its margin over the mean score of the window), each (B, 1, h, w)."""
    eps = 1e-12
    statistics = FeatureStatistics.of(blurred)
    query, blurred = statistics.standardise(query), statistics.standardise(blurred)
    query_energy = _box3(query.pow(2).sum(1, keepdim=True))
    padded = F.pad(blurred, (radius,) * 4)
    padded_energy = _box3(padded.pow(2).sum(1, keepdim=True))
    # Candidates are patches centred inside the map.
    padded_inside = F.pad(torch.ones_like(query_energy), (radius,) * 4)
    best = torch.full_like(query_energy, -1.0)
    best_dy = torch.zeros_like(query_energy, dtype=torch.long)
    best_dx = torch.zeros_like(best_dy)
    total, candidates = torch.zeros_like(query_energy), torch.zeros_like(query_energy)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            dot = _box3((query * _shift(padded, dy, dx, radius)).sum(1, keepdim=True))
            score = dot / (query_energy * _shift(padded_energy, dy, dx, radius) + eps).sqrt()
            inside = _shift(padded_inside, dy, dx, radius)
            better = (score > best) & (inside > 0)
            total += score * inside
            candidates += inside
            best = torch.where(better, score, best)
            best_dy = torch.where(better, dy, best_dy)
            best_dx = torch.where(better, dx, best_dx)
    return best, best_dy, best_dx, best - total / candidates


def match_window(query: torch.Tensor, blurred: torch.Tensor, sharp: torch.Tensor,
                 radius: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Paired matching: for every position of `query` (B, C, h, w), the 3 × 3 patch of `blurred` (same
    slice) within ±`radius` positions with the highest cosine similarity; returns the swapped patches of
    `sharp` (B, C, h, w) with overlaps averaged, the best similarity (B, 1, h, w) and its margin over the
    window's mean similarity (how distinct the match is), both 0 on background."""
    best, best_dy, best_dx, margin = best_window_offsets(query, blurred, radius)
    foreground = query[:, :1] > FOREGROUND_LEVEL
    return (_place_window_patches(sharp, best_dy[:, 0], best_dx[:, 0], radius), best.clamp(min=0.0) * foreground,
            margin.clamp(min=0.0) * foreground)


def _place_window_patches(sharp: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, radius: int) -> torch.Tensor:
    """Average, at each position p, the values that the matched patches of p's 3 × 3 neighbours put there:
    neighbour n = p − o matched the patch centred at n + d(n), whose element at offset o lies at p + d(n)."""
    b, c, h, w = sharp.shape
    padded = F.pad(sharp, (radius + 1,) * 4).flatten(2)
    width = w + 2 * radius + 2
    rows = torch.arange(h, device=sharp.device).view(1, h, 1)
    cols = torch.arange(w, device=sharp.device).view(1, 1, w)
    total = torch.zeros_like(sharp)
    count = torch.zeros((b, 1, h, w), dtype=sharp.dtype, device=sharp.device)
    for oy in (-1, 0, 1):
        for ox in (-1, 0, 1):
            # d(p − o), with neighbours outside the map contributing nothing.
            ny, nx = rows - oy, cols - ox
            inside = ((ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)).expand(b, h, w)
            ny_c, nx_c = ny.clamp(0, h - 1).expand(b, h, w), nx.clamp(0, w - 1).expand(b, h, w)
            batch = torch.arange(b, device=sharp.device).view(b, 1, 1).expand(b, h, w)
            shift_y, shift_x = dy[batch, ny_c, nx_c], dx[batch, ny_c, nx_c]
            index = (rows + shift_y + radius + 1) * width + (cols + shift_x + radius + 1)
            values = torch.gather(padded, 2, index.flatten(1)[:, None].expand(b, c, h * w)).view(b, c, h, w)
            weight = inside[:, None].to(sharp.dtype)
            total += values * weight
            count += weight
    return total / count


@dataclass
class PatchBank:
    """Unit-normalised 3 × 3 patches of blurred reference features (keys) and the sharp ones (values)."""

    keys: torch.Tensor    # (P, 9C), standardised with `statistics`
    values: torch.Tensor  # (P, 9C)
    statistics: FeatureStatistics

    @property
    def size(self) -> int:
        return self.keys.shape[0]


def build_bank(blurred: list[torch.Tensor], sharp: list[torch.Tensor], max_patches: int) -> PatchBank:
    """A bank from feature maps (each (N, C, h, w), shapes may differ): foreground 3 × 3 patches, at most
    `max_patches`, evenly spread over the foreground (deterministic), standardised with the statistics
    of all the blurred maps' foreground."""
    channels = blurred[0].shape[1]
    statistics = FeatureStatistics.of(torch.cat([b.flatten(2) for b in blurred], dim=2)[..., None])
    keys, values = [], []
    for blurred_maps, sharp_maps in zip(blurred, sharp):
        foreground = (blurred_maps[:, 0] > FOREGROUND_LEVEL).flatten()
        keys.append(F.unfold(statistics.standardise(blurred_maps), 3, padding=1)
                    .transpose(1, 2).reshape(-1, 9 * channels)[foreground])
        values.append(F.unfold(sharp_maps, 3, padding=1).transpose(1, 2).reshape(-1, 9 * channels)[foreground])
    keys, values = torch.cat(keys), torch.cat(values)
    if keys.shape[0] > max_patches:
        picks = torch.linspace(0, keys.shape[0] - 1, max_patches).round().long()
        keys, values = keys[picks], values[picks]
    return PatchBank(F.normalize(keys, dim=1), values.contiguous(), statistics)


def match_bank(query: torch.Tensor, bank: PatchBank, memory_bytes: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unpaired / self matching of every foreground 3 × 3 patch of `query` (B, C, h, w) against the whole
    bank, in chunks whose similarity matrix stays within `memory_bytes`; returns swapped features with
    overlaps averaged, the best cosine similarity and its margin over the mean similarity to the bank
    (0 on background and with an empty bank)."""
    b, c, h, w = query.shape
    confidence = torch.zeros((b, h * w), dtype=query.dtype, device=query.device)
    margin = torch.zeros_like(confidence)
    matched = torch.zeros((b, h * w, 9 * c), dtype=query.dtype, device=query.device)
    if bank.size:
        patches = F.unfold(bank.statistics.standardise(query), 3, padding=1).transpose(1, 2)  # (B, h·w, 9C)
        foreground = (query[:, 0] > FOREGROUND_LEVEL).flatten(1)
        chunk = max(1, memory_bytes // (4 * bank.size))
        for item in range(b):
            positions = foreground[item].nonzero()[:, 0]
            for start in range(0, positions.numel(), chunk):
                where = positions[start:start + chunk]
                similarity = F.normalize(patches[item, where], dim=1) @ bank.keys.T
                score, index = similarity.max(dim=1)
                margin[item, where] = (score - similarity.mean(dim=1)).clamp(min=0.0)
                del similarity
                confidence[item, where] = score.clamp(min=0.0)
                matched[item, where] = bank.values[index]
    weights = F.fold(torch.ones((1, 9, h * w), dtype=query.dtype, device=query.device), (h, w), 3, padding=1)
    swapped = F.fold(matched.transpose(1, 2), (h, w), 3, padding=1) / weights
    return swapped, confidence.view(b, 1, h, w), margin.view(b, 1, h, w)


def upsample_features(features: torch.Tensor, image_shape: tuple[int, int], scattering: Scattering) -> torch.Tensor:
    """Bilinear interpolation of (B, C, h, w) scattering-grid maps onto the (H, W) image pixels they describe:
    coefficient i sits at image pixel 2^J · (i + 1) − padding (kymatio pads, subsamples and unpads)."""
    height, width = image_shape
    top, left = scattering.leading_padding(height, width)
    step = 2 ** scattering.J
    h, w = features.shape[-2:]
    y = (torch.arange(height, dtype=features.dtype, device=features.device) + top) / step - 1
    x = (torch.arange(width, dtype=features.dtype, device=features.device) + left) / step - 1
    grid_y = (2 * y / max(h - 1, 1) - 1).view(height, 1).expand(height, width)
    grid_x = (2 * x / max(w - 1, 1) - 1).view(1, width).expand(height, width)
    grid = torch.stack([grid_x, grid_y], dim=-1)[None].expand(features.shape[0], height, width, 2)
    return F.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=True)


def acquired_planes(upsampled: tuple[int, ...]) -> list[int]:
    """Numpy axes normal to the planes the input was acquired in at full resolution: planes whose two axes
    are not upsampled. Self-reference takes its texture from them; refuses a run that has none."""
    from .volume import AXIS_NAMES

    normals = [2 - normal for normal in range(3) if all(a not in upsampled for a in range(3) if a != normal)]
    if not normals:
        raise MRISuperResError(
            "Self-reference needs an input plane that was acquired at high resolution, but every plane of this "
            f"run holds an upsampled axis ({', '.join(AXIS_NAMES[a] for a in upsampled)}); give a reference volume "
            "(paired or unpaired mode) instead.")
    return normals


def _spread_slices(array: np.ndarray, numpy_axis: int, count: int) -> list[np.ndarray]:
    """`count` slices along `numpy_axis`, evenly spread over the middle 80 % of the volume."""
    n = array.shape[numpy_axis]
    picks = sorted({int(round(i)) for i in np.linspace(0.1 * (n - 1), 0.9 * (n - 1), count)})
    return [np.take(array, p, axis=numpy_axis) for p in picks]


class TextureSource:
    """Texture-transfer inputs for the slices of a run: (G, 82, H, W) = swapped features and confidence,
    on the slices' pixels."""

    def __init__(self, mode: str, settings: MatchSettings = MatchSettings(), device: torch.device | None = None,
                 bank_source: list[np.ndarray] | None = None) -> None:
        self.mode, self.settings = mode, settings
        self.device = device or torch.device("cpu")
        self.scattering = Scattering()
        self.bank_source = bank_source
        self._banks: dict[tuple[float, float], PatchBank] = {}

    @classmethod
    def paired(cls, **kwargs) -> "TextureSource":
        """Matches in the reference slices that `features` is given with the input slices."""
        return cls("paired", **kwargs)

    @classmethod
    def unpaired(cls, reference: np.ndarray, settings: MatchSettings = MatchSettings(), **kwargs) -> "TextureSource":
        slices = [s for axis in range(3) for s in _spread_slices(reference, axis, settings.bank_slices)]
        return cls("unpaired", settings, bank_source=slices, **kwargs)

    @classmethod
    def self_reference(cls, lr: np.ndarray, upsampled: tuple[int, ...], settings: MatchSettings = MatchSettings(),
                       **kwargs) -> "TextureSource":
        slices = [s for axis in acquired_planes(upsampled) for s in _spread_slices(lr, axis, settings.bank_slices)]
        # Both orientations: the acquired slices' texture can lie either way in the other planes.
        return cls("self", settings, bank_source=slices + [s.T for s in slices], **kwargs)

    def bank(self, factors: tuple[float, float]) -> PatchBank:
        if factors not in self._banks:
            keys, values = [], []
            for image in self.bank_source:
                sharp = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(self.device)
                if min(sharp.shape[-2:]) < 8:
                    continue
                keys.append(self.scattering(blur_like_input(sharp, factors)))
                values.append(self.scattering(sharp))
            self._banks[factors] = build_bank(keys, values, self.settings.bank_size)
        return self._banks[factors]

    def prepare(self, factors: list[tuple[float, float]]) -> None:
        """Build the banks (unpaired and self modes) for the planes' blur factors ahead of the slices."""
        if self.mode != "paired":
            for pair in factors:
                self.bank(pair)

    def features(self, lr_slices: np.ndarray, factors: tuple[float, float],
                 reference_slices: np.ndarray | None = None, mask_slices: np.ndarray | None = None,
                 slice_stride: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Texture inputs (G, 82, h, w) on the scattering grid (¼ resolution) of pre-interpolated slices
        (G, H, W) blurred by `factors` (rows, columns): swapped features and raw match score; and the
        matches' margins (G, 1, h, w), which the confidence map is calibrated from. Paired mode also takes
        the reference and its mask on the same slices. The networks project the inputs on this grid, before
        they are placed on pixels (`place`), so that 82 full-resolution channels never exist.

        `slice_stride` > 1: the slices are consecutive slices of a plane; each run of `slice_stride` of them
        takes the texture of its middle slice, which alone is matched."""
        if slice_stride > 1 and lr_slices.shape[0] > 1:
            count = lr_slices.shape[0]
            middle = np.minimum(np.arange(count) // slice_stride * slice_stride + slice_stride // 2, count - 1)
            chosen, serves = np.unique(middle, return_inverse=True)
            texture, margin = self.features(lr_slices[chosen], factors,
                                            None if reference_slices is None else reference_slices[chosen],
                                            None if mask_slices is None else mask_slices[chosen])
            serves = torch.from_numpy(serves).to(texture.device)
            return texture[serves], margin[serves]
        lr = torch.from_numpy(np.ascontiguousarray(lr_slices, dtype=np.float32)).to(self.device)
        height, width = self.scattering.output_shape(*lr.shape[-2:])
        texture = lr.new_zeros((lr.shape[0], TEXTURE_CHANNELS + 1, height, width))
        margin = lr.new_zeros((lr.shape[0], 1, height, width))
        # Slices with nothing above the foreground level get zeros (confidence 0 everywhere): exactly what
        # matching would give them, without the work.
        active = torch.from_numpy(np.flatnonzero(lr_slices.reshape(lr_slices.shape[0], -1).max(axis=1)
                                                 > FOREGROUND_LEVEL)).to(self.device)
        if active.numel() == 0:
            return texture, margin
        with torch.inference_mode():
            query = self.scattering(lr[active])
            if self.mode == "paired":
                sharp_image = torch.from_numpy(np.ascontiguousarray(reference_slices * mask_slices, dtype=np.float32)
                                               ).to(self.device)[active]
                blurred = self.scattering(blur_like_input(sharp_image, factors))
                swapped, score, margin[active] = match_window(query, blurred, self.scattering(sharp_image),
                                                              self.settings.window)
            else:
                swapped, score, margin[active] = match_bank(query, self.bank(factors), self.settings.memory_bytes)
            texture[active] = torch.cat([swapped, score], 1)
        return texture, margin

    def place(self, texture: torch.Tensor, margin: torch.Tensor, factors: tuple[float, float],
              image_shape: tuple[int, int], project) -> tuple[np.ndarray, np.ndarray]:
        """`features`' outputs for slices of `image_shape` blurred by `factors` → (the network's projection
        of the texture on the pixels, (G, hidden, H, W); the calibrated confidence on the pixels, (G, H, W))."""
        with torch.inference_mode():
            projected = upsample_features(project(texture), image_shape, self.scattering)
            calibrated = calibrate_confidence(margin, max(factors))
            confidence = upsample_features(calibrated, image_shape, self.scattering)[:, 0]
        return projected.cpu().numpy(), confidence.cpu().numpy()
