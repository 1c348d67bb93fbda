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
slab's mean is kept exactly, so the output still acquires the input. Lesions as wide as about 1.4 slabs or
more are left to the network, which keeps them (most of their contrast survives in at least one slab).

Assumes what the consistency step has established: box slabs, disjoint, along one axis, with the output on
the input's in-plane grid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
from scipy import ndimage, optimize

# Ball radii searched, in mm; lesions wider than this share of the slab thickness are left to the network.
SMALLEST_RADIUS_MM = 1.0
WIDEST_SHARE_OF_SLAB = 0.75  # 0.85 let a 7.8 mm ball into 5 mm slabs on a metastasis' oedema (scan of train/)
RADIUS_RATIO = 1.3  # between neighbouring radii searched (4 radii in 4 mm slabs of 0.9 mm pixels, 9 in 10 mm ones)
SLABS_AT_ONCE = 8  # slabs searched together: bounds the search's memory whatever the slab count
DETECTION_SIGMAS = 10.0  # a blob's Laplacian response over that of the noise alone (the 3 mm phantom lesion: 46)
ROUNDNESS = 0.5  # smaller over larger in-plane curvature: a vessel along the slab is near 0, a blob near 1
MOST_FITS = 600  # the strongest candidates fitted, at most (5 ms each, most rejected by the coarse search)
BALL_LIKE = 0.6  # the most a blob's responses across slabs may stray from a ball's chords (relative), to be fitted
MISFIT = 0.3  # RMS misfit over the RMS signal, over the ball's footprint in the slabs fitted
SECOND_SLAB = 0.15  # the least share of the ball's chord a second slab must hold, over the first's
ROUGH_MISFIT = 0.45  # the coarse search's relative misfit above which a blob is no ball (the fit's bar is MISFIT)
MOST_IN_ONE_SLAB = 0.85  # the share of its chord a slab may hold before a lesion counts as shown in full
AT_THE_EDGE = 0.95  # a fitted radius above this share of the widest searched means "at least that wide"
LESION_TO_SURROUND = (0.2, 3.0)  # the lesion's intensity over its surround's: a T1 hole to a bright T2 lesion
CONTINUES = 0.5  # a slab shows a blob when its core holds more than this share of the most any slab around holds
SUBSAMPLES = 3  # per pixel and axis in-plane, for the ball's partial volume
TISSUE = 0.1  # of the slabs' 99th percentile: brighter is tissue, darker air
RING = (1.5, 4.5)  # the surround's ring around a blob, in pixels beyond its radius
TOUCHES = 0.05  # the least share of a slab a ball's chord must fill for the ball to reach that slab


class Candidate(NamedTuple):
    """A round blob worth fitting: its response (noise units), the slab where it shows most, its pixel there,
    the radius (mm) it responds most at, and whether it is brighter (1) or darker (-1) than its surround."""

    strength: float
    slab: int
    a: int
    b: int
    radius_mm: float
    sign: float


@dataclass(frozen=True)
class Ball:
    """A fitted lesion: centre (along the slabs in mm, in output coordinates; in-plane in pixels), radius (mm),
    contrast over its surround (intensity units), and the slabs it reaches."""

    z_mm: float
    a_px: float
    b_px: float
    radius_mm: float
    contrast: float
    slabs: tuple[int, ...]


