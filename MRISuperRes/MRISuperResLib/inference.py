"""Running a 2D slice network over every planned plane of a volume, in batches of overlapping tiles, and
fusing the planes.

Slices are oriented with an upsampled axis along rows, as the training patches are, so the network
always sees the thick-slice direction vertically.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from .devices import autocast
from .foreground import group_boxes, signal_mask
from .plan import TILE_OVERLAP, Plan, tiles_per_call
from .progress import CancelFlag, ProgressCallback, StageReporter
from .texture import TextureSource
from .volume import AXIS_NAMES


def plane_axes(plane: str, upsampled: tuple[int, ...]) -> tuple[int, int, int]:
    """Numpy axes (slice, row, column) for `plane`: rows along an upsampled axis of the plane."""
    in_plane = [AXIS_NAMES.index(a) for a in plane]
    rows = next(a for a in in_plane if a in upsampled)
    columns = next(a for a in in_plane if a != rows)
    normal = 3 - rows - columns
    return 2 - normal, 2 - rows, 2 - columns


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `tile` samples covering `length`, neighbours sharing 2 × `overlap`."""
    if length <= tile:
        return [0]
    step = tile - 2 * overlap
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


def _core(start: int, tile: int, low: int, high: int, overlap: int) -> tuple[int, int]:
    """The part of a tile (within low:high) whose prediction is kept: all but the overlap margins, except at
    the borders of low:high."""
    return (low if start == low else start + overlap), (high if start + tile >= high else start + tile - overlap)


def _tiles(n_slices: int, box: tuple[int, int, int, int], tile: int) -> Iterator[tuple[int, int, int]]:
    """(slice, row, column) starts of the tiles covering rows r0:r1 and columns c0:c1 of every slice."""
    r0, r1, c0, c1 = box
    for s in range(n_slices):
        for r in tile_starts(r1 - r0, tile, TILE_OVERLAP):
            for c in tile_starts(c1 - c0, tile, TILE_OVERLAP):
                yield s, r0 + r, c0 + c


def _tile_count(box: tuple[int, int, int, int] | None, n_slices: int, tile: int) -> int:
    if box is None:
        return 0
    r0, r1, c0, c1 = box
    return n_slices * len(tile_starts(r1 - r0, tile, TILE_OVERLAP)) * len(tile_starts(c1 - c0, tile, TILE_OVERLAP))


