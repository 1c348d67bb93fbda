"""Give a small round lesion back the contrast its thick slabs averaged away.

A lesion thinner than a slab is averaged with its surround there: a 3 mm lesion in 4 mm slabs shows at a
quarter of its contrast in one slab and at half in the next. The same slab means come from a lesion twice
as long at half the contrast, and a network trained for the smallest error spreads it over both slabs, the
best guess on average but half the lesion's contrast (README, *Pathology is kept*). The in-plane axes are
sharp, though, and show how wide the lesion is; a lesion about as tall as it is wide (a ball) then fits the
slab means at one position and one contrast only. So each slab is searched in-plane for round blobs (scale-
normalised Laplacian of Gaussian), a ball is fitted to the slabs around each through the acquisition's box
profile, and where a ball explains them well (and nothing continues into the slabs beyond, as a vessel
crossing the slabs would) the output's variation within those slabs is replaced there by the ball's. Each
slab's mean is kept exactly, so the output still acquires the input. Lesions as wide as about 1.6 slabs or
more are left to the network, which keeps them (their contrast survives in at least one slab).

Assumes what the consistency step has established: box slabs, disjoint, along one axis, with the output on
the input's in-plane grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, optimize

# Ball radii searched, in mm; lesions wider than this share of the slab thickness are left to the network.
SMALLEST_RADIUS_MM = 1.0
WIDEST_SHARE_OF_SLAB = 0.85
RADIUS_STEP_MM = 0.5
DETECTION_SIGMAS = 10.0  # a blob's Laplacian response over that of the noise alone (the 3 mm phantom lesion: 46)
ROUNDNESS = 0.5  # smaller over larger in-plane curvature: a vessel along the slab is near 0, a blob near 1
MOST_FITS = 600  # the strongest candidates fitted, at most (5 ms each, most rejected by the coarse search)
BALL_LIKE = 0.6  # the most a blob's responses across slabs may stray from a ball's chords (relative), to be fitted
MISFIT = 0.3  # RMS misfit over the RMS signal, over the ball's footprint in the slabs fitted
SECOND_SLAB = 0.15  # the least share of the ball's chord a second slab must hold, over the first's
ROUGH_MISFIT = 0.45  # the coarse search's relative misfit above which a blob is no ball (the fit's bar is MISFIT)
AT_THE_EDGE = 0.95  # a fitted radius above this share of the widest searched means "at least that wide"
LESION_TO_SURROUND = (0.2, 3.0)  # the lesion's intensity over its surround's: a T1 hole to a bright T2 lesion
CONTINUES = 0.5  # a slab shows a blob when its core holds more than this share of the most any slab around holds
SUBSAMPLES = 3  # per pixel and axis in-plane, for the ball's partial volume
TISSUE = 0.1  # of the slabs' 99th percentile: brighter is tissue, darker air


@dataclass(frozen=True)
class Ball:
    """A fitted lesion: centre (slab-axis mm, then the two in-plane axes in pixels), radius (mm), contrast over
    its surround (intensity units), and the slabs it reaches."""

    z_mm: float
    a: float
    b: float
    radius_mm: float
    contrast: float
    slabs: tuple[int, ...]


def restore(output: np.ndarray, acquired: np.ndarray, slab_of: np.ndarray, axis_np: int,
            spacing_np: tuple[float, float, float]) -> tuple[np.ndarray, list[Ball]]:
    """`output` (numpy order, `spacing_np` mm) with every small round lesion the slabs of `acquired` show
    restored as a ball within its slabs; `slab_of` maps each output voxel along `axis_np` to the slab holding
    it (`consistency.disjoint_slabs`). Returns the new output and the balls restored."""
    out = np.moveaxis(output, axis_np, 0)
    slabs = np.moveaxis(acquired, axis_np, 0).astype(np.float64)
    dz = float(spacing_np[axis_np])
    in_plane = tuple(float(s) for i, s in enumerate(spacing_np) if i != axis_np)
    bounds = _slab_bounds(slab_of, dz, len(slabs))
    thickness = float(np.median(bounds[:, 1] - bounds[:, 0]))
    pixel = float(np.mean(in_plane))
    widest = WIDEST_SHARE_OF_SLAB * thickness
    smallest = max(SMALLEST_RADIUS_MM, 1.2 * max(in_plane))
    if widest < smallest or thickness < 1.5 * dz:
        return output, []
    radii = np.arange(smallest, widest + 1e-6, RADIUS_STEP_MM)
    noise = _noise(slabs)
    if noise <= 0:
        return output, []
    balls = []
    changed = out.copy()
    reach = widest + 4.5 * pixel  # the ring a fit takes the surround from
    for candidate in _candidates(slabs, bounds, radii, in_plane, noise, reach)[:MOST_FITS]:
        ball = _fit(slabs, bounds, candidate, in_plane, pixel, noise, smallest, widest)
        if ball is not None:
            balls.append(ball)
            _render(changed, ball, slab_of, dz, in_plane)
    return np.moveaxis(changed, 0, axis_np), balls


def _slab_bounds(slab_of: np.ndarray, dz: float, n_slabs: int) -> np.ndarray:
    """Each slab's extent along its axis in mm, in output coordinates (voxel k's centre at k·dz)."""
    bounds = np.full((n_slabs, 2), np.nan)
    for slab in range(n_slabs):
        held = np.flatnonzero(slab_of == slab)
        if len(held):
            bounds[slab] = ((held[0] - 0.5) * dz, (held[-1] + 0.5) * dz)
    return bounds


def _noise(slabs: np.ndarray) -> float:
    """The noise's sigma in the slabs' tissue: the median response to a kernel that cancels any plane and any
    smooth curvature (Immerkær's), which texture and edges raise only a little."""
    kernel = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])[None]
    tissue = ndimage.binary_erosion(slabs > TISSUE * np.percentile(slabs, 99), np.ones((1, 5, 5), bool))
    if tissue.sum() < 100:
        return 0.0
    response = ndimage.convolve(slabs, kernel, mode="nearest")[tissue]
    return float(1.4826 * np.median(np.abs(response)) / 6.0)  # the kernel's norm is 6