def restore(output: np.ndarray, acquired: np.ndarray, slab_of: np.ndarray, axis_np: int,
            spacing_np: tuple[float, float, float], cancelled: Callable[[], None] | None = None
            ) -> tuple[np.ndarray, list[Ball]]:
    """`output` (numpy order, `spacing_np` mm) with every small round lesion the slabs of `acquired` show
    restored as a ball within its slabs; `slab_of` maps each output voxel along `axis_np` to the slab holding
    it (-1: none; `consistency.disjoint_slabs`). Returns the new output (`output` itself when no ball was
    fitted) and the balls. `cancelled` is called between fits (it raises to stop the run)."""
    slabs = np.moveaxis(acquired, axis_np, 0).astype(np.float64)
    dz = float(spacing_np[axis_np])
    in_plane = tuple(float(s) for i, s in enumerate(spacing_np) if i != axis_np)
    bounds = _slab_bounds(slab_of, dz, len(slabs))
    if not np.isfinite(bounds).any():
        return output, []
    thickness = float(np.nanmedian(bounds[:, 1] - bounds[:, 0]))
    pixel = float(np.mean(in_plane))
    widest = WIDEST_SHARE_OF_SLAB * thickness
    smallest = max(SMALLEST_RADIUS_MM, 1.2 * max(in_plane))
    noise = _noise(slabs)
    if widest < smallest or thickness < 1.5 * dz or noise <= 0:
        return output, []
    radii = smallest * RADIUS_RATIO ** np.arange(int(np.log(widest / smallest) / np.log(RADIUS_RATIO)) + 1)
    balls = []
    changed = np.moveaxis(output, axis_np, 0).copy()
    reach = widest + RING[1] * pixel  # the ring a fit takes the surround from
    for candidate in _candidates(slabs, bounds, radii, in_plane, noise, reach)[:MOST_FITS]:
        if cancelled is not None:
            cancelled()
        ball = _fit(slabs, bounds, candidate, in_plane, pixel, noise, smallest, widest)
        if ball is not None:
            balls.append(ball)
            _render(changed, ball, slab_of, dz, in_plane, pixel)
    return (np.moveaxis(changed, 0, axis_np) if balls else output), balls


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
    """The spread of the scale-normalised Laplacian (`_candidates`) on unit white noise at this scale (away from
    the image's border, which the filter reaches to about 4 sigma)."""
    margin = int(np.ceil(4 * sigma_mm / min(in_plane))) + 2
    rng = np.random.default_rng(0)
    saa, sbb, _ = _curvatures(rng.standard_normal((64 + 2 * margin,) * 2), sigma_mm, in_plane)
    return float(np.std((sigma_mm ** 2 * (saa + sbb))[margin:-margin, margin:-margin]))


def _candidates(slabs: np.ndarray, bounds: np.ndarray, radii: np.ndarray, in_plane, noise: float,
                reach_mm: float) -> list[Candidate]:
    """Round blobs worth fitting, strongest first, one per blob: the slab and radius where it responds most to
    the scale-normalised Laplacian of Gaussian (a blob of radius r responds most at sigma r/√2). Kept are only
    blobs in tissue within `reach_mm` in the slabs either side (at the brain's edge a slab half in air looks
    like a blob), about as curved one way as the other in-plane (a vessel lying in the slab is not), and whose
    responses in those slabs could come from a ball of their in-plane size at some height (not a vessel or
    sulcus continuing through them). Searched `SLABS_AT_ONCE` slabs at a time, with one either side."""
    sigmas = radii / np.sqrt(2)
    noise_responses = [_noise_response(sigma, in_plane) * noise for sigma in sigmas]
    deep = _deep_in_tissue(slabs, reach_mm, in_plane)
    # Only blobs with a slab either side: the pattern across three slabs is what tells a ball.
    inside = np.zeros(len(slabs), bool)
    inside[1:-1] = np.isfinite(bounds[:-2, 0]) & np.isfinite(bounds[1:-1, 0]) & np.isfinite(bounds[2:, 0])
    found: list[Candidate] = []
    for first in range(1, len(slabs) - 1, SLABS_AT_ONCE):
        chunk = slice(first - 1, min(len(slabs), first + SLABS_AT_ONCE + 1))
        stack, round_enough = _blob_responses(slabs[chunk], sigmas, noise_responses, in_plane)
        for sign in (1.0, -1.0):
            signed = sign * stack
            # Each pixel's strongest radius, then the pixels strongest within 2 of them in-plane: a quarter of
            # the work of a maximum over radii and pixels together, and one candidate per blob all the same.
            scale_of = np.argmax(signed, axis=1)
            strongest = np.take_along_axis(signed, scale_of[:, None], axis=1)[:, 0]
            peaks = (strongest == ndimage.maximum_filter(strongest, size=(1, 5, 5))) & (strongest > DETECTION_SIGMAS)
            peaks &= np.take_along_axis(round_enough, scale_of[:, None], axis=1)[:, 0] & inside[chunk][:, None, None]
            peaks[[0, -1]] = False  # the halo: searched in the chunks either side
            at, a, b = np.nonzero(peaks)
            scale = scale_of[at, a, b]
            slab = at + chunk.start
            keep = deep[slab - 1, a, b] & deep[slab, a, b] & deep[slab + 1, a, b]
            at, slab, scale, a, b = at[keep], slab[keep], scale[keep], a[keep], b[keep]
            around = at[:, None] + np.arange(-1, 2)
            ball_like = _ball_like(signed[around, scale[:, None], a[:, None], b[:, None]],
                                   bounds[slab[:, None] + np.arange(-1, 2)], radii[scale])
            found += [Candidate(float(signed[at[i], scale[i], a[i], b[i]]), int(slab[i]), int(a[i]), int(b[i]),
                                float(radii[scale[i]]), sign) for i in np.flatnonzero(ball_like)]
    found.sort(reverse=True)
    return _one_per_blob(found, min(in_plane), float(radii.max()))


