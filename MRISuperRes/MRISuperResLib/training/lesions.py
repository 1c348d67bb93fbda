"""Synthetic lesions for training: ellipsoids of random size and contrast placed in a scan's tissue.

A lesion smaller than a thick slab is averaged with its surround in the input, and a network trained on
healthy anatomy restores it only partly (README, *Pathology is kept*). Placing blobs of 2-12 mm, bright or
dark, with soft edges, into the truth before it is degraded shows a network such lesions in any anatomy.
(Fine-tuning `edsr-large` with them kept more of a 3 mm lesion's contrast with a reference but not without
one, and cost healthy patches 0.1-0.3 dB, so it was not shipped: README.) The reference shows the same
lesion with its own contrast most of the time (as a second contrast of the same patient would), sometimes
not at all, and sometimes a lesion that the target lacks, so that a lesion seen only in the reference is not
copied into the output.
"""

from __future__ import annotations

import random

import numpy as np

DIAMETERS_MM = (2.0, 12.0)
# Lesion intensity over its surround's: below 1 dark (T1 holes), above 1 bright (T2, FLAIR).
CONTRASTS = (0.3, 2.5)
# Up to one lesion per this much of the scan's volume (mm³): about 28 in a brain, so that a fair share of
# the patches holds one (with a few per scan, 2 % did, too few to learn from in a CPU fine-tune).
VOLUME_PER_LESION_MM3 = 60.0 ** 3
# How the reference shows a lesion of the target: with its own contrast, not at all; and how often the
# reference holds an extra lesion that the target does not.
IN_REFERENCE = 0.7
REFERENCE_ONLY = 0.25
# Tissue, not air: a lesion's centre lies where the normalised truth is at least this bright.
TISSUE = 0.15
EDGE_VOXELS = 0.7  # the soft edge's width (partial volume)


def _soft_ellipsoid(shape: tuple[int, ...], centre, radii) -> tuple[tuple[slice, ...], np.ndarray]:
    """The bounding box of an ellipsoid (radii in voxels, array order) and its soft occupancy there."""
    box = tuple(slice(max(0, int(c - r - 2)), min(n, int(c + r + 3))) for c, r, n in zip(centre, radii, shape))
    grids = np.meshgrid(*[np.arange(s.start, s.stop) - c for s, c in zip(box, centre)], indexing="ij")
    distance = np.sqrt(sum((g / r) ** 2 for g, r in zip(grids, radii)))  # 1 on the surface
    # Signed distance to the surface in voxels, roughly: (distance - 1) times the mean radius.
    occupancy = 1.0 / (1.0 + np.exp((distance - 1.0) * float(np.mean(radii)) / EDGE_VOXELS * 4.0))
    return box, occupancy.astype(np.float32)


def _paint(array: np.ndarray, box, occupancy: np.ndarray, contrast: float, rng: np.random.Generator) -> None:
    region = array[box]
    outside = occupancy < 0.05
    surround = float(np.median(region[outside])) if outside.any() else float(region.mean())
    # A little texture, so that a lesion is not a flat plateau the network could learn by heart.
    value = surround * contrast * (1.0 + 0.05 * rng.standard_normal(region.shape).astype(np.float32))
    array[box] = region * (1.0 - occupancy) + value * occupancy


def with_lesions(truth: np.ndarray, reference: np.ndarray | None, spacing_ijk, rng: random.Random
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """Copies of `truth` (and `reference`, on the same grid) with synthetic lesions, at least one and up to
    one per `VOLUME_PER_LESION_MM3`; `spacing_ijk` in mm, the arrays in (k, j, i) order."""
    truth = truth.copy()
    reference = None if reference is None else reference.copy()
    np_rng = np.random.default_rng(rng.randrange(1 << 30))
    spacing = np.asarray(spacing_ijk, dtype=float)[::-1]
    most = max(1, int(truth.size * float(np.prod(spacing)) / VOLUME_PER_LESION_MM3))
    for _ in range(rng.randint(1, most)):
        # Random voxels until one lies in tissue (most of a scan's voxels do; give up on a nearly empty one).
        candidates = np_rng.integers(0, truth.shape, size=(64, 3))
        in_tissue = candidates[truth[tuple(candidates.T)] > TISSUE]
        if len(in_tissue) == 0:
            continue
        centre = in_tissue[0]
        diameter = rng.uniform(*DIAMETERS_MM)
        # Mildly elongated, in any of the axes' directions.
        radii = diameter / 2 * np.exp(np_rng.uniform(-0.25, 0.25, 3)) / spacing
        radii = np.maximum(radii, 0.5)
        box, occupancy = _soft_ellipsoid(truth.shape, centre, radii)
        only_in_reference = reference is not None and rng.random() < REFERENCE_ONLY
        if not only_in_reference:
            _paint(truth, box, occupancy, float(np.exp(rng.uniform(*np.log(CONTRASTS)))), np_rng)
        if reference is not None and (only_in_reference or rng.random() < IN_REFERENCE):
            _paint(reference, box, occupancy, float(np.exp(rng.uniform(*np.log(CONTRASTS)))), np_rng)
    return truth, reference
