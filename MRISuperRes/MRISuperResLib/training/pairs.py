"""Training pairs from real scans: thick-slice and in-plane simulation, pre-interpolation, references.

Each *instance* is one scan degraded along truly high-resolution axes, pre-interpolated back onto its grid
exactly as inference does, next to its truth and (when the subject has one) another contrast as reference:
either thick slices along one axis (box or Gaussian profile), or in-plane low resolution along two axes
(k-space truncation or antialiased bicubic). Patches are cut from every plane that contains a degraded axis,
oriented with a degraded axis along rows as `MRISuperResLib.inference` orients slices (a plane with two
degraded axes is cut both ways round: the 90° rotation). With 2.5D context, a patch also carries the
pre-interpolated neighbouring slices of the same plane (clamped at the volume's ends, as at inference).
For networks supervised level by level (the progressive network), an instance also holds the *halfway*
target: the same acquisition simulated at half the factor (rounded down; the truth itself below 2×),
pre-interpolated the same way.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import rotate

from ..degrade import bicubic_downsample, kspace_truncate, thick_slices
from ..geometry import resampled_grid
from ..inference import oriented_slices, with_neighbours
from ..intensity import IntensityScale
from ..io import read_volume
from ..resample import preinterpolate
from .config import PairSpec, TrainingConfig
from .lesions import with_lesions


@dataclass
class Scan:
    truth: np.ndarray      # normalised, (k, j, i)
    reference: np.ndarray | None
    spec: PairSpec
    template: object  # the target Volume: its grid, for degrading the normalised truth


def load_scans(data_root: Path, specs: list[PairSpec]) -> list[Scan]:
    scans = []
    for spec in specs:
        target = read_volume(data_root / spec.target)
        mask = read_volume(data_root / spec.mask).array if spec.mask else None
        truth = IntensityScale.fit(target.array, mask).normalise(target.array)
        reference = None
        if spec.reference:
            ref = read_volume(data_root / spec.reference, role="reference")
            reference = IntensityScale.fit(ref.array, mask).normalise(ref.array)
        scans.append(Scan(truth, reference, spec, target))
    return scans


@dataclass
class Instance:
    truth: np.ndarray
    lr: np.ndarray
    reference: np.ndarray | None
    axes: tuple[int, ...]  # the degraded axes (0 = i, 1 = j, 2 = k)
    factor: int
    halfway: np.ndarray | None = None


@dataclass(frozen=True)
class Degradations:
    """What `degrade_instance` draws from: thick-slice factors, and how often and how much in-plane."""

    factors: tuple[int, ...] = (2, 3, 4, 5, 6)
    noise_probability: float = 0.0
    inplane_probability: float = 0.0
    inplane_factors: tuple[int, ...] = (2, 4)
    gamma_range: float = 0.0
    halfway: bool = False  # also simulate the acquisition at half the factor
    lesion_probability: float = 0.0  # of an instance holding synthetic lesions (`lesions`)

    @classmethod
    def from_config(cls, config: TrainingConfig, halfway: bool = False) -> "Degradations":
        return cls(tuple(config.factors), config.noise_probability, config.inplane_probability,
                   tuple(config.inplane_factors), config.gamma_range, halfway, config.lesion_probability)


def _gamma(array: np.ndarray, rng: random.Random, gamma_range: float) -> np.ndarray:
    """`array` (normalised, mostly in [0, 1]) raised to a random power in [1/gamma_range, gamma_range]."""
    power = float(np.exp(rng.uniform(-np.log(gamma_range), np.log(gamma_range))))
    return (np.sign(array) * np.abs(array) ** power).astype(np.float32)


def _simulate(volume, scan: Scan, rng: random.Random, degradations: Degradations):
    """One simulated low-resolution acquisition: (degrade, degraded axes, factor), where `degrade(volume,
    factor)` repeats the same simulation at any factor."""
    # Thick-slice-only configs draw no extra random number, so their pairs stay as they were.
    if degradations.inplane_probability > 0 and len(scan.spec.axes) >= 2 \
            and rng.random() < degradations.inplane_probability:
        axes = tuple(sorted(rng.sample(scan.spec.axes, 2)))
        factor = rng.choice(degradations.inplane_factors)
        method = kspace_truncate if rng.random() < 0.5 else bicubic_downsample
        return (lambda v, f: method(v, axes, f)), axes, factor
    axis = rng.choice(scan.spec.axes)
    factor = rng.choice(degradations.factors)
    profile = rng.choice(["box", "gaussian"])
    return (lambda v, f: thick_slices(v, axis, f, profile)), (axis,), factor


def degrade_instance(scan: Scan, rng: random.Random, degradations: Degradations) -> Instance:
    """Simulate a low-resolution acquisition of `scan` and pre-interpolate it back onto the truth's grid."""
    truth, reference = scan.truth, scan.reference
    # Configs without lesions draw no extra random number, so their pairs stay as they were.
    if degradations.lesion_probability > 0 and rng.random() < degradations.lesion_probability:
        truth, reference = with_lesions(truth, reference, scan.template.spacing, rng)
    # Configs without gamma draw no extra random number, so their pairs stay as they were.
    if degradations.gamma_range > 1:
        truth = _gamma(truth, rng, degradations.gamma_range)
        reference = None if reference is None else _gamma(reference, rng, degradations.gamma_range)
    volume = scan.template.with_array(truth)
    degrade, axes, factor = _simulate(volume, scan, rng, degradations)
    lr = degrade(volume, factor)
    grid = resampled_grid(lr.grid, volume.spacing)
    lr_array = lr.array
    if rng.random() < degradations.noise_probability:
        # Rician noise: magnitude of a complex signal with Gaussian noise in both channels.
        sigma = rng.uniform(0.01, 0.03)
        np_rng = np.random.default_rng(rng.randrange(1 << 30))
        lr_array = np.sqrt((lr_array + np_rng.normal(0, sigma, lr_array.shape)) ** 2
                           + np_rng.normal(0, sigma, lr_array.shape) ** 2).astype(np.float32)
    interpolated = preinterpolate(lr.with_array(lr_array), grid).array
    crop = tuple(slice(0, n) for n in interpolated.shape)
    reference = None if reference is None else reference[crop]
    halfway = None
    if degradations.halfway:
        halfway = truth[crop] if factor // 2 < 2 else preinterpolate(degrade(volume, factor // 2), grid).array[crop]
    return Instance(truth[crop], interpolated, reference, axes, factor, halfway)