def _blob_responses(slabs: np.ndarray, sigmas: np.ndarray, noise_responses: list[float], in_plane
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The scale-normalised Laplacian's response (slab, scale, a, b; in noise units), and where a blob there
    would be round enough: the smaller over the larger principal curvature, both bending the same way."""
    responses, round_enough = [], []
    for sigma, noise_response in zip(sigmas, noise_responses):
        saa, sbb, sab = _curvatures(slabs, sigma, in_plane)
        responses.append((-sigma ** 2 / noise_response) * (saa + sbb))  # float32, like the curvatures
        mean, spread = np.abs(saa + sbb) / 2, np.sqrt(((saa - sbb) / 2) ** 2 + sab ** 2)
        round_enough.append(mean - spread >= ROUNDNESS * (mean + spread))
    return np.stack(responses, axis=1), np.stack(round_enough, axis=1)


def _one_per_blob(found: list[Candidate], pixel: float, widest: float) -> list[Candidate]:
    """The strongest of the candidates (sorted, strongest first) within two slabs and a radius of each other.
    Kept candidates are filed by in-plane cell, each as wide as the farthest reach, so that a candidate needs
    to look only at those filed in its own cell and the eight around it."""
    kept: list[Candidate] = []
    cell = int(np.ceil(widest / pixel + 1))
    filed: dict[tuple[int, int], list[Candidate]] = {}
    for candidate in found:
        reach = candidate.radius_mm / pixel + 1
        where = (candidate.a // cell, candidate.b // cell)
        near = (filed.get((where[0] + da, where[1] + db), ()) for da in (-1, 0, 1) for db in (-1, 0, 1))
        if any(abs(candidate.slab - other.slab) <= 2 and np.hypot(candidate.a - other.a, candidate.b - other.b) <= reach
               for group in near for other in group):
            continue
        kept.append(candidate)
        filed.setdefault(where, []).append(candidate)
    return kept


def _deep_in_tissue(slabs: np.ndarray, reach_mm: float, in_plane) -> np.ndarray:
    """Pixels of each slab with tissue (not air) all around them within `reach_mm`; beyond the image is air."""
    tissue = np.pad(slabs > TISSUE * np.percentile(slabs, 99), ((0, 0), (1, 1), (1, 1)))
    depth = np.stack([ndimage.distance_transform_edt(image, sampling=in_plane) for image in tissue])
    return depth[:, 1:-1, 1:-1] > reach_mm


def _ball_like(responses: np.ndarray, bounds: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """For each blob (rows: its responses in three consecutive slabs, those slabs' `bounds`, its radius), whether
    some ball of that radius has chords through the slabs that follow the responses roughly (contrast by least
    squares, over a grid of heights) and reach a second slab (see `_fit`)."""
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
    return ((error[rows, best] <= BALL_LIKE * np.linalg.norm(responses, axis=1))
            & (shares[:, -2] >= SECOND_SLAB * shares[:, -1]))


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


class _Blob(NamedTuple):
    """A candidate's neighbourhood: the slabs around it, their surround (each its ring's median), and the
    signal over the surround at the pixels within reach of the blob."""

    slabs: np.ndarray  # indices of the (up to) five slabs around the blob's
    bounds: np.ndarray
    surrounds: np.ndarray
    signal: np.ndarray  # (slab, pixel)
    a: np.ndarray  # the pixels' coordinates
    b: np.ndarray


def _pixels_around(centre: int, reach: int, size: int) -> np.ndarray:
    """The pixels of an axis of `size` within `reach` of `centre`."""
    return np.arange(max(0, centre - reach), min(size, centre + reach + 1))


def _neighbourhood(slabs: np.ndarray, bounds: np.ndarray, candidate: Candidate, in_plane, pixel: float,
                   widest: float) -> _Blob:
    near = np.arange(max(0, candidate.slab - 2), min(len(slabs), candidate.slab + 3))
    near = near[np.isfinite(bounds[near, 0])]
    reach = int(np.ceil((widest + RING[1] * pixel) / min(in_plane)))
    a_range, b_range = (_pixels_around(centre, reach, size) for centre, size in zip((candidate.a, candidate.b),
                                                                                     slabs.shape[1:]))
    a_grid, b_grid = np.meshgrid(a_range, b_range, indexing="ij")
    distance = np.hypot((a_grid - candidate.a) * in_plane[0], (b_grid - candidate.b) * in_plane[1])
    ring = (distance >= candidate.radius_mm + RING[0] * pixel) & (distance <= candidate.radius_mm + RING[1] * pixel)
    inner = distance < candidate.radius_mm + RING[0] * pixel
    block = slabs[near][:, a_range[0]:a_range[-1] + 1, b_range[0]:b_range[-1] + 1]
    surrounds = np.array([_background(image, ring) for image in block])
    return _Blob(near, bounds[near], surrounds, (block - surrounds[:, None, None])[:, inner], a_grid[inner],
                 b_grid[inner])


def _fit(slabs: np.ndarray, bounds: np.ndarray, candidate: Candidate, in_plane, pixel: float, noise: float,
         smallest: float, widest: float) -> Ball | None:
    """The ball that best explains the slabs around `candidate`, if it explains them well; else None."""
    blob = _neighbourhood(slabs, bounds, candidate, in_plane, pixel, widest)
    # Fitted to the blob's slab and those either side (all a ball centred within reach of it can touch); the
    # two beyond only tell whether the blob goes on.
    fitted = np.abs(blob.slabs - candidate.slab) <= 1
    centre = bounds[candidate.slab]
    # The ball's centre lies in the slab where the blob shows most, or within half the widest ball of it.
    lowest, highest = centre[0] - widest / 2, centre[1] + widest / 2

    def misfit(p):
        return p[4] * _ball_in_slabs(blob.bounds[fitted], blob.a, blob.b, in_plane, *p[:4]) - blob.signal[fitted]

    # A coarse search first (centre fixed, contrast solved for): most blobs are no ball at all, and the full fit
    # costs tens of milliseconds.
    start, rough = _coarse_ball(blob.signal[fitted], blob.bounds[fitted], blob.a, blob.b, in_plane, candidate,
                                lowest, highest, smallest, widest, pixel)
    if rough > ROUGH_MISFIT:
        return None
    least = 0.5 * smallest  # below the smallest radius searched, so that the fit is not held at it
    best = optimize.least_squares(
        lambda p: misfit(p).ravel(), start, loss="soft_l1", f_scale=2 * noise, diff_step=1e-3,
        bounds=([lowest, candidate.a - 2, candidate.b - 2, least, -np.inf],
                [highest, candidate.a + 2, candidate.b + 2, widest, np.inf]))
    ball = Ball(*map(float, best.x), ())
    return _judged(ball, blob, fitted, candidate.sign, in_plane, pixel, smallest, widest)


def _judged(ball: Ball, blob: _Blob, fitted: np.ndarray, sign: float, in_plane, pixel: float, smallest: float,
            widest: float) -> Ball | None:
    """`ball` with the slabs it reaches, if it is a plausible small lesion that explains the slabs; else None."""
    # A radius at the search's upper end is a blob at least that wide (the network keeps those).
    if np.sign(ball.contrast) != sign or not 0.75 * smallest <= ball.radius_mm <= AT_THE_EDGE * widest:
        return None
    shown = _ball_in_slabs(blob.bounds, blob.a, blob.b, in_plane, ball.z_mm, ball.a_px, ball.b_px, ball.radius_mm)
    touched = shown.max(axis=1) > TOUCHES
    # Seen in one slab only, a ball could lie anywhere in it: only the share it shows in a second slab says
    # where. (On val/ every such single-slab fit was a vessel or a sulcus.)
    if touched.sum() < 2 or np.sort(shown.max(axis=1))[-2] < SECOND_SLAB * shown.max():
        return None
    # Shown nearly whole in one slab, the lesion keeps most of its contrast there and the network restores
    # it better than a ball of the wrong shape would: on two 7 mm T1 lesions of val/ in 5 mm slabs (0.89 of
    # the chord in one slab) the ball raised the local error from 14.8 to 21.8 and from 14.3 to 18.7.
    if shown.max() >= MOST_IN_ONE_SLAB:
        return None
    # A lesion's intensity is a plausible multiple of its surround's (brighter is fluid: a vessel or a
    # perivascular space, in T2 3.5 times white matter); where the surround is not above 0 there is no telling.
    surround = float(np.median(blob.surrounds[touched]))
    if surround <= 0 or not LESION_TO_SURROUND[0] <= (surround + ball.contrast) / surround <= LESION_TO_SURROUND[1]:
        return None
    at = np.hypot((blob.a - ball.a_px) * in_plane[0], (blob.b - ball.b_px) * in_plane[1])
    footprint, core = at <= ball.radius_mm + pixel, at <= max(pixel, ball.radius_mm / 2)
    # Judged where the ball reaches or the blob shows (a ball that dodges a slab showing it fits the rest well).
    judged = np.ix_(fitted & (touched | _shows_blob(blob.signal, core, sign, fitted)), footprint)
    if _relative_misfit(ball.contrast * shown[judged], blob.signal[judged]) > MISFIT:
        return None
    # Nothing of the blob in the slabs either side of the ball's: else it goes on (tube, fold).
    reached = np.flatnonzero(touched)
    beside = np.zeros(len(blob.slabs), bool)
    beside[[i for i in (reached[0] - 1, reached[-1] + 1) if 0 <= i < len(blob.slabs)]] = True
    if (_shows_blob(blob.signal, core, sign, touched | beside) & beside).any():
        return None
    return replace(ball, slabs=tuple(int(s) for s in blob.slabs[touched]))


def _coarse_ball(signal: np.ndarray, bounds: np.ndarray, a_in, b_in, in_plane, candidate: Candidate, lowest: float,
                 highest: float, smallest: float, widest: float, pixel: float) -> tuple[list[float], float]:
    """The best of balls centred on the candidate's pixel at a grid of heights and radii (contrast by least
    squares), as a start [height, a, b, radius, contrast] for the full fit, and its misfit as `_judged` judges
    it. Ranked by the misfit over every slab: judged only where it reaches, a ball could dodge a slab that shows
    the blob. The Laplacian overstates a small blob's radius, so smaller radii are tried too."""
    best, best_rank, best_misfit = None, np.inf, np.inf
    at = np.hypot((a_in - candidate.a) * in_plane[0], (b_in - candidate.b) * in_plane[1])
    heights = np.linspace(lowest, highest, 17)
    for radius in np.clip(candidate.radius_mm * np.array([0.6, 0.8, 1.0]), 0.75 * smallest, widest):
        footprint = at <= radius + pixel
        shapes = _ball_in_slabs(bounds, a_in[footprint], b_in[footprint], in_plane, heights, candidate.a,
                                candidate.b, radius)
        seen = signal[:, footprint]
        energy = (shapes ** 2).sum(axis=(1, 2))
        contrasts = (shapes * seen).sum(axis=(1, 2)) / np.maximum(energy, 1e-12)
        ranks = np.sqrt(((contrasts[:, None, None] * shapes - seen) ** 2).mean(axis=(1, 2)))
        ranks[energy <= 0] = np.inf
        pick = int(np.argmin(ranks))
        if ranks[pick] < best_rank:
            shape, contrast = shapes[pick], float(contrasts[pick])
            judged = (shape.max(axis=1) > TOUCHES) | _shows_blob(signal, at <= max(pixel, radius / 2), candidate.sign)
            best, best_rank = [float(heights[pick]), candidate.a, candidate.b, radius, contrast], float(ranks[pick])
            best_misfit = _relative_misfit(contrast * shape[judged], seen[judged])
    return best, best_misfit


