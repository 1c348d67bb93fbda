"""A synthetic multi-contrast head (T1- and T2-weighted) for the demo and the tests.

We cannot ship patient scans, so the demo runs on this: scalp, skull, CSF, a folded cortex whose white
matter reaches into gyri, ventricles, deep grey nuclei and a few lesions, with partial volume, a smooth
bias field, fine tissue texture and Rician noise. It is generated deterministically from a seed.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import distance_transform_edt, gaussian_filter

from .volume import Volume

#                 background  scalp  skull  csf   gm    wm    deep_gm  lesion
T1_INTENSITY = (0.0,        0.95,  0.08,  0.15, 0.55, 0.85, 0.62,    0.40)
T2_INTENSITY = (0.0,        0.55,  0.05,  1.00, 0.60, 0.38, 0.50,    0.90)
BACKGROUND, SCALP, SKULL, CSF, GM, WM, DEEP_GM, LESION = range(8)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    field = gaussian_filter(rng.standard_normal(shape), sigma)
    return (field - field.mean()) / field.std()


def _ellipsoid(coords: np.ndarray, centre, radii) -> np.ndarray:
    return sum(((c - m) / r) ** 2 for c, m, r in zip(coords, centre, radii))


def phantom_labels(shape_kji: tuple[int, int, int] = (128, 160, 128), seed: int = 0) -> np.ndarray:
    """Tissue labels on a 1 mm grid of `shape_kji` voxels (k = inferior→superior)."""
    rng = np.random.default_rng(seed)
    coords = np.meshgrid(*(np.arange(n) - (n - 1) / 2 for n in shape_kji), indexing="ij")
    half = np.asarray(shape_kji) / 2
    head = np.sqrt(_ellipsoid(coords, (0, 0, 0), half * 0.92))
    mean_radius = float(np.mean(half * 0.92))
    labels = np.zeros(shape_kji, dtype=np.uint8)
    labels[head < 1] = SCALP
    labels[head < 1 - 5 / mean_radius] = SKULL
    labels[head < 1 - 10 / mean_radius] = CSF
    brain_depth = (1 - 12 / mean_radius - head) * mean_radius  # mm below the brain surface
    brain = brain_depth > 0
    sulci = (np.abs(_smooth_field(rng, shape_kji, 3.0)) < 0.22) & (brain_depth < 8 + 10 * (_smooth_field(rng, shape_kji, 6.0) > 0))
    labels[brain] = GM
    labels[brain & sulci] = CSF
    # Cortex: grey matter within 2.5 mm of the CSF in sulci or over the surface; white matter beneath.
    labels[distance_transform_edt(brain & ~sulci) > 2.5] = WM
    for side in (-1, 1):
        labels[_ellipsoid(coords, (4, 0, side * 8), (14, 22, 5)) < 1] = CSF           # lateral ventricles
        labels[_ellipsoid(coords, (-6, 4, side * 20), (9, 12, 7)) < 1] = DEEP_GM       # basal ganglia
    for _ in range(6):
        centre = rng.uniform(-0.35, 0.35, 3) * np.asarray(shape_kji)
        inside = _ellipsoid(coords, centre, rng.uniform(2.0, 5.0, 3)) < 1
        labels[inside & (labels == WM)] = LESION
    return labels


def phantom_contrast(labels: np.ndarray, intensities: tuple[float, ...], seed: int, noise: float = 0.01) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    image = np.asarray(intensities, dtype=np.float32)[labels]
    image = gaussian_filter(image, 0.6)  # partial volume at tissue borders
    texture = 1 + 0.04 * _smooth_field(rng, labels.shape, 1.0)
    bias = 1 + 0.08 * _smooth_field(rng, labels.shape, 24.0)
    image = image * texture * bias
    noisy = np.sqrt((image + rng.normal(0, noise, image.shape)) ** 2 + rng.normal(0, noise, image.shape) ** 2)
    return (1000 * noisy).astype(np.float32)


def make_phantom(shape_kji: tuple[int, int, int] = (128, 160, 128), seed: int = 0,
                 direction: np.ndarray | None = None) -> dict[str, Volume]:
    """{'T1': Volume, 'T2': Volume} on the same 1 mm grid, centred on the origin."""
    labels = phantom_labels(shape_kji, seed)
    direction = np.eye(3) if direction is None else np.asarray(direction, dtype=float)
    origin = -direction @ ((np.asarray(shape_kji[::-1]) - 1) / 2.0)
    return {name: Volume(phantom_contrast(labels, table, seed + i), (1.0, 1.0, 1.0), tuple(origin), direction)
            for i, (name, table) in enumerate((("T1", T1_INTENSITY), ("T2", T2_INTENSITY)))}


def place_lesions(labels: np.ndarray, diameters_mm, spacing_mm: float = 10.0) -> tuple[np.ndarray, list[np.ndarray]]:
    """`labels` with spherical lesions of `diameters_mm` (1 mm voxels) placed in white matter, as deep as the
    white matter allows and at least `spacing_mm` apart; returns the new labels and each lesion's mask.
    For checking that lesions keep their size and contrast (and that none is invented)."""
    labels = labels.copy()
    depth = distance_transform_edt(labels == WM)
    coords = np.indices(labels.shape)
    masks: list[np.ndarray] = []
    occupied = np.zeros(labels.shape, bool)
    for diameter in diameters_mm:
        radius = diameter / 2
        free = (depth > radius + 1) & ~occupied
        if not free.any():
            raise ValueError(f"no white matter deep enough for a {diameter} mm lesion; use a larger phantom")
        candidates = np.argwhere(free)
        centre = candidates[len(candidates) // 2]
        ball = sum((coords[a] - centre[a]) ** 2 for a in range(3)) <= radius ** 2
        labels[ball] = LESION
        masks.append(ball)
        occupied |= sum((coords[a] - centre[a]) ** 2 for a in range(3)) <= (radius + spacing_mm) ** 2
    return labels, masks


DEMO_FACTOR = 4


def demo_volumes() -> dict[str, Volume]:
    """The demo's volumes: 'input' (the phantom's T2 in 4 mm slices), 'reference' (its 1 mm T1) and 'truth'
    (its 1 mm T2). Made, not downloaded, so the demo and Slicer's sample data work offline."""
    from .degrade import thick_slices

    phantom = make_phantom()
    truth = phantom["T2"]
    return {"input": thick_slices(truth, axis=2, factor=DEMO_FACTOR, profile="box"), "reference": phantom["T1"],
            "truth": truth}