def _curvatures(images: np.ndarray, sigma_mm: float, in_plane) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Second derivatives (mm⁻²) along a, along b and across, of each image (last two axes) smoothed by a
    Gaussian of `sigma_mm`: finite differences of the smoothed image, one filter for all three."""
    sigmas = [0.0] * (images.ndim - 2) + [sigma_mm / s for s in in_plane]
    smooth = ndimage.gaussian_filter(images.astype(np.float32), sigmas, mode="nearest")
    up_a, down_a = np.roll(smooth, -1, -2), np.roll(smooth, 1, -2)
    saa = (up_a - 2 * smooth + down_a) / in_plane[0] ** 2
    sbb = (np.roll(smooth, -1, -1) - 2 * smooth + np.roll(smooth, 1, -1)) / in_plane[1] ** 2
    sab = (np.roll(up_a, -1, -1) - np.roll(up_a, 1, -1) - np.roll(down_a, -1, -1) + np.roll(down_a, 1, -1)) / (
        4 * in_plane[0] * in_plane[1])
    return saa, sbb, sab


def _noise_response(sigma_mm: float, in_plane) -> float:
    """The spread of the scale-normalised Laplacian (`_candidates`) on unit white noise at this scale."""
    rng = np.random.default_rng(0)
    saa, sbb, _ = _curvatures(rng.standard_normal((96, 96)), sigma_mm, in_plane)
    return float(np.std((sigma_mm ** 2 * (saa + sbb))[16:-16, 16:-16]))


def _candidates(slabs: np.ndarray, bounds: np.ndarray, radii: np.ndarray, in_plane, noise: float,
                reach_mm: float) -> list[tuple]:
    """(strength, slab, a, b, radius mm, sign, height mm) of round blobs, strongest first, one per blob: the
    slab and scale where it responds most to the scale-normalised Laplacian of Gaussian (a blob of radius r
    responds most at sigma r/√2). Kept for the (slower) fit are only blobs in tissue within `reach_mm` in the
    slabs either side (at the brain's edge a slab half in air looks like a blob), about as curved one way as
    the other in-plane (a vessel lying in the slab is not), and whose responses in those slabs could come from
    a ball of their in-plane size at some height (not a vessel or sulcus continuing through them)."""
    sigmas = radii / np.sqrt(2)
    responses, roundness = [], []
    for sigma in sigmas:
        saa, sbb, sab = _curvatures(slabs, sigma, in_plane)
        responses.append(-sigma ** 2 * (saa + sbb) / (_noise_response(sigma, in_plane) * noise))
        # The smaller over the larger principal curvature, where both bend the same way (else 0).
        mean, spread = np.abs(saa + sbb) / 2, np.sqrt(((saa - sbb) / 2) ** 2 + sab ** 2)
        roundness.append(np.clip((mean - spread) / (mean + spread + 1e-12), 0, None))
    stack = np.stack(responses, axis=1)  # (slab, scale, a, b), in noise units
    round_enough = np.stack(roundness, axis=1) >= ROUNDNESS
    deep = _deep_in_tissue(slabs, reach_mm, in_plane)
    # Only blobs with a slab either side: the pattern across three slabs is what tells a ball.
    inside = np.zeros(len(slabs), bool)
    inside[1:-1] = np.isfinite(bounds[:-2, 0]) & np.isfinite(bounds[1:-1, 0]) & np.isfinite(bounds[2:, 0])
    found = []
    for sign in (1.0, -1.0):
        signed = sign * stack
        peaks = (signed == ndimage.maximum_filter(signed, size=(1, 3, 5, 5))) & (signed > DETECTION_SIGMAS)
        slab, scale, a, b = np.nonzero(peaks & round_enough & inside[:, None, None, None])
        keep = deep[slab - 1, a, b] & deep[slab, a, b] & deep[slab + 1, a, b]
        slab, scale, a, b = slab[keep], scale[keep], a[keep], b[keep]
        around = slab[:, None] + np.arange(-1, 2)
        heights = _ball_heights(signed[around, scale[:, None], a[:, None], b[:, None]], bounds[around], radii[scale])
        for i in np.flatnonzero(np.isfinite(heights)):
            found.append((float(signed[slab[i], scale[i], a[i], b[i]]), int(slab[i]), int(a[i]), int(b[i]),
                          float(radii[scale[i]]), sign, float(heights[i])))
    found.sort(reverse=True)
    return _one_per_blob(found, min(in_plane))


def _one_per_blob(found: list[tuple], pixel: float) -> list[tuple]:
    """The strongest of the candidates (sorted, strongest first) within two slabs and a radius of each other."""
    kept: list[tuple] = []
    cell = 8  # pixels: kept candidates are filed by in-plane cell, so each looks only at its neighbours'
    filed: dict[tuple[int, int], list[tuple]] = {}
    for candidate in found:
        _, slab, a, b, radius, _, _ = candidate
        reach = radius / pixel + 1
        around = (filed.get((a // cell + da, b // cell + db), ()) for da in (-1, 0, 1) for db in (-1, 0, 1))
        if any(abs(slab - other[1]) <= 2 and np.hypot(a - other[2], b - other[3]) <= reach
               for group in around for other in group):
            continue
        kept.append(candidate)
        filed.setdefault((a // cell, b // cell), []).append(candidate)
    return kept


def _deep_in_tissue(slabs: np.ndarray, reach_mm: float, in_plane) -> np.ndarray:
    """Pixels of each slab with tissue (not air) all around them within `reach_mm`."""
    tissue = slabs > TISSUE * np.percentile(slabs, 99)
    reach = [max(1, int(np.ceil(reach_mm / s))) for s in in_plane]
    a, b = np.ogrid[-reach[0]:reach[0] + 1, -reach[1]:reach[1] + 1]
    disk = (a * in_plane[0]) ** 2 + (b * in_plane[1]) ** 2 <= reach_mm ** 2
    return np.stack([ndimage.binary_erosion(image, disk, border_value=0) for image in tissue])


def _ball_heights(responses: np.ndarray, bounds: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """For each blob (rows: its responses in three consecutive slabs, those slabs' `bounds`, its radius), the
    height (mm) of the ball whose chords through the slabs follow the responses best (contrast by least
    squares), where they follow them roughly and reach a second slab (see `_fit`); else NaN."""
    steps = np.linspace(0.0, 1.0, 13)
    heights = bounds[:, :1, 0] + steps * (bounds[:, -1:, 1] - bounds[:, :1, 0])  # (blob, height)
    top = np.minimum(bounds[:, None, :, 1], heights[..., None] + radii[:, None, None])
    bottom = np.maximum(bounds[:, None, :, 0], heights[..., None] - radii[:, None, None])
    chords = np.clip(top - bottom, 0, None) / (bounds[:, None, :, 1] - bounds[:, None, :, 0])  # (blob, height, slab)
    scale = (chords * responses[:, None, :]).sum(-1) / np.maximum((chords ** 2).sum(-1), 1e-9)
    error = np.linalg.norm(responses[:, None, :] - scale[..., None] * chords, axis=-1)
    error[scale <= 0] = np.inf
    best = np.argmin(error, axis=1)
    rows = np.arange(len(responses))
    shares = np.sort(chords[rows, best], axis=1)
    good = ((error[rows, best] <= BALL_LIKE * np.linalg.norm(responses, axis=1))
            & (shares[:, -2] >= SECOND_SLAB * shares[:, -1]))
    return np.where(good, heights[rows, best], np.nan)


def _ball_in_slabs(bounds: np.ndarray, a_grid: np.ndarray, b_grid: np.ndarray, in_plane, z, a: float,
                   b: float, radius: float) -> np.ndarray:
    """A unit-contrast ball's mean in each slab of `bounds` at the pixels of `a_grid`/`b_grid` (subsampled in-plane
    by SUBSAMPLES): the chord through each subpixel, clipped to the slab, over the slab's thickness. `z` a height
    (mm): (slabs, pixels); an array of heights: (heights, slabs, pixels)."""
    offsets = (np.arange(SUBSAMPLES) + 0.5) / SUBSAMPLES - 0.5
    da = ((a_grid[..., None, None] + offsets[:, None]) - a) * in_plane[0]
    db = ((b_grid[..., None, None] + offsets[None, :]) - b) * in_plane[1]
    half = np.sqrt(np.clip(radius ** 2 - da ** 2 - db ** 2, 0.0, None)).reshape(np.size(a_grid), -1)
    z = np.asarray(z, dtype=np.float64)[..., None, None, None]  # (…, slab, pixel, subpixel)
    low, high = bounds[:, 0, None, None], bounds[:, 1, None, None]
    overlap = np.clip(np.minimum(high, z + half) - np.maximum(low, z - half), 0.0, None)
    means = overlap.mean(axis=-1) / (high[..., 0] - low[..., 0])
    return means.reshape(*means.shape[:-1], *np.shape(a_grid))


def _fit(slabs: np.ndarray, bounds: np.ndarray, candidate: tuple, in_plane, pixel: float, noise: float,
         smallest: float, widest: float) -> Ball | None:
    """The ball that best explains the slabs around `candidate`, if it explains them well; else None."""
    _, slab, a0, b0, radius0, sign, _ = candidate
    near = np.arange(max(0, slab - 2), min(len(slabs), slab + 3))
    near = near[np.isfinite(bounds[near, 0])]
    reach = int(np.ceil((widest + 4.5 * pixel) / min(in_plane)))
    a_range = np.arange(max(0, a0 - reach), min(slabs.shape[1], a0 + reach + 1))
    b_range = np.arange(max(0, b0 - reach), min(slabs.shape[2], b0 + reach + 1))
    a_grid, b_grid = np.meshgrid(a_range, b_range, indexing="ij")
    distance = np.hypot((a_grid - a0) * in_plane[0], (b_grid - b0) * in_plane[1])
    ring = (distance >= radius0 + 1.5 * pixel) & (distance <= radius0 + 4.5 * pixel)
    inner = distance <= radius0 + 1.5 * pixel
    block = slabs[near][:, a_range[0]:a_range[-1] + 1, b_range[0]:b_range[-1] + 1]
    surrounds = np.array([_background(image, ring) for image in block])
    residual = block - surrounds[:, None, None]
    data = residual[:, inner]
    a_in, b_in = a_grid[inner], b_grid[inner]
    near_bounds = bounds[near]
    centre = near_bounds[list(near).index(slab)]

    def misfit(p):
        return p[4] * _ball_in_slabs(near_bounds, a_in, b_in, in_plane, *p[:4]) - data

    # Fitted to the blob's slab and those either side (all a ball centred within reach of it can touch); the
    # two beyond only tell whether the blob goes on.
    fitted = np.abs(near - slab) <= 1

    # The ball's centre lies in the slab where the blob shows most, or within half a radius of it.
    lowest, highest = centre[0] - widest / 2, centre[1] + widest / 2
    # A coarse search first (centre fixed, contrast solved for): most blobs are no ball at all, and the full fit
    # costs tens of milliseconds.
    start, rough = _coarse_ball(data[fitted], near_bounds[fitted], a_in, b_in, in_plane, a0, b0, lowest, highest,
                                np.clip(radius0 * np.array([0.6, 0.8, 1.0]), 0.75 * smallest, widest), pixel, sign)
    if rough > ROUGH_MISFIT:
        return None
    best = optimize.least_squares(
        lambda p: misfit(p)[fitted].ravel(), start, loss="soft_l1", f_scale=2 * noise, diff_step=1e-3,
        bounds=([lowest, a0 - 2, b0 - 2, 0.5 * smallest, -np.inf], [highest, a0 + 2, b0 + 2, widest, np.inf]))
    z, a, b, radius, contrast = best.x
    # A radius at the search's upper end is a blob at least that wide (the network keeps those).
    if np.sign(contrast) != sign or not smallest * 0.75 <= radius <= AT_THE_EDGE * widest:
        return None
    shown = _ball_in_slabs(near_bounds, a_in, b_in, in_plane, z, a, b, radius)
    touched = shown.max(axis=1) > 0.05
    # A lesion's intensity is a plausible multiple of its surround's (brighter is fluid: a vessel or a
    # perivascular space, in T2 3.5 times white matter); where the surround is not above 0 there is no telling.
    surround = float(np.median(surrounds[touched]))
    if surround <= 0 or not LESION_TO_SURROUND[0] <= (surround + contrast) / surround <= LESION_TO_SURROUND[1]:
        return None
    # Seen in one slab only, a ball could lie anywhere in it: only the share it shows in a second slab says
    # where. (On val/ every such single-slab fit was a vessel or a sulcus.)
    if np.sort(shown.max(axis=1))[-2] < SECOND_SLAB * shown.max():
        return None
    at = np.hypot((a_in - a) * in_plane[0], (b_in - b) * in_plane[1])
    footprint, core = at <= radius + pixel, at <= max(pixel, radius / 2)
    # Judged where the ball reaches or the blob shows (a ball that dodges a slab showing it fits the rest well).
    judged = np.ix_(fitted & (touched | _shows_blob(data, core, sign, fitted)), footprint)
    if _relative_misfit(contrast * shown[judged], data[judged]) > MISFIT:
        return None
    # Nothing of the blob in the slabs either side of the ball's: else it goes on (tube, fold).
    reached = np.flatnonzero(touched)
    beside = np.zeros(len(near), bool)
    beside[[i for i in (reached[0] - 1, reached[-1] + 1) if 0 <= i < len(near)]] = True
    if (_shows_blob(data, core, sign, touched | beside) & beside).any():
        return None
    return Ball(float(z), float(a), float(b), float(radius), float(contrast), tuple(int(s) for s in near[touched]))


def _coarse_ball(data: np.ndarray, bounds: np.ndarray, a_in, b_in, in_plane, a0: int, b0: int, lowest: float,
                 highest: float, radii: np.ndarray, pixel: float, sign: float) -> tuple[list[float], float]:
    """The best of balls centred on pixel (a0, b0) at a grid of heights and `radii` (contrast by least squares),
    as a start [height, a, b, radius, contrast] for the full fit, and its misfit as `_fit` judges it. Ranked by
    the misfit over every slab: judged only where it reaches, a ball could dodge a slab that shows the blob."""
    best, best_rank, best_misfit = None, np.inf, np.inf
    at = np.hypot((a_in - a0) * in_plane[0], (b_in - b0) * in_plane[1])
    heights = np.linspace(lowest, highest, 17)
    for radius in radii:
        footprint = at <= radius + pixel
        shapes = _ball_in_slabs(bounds, a_in[footprint], b_in[footprint], in_plane, heights, a0, b0, radius)
        seen = data[:, footprint]
        energy = (shapes ** 2).sum(axis=(1, 2))
        contrasts = (shapes * seen).sum(axis=(1, 2)) / np.maximum(energy, 1e-12)
        ranks = np.sqrt(((contrasts[:, None, None] * shapes - seen) ** 2).mean(axis=(1, 2)))
        ranks[energy <= 0] = np.inf
        pick = int(np.argmin(ranks))
        if ranks[pick] < best_rank:
            shape, contrast = shapes[pick], float(contrasts[pick])
            judged = (shape.max(axis=1) > 0.05) | _shows_blob(data, at <= max(pixel, radius / 2), sign)
            best, best_rank = [float(heights[pick]), a0, b0, radius, contrast], float(ranks[pick])
            best_misfit = _relative_misfit(contrast * shape[judged], seen[judged])
    return best, best_misfit


def _shows_blob(data: np.ndarray, core: np.ndarray, sign: float, among: np.ndarray | None = None) -> np.ndarray:
    """Which slabs (rows of `data`) show the blob at its core: of its sign, and more than CONTINUES of the most
    any slab `among` them shows."""
    shown = sign * data[:, core].mean(axis=1)
    most = shown[among].max() if among is not None else shown.max()
    return shown > CONTINUES * most


def _relative_misfit(model: np.ndarray, data: np.ndarray) -> float:
    return float(np.sqrt(np.mean((model - data) ** 2) / max(np.mean(data ** 2), 1e-12)))


def _background(image: np.ndarray, ring: np.ndarray) -> float:
    """The surround of a blob: the median of the ring around it. (A plane fitted to the ring tilted towards
    anatomy a few mm away and cost the phantom's 5 mm lesion 8 points of contrast.)"""
    return float(np.median(image[ring]))


def _render(out: np.ndarray, ball: Ball, slab_of: np.ndarray, dz: float, in_plane) -> None:
    """Replace the variation within the ball's slabs, over its footprint, by the ball's (in place); each slab's
    mean stays as it was."""
    rows = np.flatnonzero(np.isin(slab_of, ball.slabs))
    reach_a = int(np.ceil(ball.radius_mm / in_plane[0])) + 3
    reach_b = int(np.ceil(ball.radius_mm / in_plane[1])) + 3
    a_range = np.arange(max(0, int(round(ball.a)) - reach_a), min(out.shape[1], int(round(ball.a)) + reach_a + 1))
    b_range = np.arange(max(0, int(round(ball.b)) - reach_b), min(out.shape[2], int(round(ball.b)) + reach_b + 1))
    window = (rows[:, None, None], a_range[None, :, None], b_range[None, None, :])
    values = out[window].astype(np.float64)
    a_grid, b_grid = np.meshgrid(a_range, b_range, indexing="ij")
    # Each output voxel is a slab of thickness dz: its mean of the ball, as the slabs' is computed.
    voxel_bounds = np.stack([(rows - 0.5) * dz, (rows + 0.5) * dz], axis=1)
    ball_here = _ball_in_slabs(voxel_bounds, a_grid, b_grid, in_plane, ball.z_mm, ball.a, ball.b, ball.radius_mm)
    which = slab_of[rows]

    def slab_mean(array):
        means = np.zeros_like(array)
        for slab in ball.slabs:
            held = which == slab
            means[held] = array[held].mean(axis=0)
        return means

    distance = np.hypot((a_grid - ball.a) * in_plane[0], (b_grid - ball.b) * in_plane[1])
    footprint = np.clip((ball.radius_mm + 2 * np.mean(in_plane) - distance) / np.mean(in_plane), 0.0, 1.0)
    kept_variation = (1.0 - footprint) * (values - slab_mean(values))
    ball_variation = ball.contrast * (ball_here - slab_mean(ball_here))
    out[window] = (slab_mean(values) + ball_variation + kept_variation).astype(out.dtype)