def cut_patches(instance: Instance, count: int, size: int, rng: random.Random,
                shift_probability: float, max_shift: int, absent_probability: float,
                rotation_probability: float = 0.0, max_rotation: float = 0.0, context: int = 0) -> list[np.ndarray]:
    """`count` patches of shape (4 + 2 · context [+ 1], size, size): lr, truth, reference, reference mask, the
    lr's neighbouring slices (−1, +1, −2, +2, …), then the halfway target when the instance has one. The reference is misregistered, sometimes, by a shift of up
    to `max_shift` voxels and a rotation of up to `max_rotation` degrees about the slice normal."""
    shape = instance.truth.shape
    planes = [(rows, columns) for rows in (2 - axis for axis in instance.axes) for columns in range(3)
              if columns != rows and min(shape[rows], shape[columns]) >= size + 2 * max_shift]
    patches = []
    if not planes:
        return patches
    attempts = 0
    while len(patches) < count and attempts < count * 20:
        attempts += 1
        rows, columns = rng.choice(planes)
        truth = oriented_slices(instance.truth, rows, columns)
        lr = oriented_slices(instance.lr, rows, columns)
        s = rng.randrange(truth.shape[0])
        r = rng.randrange(max_shift, truth.shape[1] - size - max_shift + 1)
        c = rng.randrange(max_shift, truth.shape[2] - size - max_shift + 1)
        truth_patch = truth[s, r:r + size, c:c + size]
        if truth_patch.mean() < 0.05 and rng.random() < 0.9:
            continue  # mostly background: keep only a few
        lr_patch = lr[s, r:r + size, c:c + size]
        if instance.reference is not None and rng.random() >= absent_probability:
            reference = oriented_slices(instance.reference, rows, columns)
            dr = dc = 0
            if rng.random() < shift_probability:
                dr, dc = rng.randint(-max_shift, max_shift), rng.randint(-max_shift, max_shift)
            reference_patch = reference[s, r + dr:r + dr + size, c + dc:c + dc + size]
            # Configs without rotation draw no extra random number, so their patches stay as they were.
            if rotation_probability > 0 and rng.random() < rotation_probability:
                angle = rng.uniform(-max_rotation, max_rotation)
                reference_patch = rotate(reference_patch, angle, reshape=False, order=1, mode="nearest")
            mask_patch = np.ones_like(reference_patch)
        else:
            reference_patch = np.zeros_like(lr_patch)
            mask_patch = np.zeros_like(lr_patch)
        neighbours = with_neighbours(lr[:, r:r + size, c:c + size], s, 1, context)[0, 1:]
        halfway = [] if instance.halfway is None else \
            [oriented_slices(instance.halfway, rows, columns)[s, r:r + size, c:c + size]]
        patch = np.stack([lr_patch, truth_patch, reference_patch, mask_patch, *neighbours, *halfway]).astype(np.float32)
        if rng.random() < 0.5:
            patch = patch[:, ::-1, :]
        if rng.random() < 0.5:
            patch = patch[:, :, ::-1]
        patches.append(np.ascontiguousarray(patch))
    return patches