def _batched(items: Iterator, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def plane_factors(plan: Plan, axes: tuple[int, int, int]) -> tuple[float, float]:
    """The upsampling factors along the rows and the columns of a plane's slices."""
    return plan.factors[2 - axes[1]], plan.factors[2 - axes[2]]


def factor_argument(network: torch.nn.Module, row_factor: float) -> dict:
    """The low-resolution factor along the rows, for networks that degrade their reference as the input was
    (`takes_factor`); nothing for the others."""
    return {"factor": float(row_factor)} if getattr(network, "takes_factor", False) else {}


def oriented_slices(array: np.ndarray, rows_np: int, columns_np: int) -> np.ndarray:
    """A view of `array` as (slices, rows along numpy axis `rows_np`, columns along `columns_np`)."""
    return np.transpose(array, (3 - rows_np - columns_np, rows_np, columns_np))


def with_neighbours(slices: np.ndarray, first: int, count: int, context: int) -> np.ndarray:
    """Slices first … first + count − 1 of `slices` (n, H, W), each with its `context` neighbours on each side
    as channels after it (−1, +1, −2, +2, …; clamped at the ends, as in training): (count, 1 + 2·context, H, W)."""
    n = slices.shape[0]
    offsets = [0] + [o for d in range(1, context + 1) for o in (-d, d)]
    index = np.clip(np.arange(first, first + count)[:, None] + np.array(offsets)[None, :], 0, n - 1)
    return np.ascontiguousarray(slices[index])


def predict_planes(network: torch.nn.Module, plan: Plan, lr: np.ndarray, reference: np.ndarray | None,
                   reference_mask: np.ndarray | None, device: torch.device,
                   progress: ProgressCallback | None = None, cancel: CancelFlag | None = None,
                   texture: TextureSource | None = None,
                   crop_to_signal: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Average over the planned planes of the network's slice-by-slice prediction on the target grid, and
    (with texture transfer) of the texture matches' confidence.

    Slices go through in groups of `plan.batch_size`: texture inputs exist only for the group in flight,
    as 82 channels on the scattering grid and, once the network projected them there, as its few hidden
    channels on the pixels. With `crop_to_signal`, each group of slices runs only over the box holding
    signal (`foreground`), the air around it keeping the interpolated input.
    """
    # Where the scan holds signal; outside each slice group's box the output is the interpolated input.
    signal = signal_mask(lr) if crop_to_signal else None
    boxes, tiles = {}, 0
    for plane in plan.planes:
        axes = plane_axes(plane, plan.upsampled)
        n, height, width = (lr.shape[a] for a in axes)
        boxes[plane] = group_boxes(None if signal is None else np.transpose(signal, axes), height, width, n,
                                   plan.batch_size, getattr(network, "context", 0))
        tiles += sum(_tile_count(box, min(plan.batch_size, n - first), plan.tile)
                     for first, box in zip(range(0, n, plan.batch_size), boxes[plane]))
    del signal
    reporter = StageReporter("model", tiles, progress, cancel)
    fused = np.zeros(lr.shape, dtype=np.float32)
    # Confidence: of the texture matches, or of a network's own reference matches (DAASR's similarity map).
    network_confidence = texture is None and getattr(network, "gives_confidence", False)
    fused_confidence = np.zeros(lr.shape, dtype=np.float32) if texture is not None or network_confidence else None
    use_reference = plan.uses_reference and reference is not None
    context = getattr(network, "context", 0)
    tiles_at_once = tiles_per_call(str(device), plan.batch_size)
    for plane in plan.planes:
        axes = plane_axes(plane, plan.upsampled)
        oriented = {"lr": np.transpose(lr, axes)}
        if use_reference:
            oriented["reference"] = np.transpose(reference, axes)
            oriented["reference_mask"] = np.transpose(reference_mask, axes)
        n, height, width = oriented["lr"].shape
        prediction = np.array(oriented["lr"], dtype=np.float32)
        confidence = None if fused_confidence is None else np.zeros((n, height, width), dtype=np.float32)
        arguments = factor_argument(network, plane_factors(plan, axes)[0])
        if network_confidence:
            arguments["confidence"] = True
        for first, box in zip(range(0, n, plan.batch_size), boxes[plane]):
            if box is None:
                continue
            r_lo, r_hi, c_lo, c_hi = box
            tile_h, tile_w = min(plan.tile, r_hi - r_lo), min(plan.tile, c_hi - c_lo)
            group = {name: np.ascontiguousarray(x[first:first + plan.batch_size])[:, None]
                     for name, x in oriented.items()}
            if context:
                group["lr"] = with_neighbours(oriented["lr"], first, group["lr"].shape[0], context)
            if texture is not None:
                paired = texture.mode == "paired"
                factors = plane_factors(plan, axes)
                features, margins = texture.features(
                    group["lr"][:, 0], factors,
                    group["reference"][:, 0] if paired else None, group["reference_mask"][:, 0] if paired else None,
                    slice_stride=texture.settings.slice_stride)
                group["texture"], confidence[first:first + plan.batch_size] = texture.place(
                    features, margins, factors, (height, width), network.texture.project)
                del features, margins
            count = group["lr"].shape[0]
            for batch in _batched(_tiles(count, box, plan.tile), tiles_at_once):
                tensors = {name: torch.from_numpy(np.stack([x[s, :, r:r + tile_h, c:c + tile_w] for s, r, c in batch]))
                           .to(device=device, dtype=torch.float32) for name, x in group.items()}
                with torch.inference_mode(), autocast(device):
                    output = network(**tensors, **arguments)
                if network_confidence:
                    output, tile_confidence = (x[:, 0].float().cpu().numpy() for x in output)
                else:
                    output = output[:, 0].float().cpu().numpy()
                for index, ((s, r, c), tile_out) in enumerate(zip(batch, output)):
                    r0, r1 = _core(r, tile_h, r_lo, r_hi, TILE_OVERLAP)
                    c0, c1 = _core(c, tile_w, c_lo, c_hi, TILE_OVERLAP)
                    prediction[first + s, r0:r1, c0:c1] = tile_out[r0 - r:r1 - r, c0 - c:c1 - c]
                    if network_confidence:
                        confidence[first + s, r0:r1, c0:c1] = tile_confidence[index, r0 - r:r1 - r, c0 - c:c1 - c]
                reporter.advance(len(batch))
            del group
        fused += np.transpose(prediction, np.argsort(axes))
        if confidence is not None:
            fused_confidence += np.transpose(confidence, np.argsort(axes))
        del prediction, confidence
    fused /= len(plan.planes)
    if fused_confidence is not None:
        fused_confidence /= len(plan.planes)
    reporter.finish()
    return fused, fused_confidence