def _shows_blob(signal: np.ndarray, core: np.ndarray, sign: float, among: np.ndarray | None = None) -> np.ndarray:
    """Which slabs (rows of `signal`) show the blob at its core: of its sign, and more than CONTINUES of the most
    any slab `among` them shows."""
    shown = sign * signal[:, core].mean(axis=1)
    most = shown[among].max() if among is not None else shown.max()
    return shown > CONTINUES * most


def _relative_misfit(model: np.ndarray, data: np.ndarray) -> float:
    return float(np.sqrt(np.mean((model - data) ** 2) / max(np.mean(data ** 2), 1e-12)))


def _background(image: np.ndarray, ring: np.ndarray) -> float:
    """The surround of a blob: the median of the ring around it. (A plane fitted to the ring tilted towards
    anatomy a few mm away and cost the phantom's 5 mm lesion 8 points of contrast.)"""
    return float(np.median(image[ring]))


def _render(out: np.ndarray, ball: Ball, slab_of: np.ndarray, dz: float, in_plane, pixel: float) -> None:
    """Replace the variation within the ball's slabs, over its footprint (fading out from one to two pixels
    beyond its radius), by the ball's (in place); each slab's mean stays as it was."""
    rows = np.flatnonzero(np.isin(slab_of, ball.slabs))
    ranges = [_pixels_around(int(round(centre)), int(np.ceil((ball.radius_mm + 2 * pixel) / spacing)) + 1, size)
              for centre, spacing, size in zip((ball.a_px, ball.b_px), in_plane, out.shape[1:])]
    window = (rows[:, None, None], ranges[0][None, :, None], ranges[1][None, None, :])
    values = out[window].astype(np.float64)
    a_grid, b_grid = np.meshgrid(*ranges, indexing="ij")
    # Each output voxel is a slab of thickness dz: its mean of the ball, as the slabs' is computed.
    voxel_bounds = np.stack([(rows - 0.5) * dz, (rows + 0.5) * dz], axis=1)
    ball_here = _ball_in_slabs(voxel_bounds, a_grid, b_grid, in_plane, ball.z_mm, ball.a_px, ball.b_px, ball.radius_mm)
    which = slab_of[rows]

    def slab_mean(array):
        means = np.zeros_like(array)
        for slab in ball.slabs:
            held = which == slab
            means[held] = array[held].mean(axis=0)
        return means

    distance = np.hypot((a_grid - ball.a_px) * in_plane[0], (b_grid - ball.b_px) * in_plane[1])
    footprint = np.clip((ball.radius_mm + 2 * pixel - distance) / pixel, 0.0, 1.0)
    kept_variation = (1.0 - footprint) * (values - slab_mean(values))
    ball_variation = ball.contrast * (ball_here - slab_mean(ball_here))
    out[window] = (slab_mean(values) + ball_variation + kept_variation).astype(out.dtype)
