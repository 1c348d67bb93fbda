"""Optional rigid registration of the reference to the input (SimpleITK, Mattes mutual information)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .volume import Volume

SAMPLING_SEED = 20261121  # fixed so that the same pair always registers the same way
SHRINK_FACTORS = (4, 2, 1)
SMOOTHING_MM = (2.0, 1.0, 0.0)
SAMPLING_SHARE = 0.2
# ITK's recursive Gaussian smoothing refuses an image with fewer voxels than this along any axis, at any level.
MIN_VOXELS_PER_AXIS = 4
# Mutual information over 32 bins is estimated as well from 200 k random samples as from more: on val/ pairs
# moved by 10 mm or 10 degrees the found placement was as close with 20 % of a 2 M-voxel input, while on a
# 4 M-voxel input the finest level's 840 k samples per iteration made registration a fifth of a run.
MAX_SAMPLES = 200_000
# A registration that moves no corner of the input's field of view by half a voxel (the finest spacing of the
# input and target grids) is treated as "already aligned": the reference stays where it was, and the registered
# copy is neither resampled nor scored.
BARELY_MOVED_VOXELS = 0.5


def pyramid_levels(*sizes: tuple[int, ...]) -> list[tuple[int, float]]:
    """(shrink factor, smoothing mm) of the resolution levels at which every axis of every image (voxel counts
    `sizes`) keeps `MIN_VOXELS_PER_AXIS` voxels: a short stack of slices drops the coarser levels; empty when even
    the full resolution is too small to register."""
    return [(shrink, sigma) for shrink, sigma in zip(SHRINK_FACTORS, SMOOTHING_MM)
            if all(max(1, n // shrink) >= MIN_VOXELS_PER_AXIS for size in sizes for n in size)]


def too_small_to_register(fixed: Volume, moving: Volume) -> str | None:
    """Why the pair cannot be registered (an axis too short), or None."""
    if pyramid_levels(fixed.grid.size, moving.grid.size):
        return None
    role, grid = ("input", fixed.grid) if min(fixed.grid.size) < MIN_VOXELS_PER_AXIS else ("reference", moving.grid)
    return (f"the {role} has only {min(grid.size)} voxels along an axis, fewer than the {MIN_VOXELS_PER_AXIS} "
            "registration needs")


def sampling_shares(size: tuple[int, ...], shrinks: tuple[int, ...] = SHRINK_FACTORS) -> list[float]:
    """The share of each level's voxels that the metric samples: `SAMPLING_SHARE`, capped at `MAX_SAMPLES`."""
    shares = []
    for shrink in shrinks:
        voxels = float(np.prod([max(1, n // shrink) for n in size]))
        shares.append(min(SAMPLING_SHARE, MAX_SAMPLES / voxels))
    return shares


def register_rigid(fixed: Volume, moving: Volume, convergence: dict | None = None) -> sitk.Euler3DTransform:
    """The rigid transform mapping points of `fixed` (the input) into `moving` (the reference); `convergence`,
    when given, receives the final metric value, the iterations of the last level and why the optimiser stopped.

    Mutual information copes with different contrasts; three resolution levels (fewer for a short stack of
    slices: `pyramid_levels`), geometric centring first.
    """
    levels = pyramid_levels(fixed.grid.size, moving.grid.size)
    if not levels:
        raise ValueError(f"cannot register: {too_small_to_register(fixed, moving)}")
    shrinks, sigmas = (list(values) for values in zip(*levels))
    fixed_image = sitk.Cast(fixed.to_sitk(), sitk.sitkFloat32)
    moving_image = sitk.Cast(moving.to_sitk(), sitk.sitkFloat32)
    initial = sitk.CenteredTransformInitializer(fixed_image, moving_image, sitk.Euler3DTransform(),
                                                sitk.CenteredTransformInitializerFilter.GEOMETRY)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentagePerLevel(sampling_shares(fixed_image.GetSize(), shrinks), SAMPLING_SEED)
    method.SetInterpolator(sitk.sitkLinear)
    # By default the metric first computes a gradient image of the whole (smoothed) moving and fixed image at
    # every level; we sample at most 200 k points, so gradients at those points alone are far cheaper: the
    # benchmark pair registers in 9.6 s instead of 21.6 s (one thread) to the same metric value.
    method.SetMetricUseMovingImageGradientFilter(False)
    method.SetMetricUseFixedImageGradientFilter(False)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=200,
                                                    relaxationFactor=0.5)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(shrinks)
    method.SetSmoothingSigmasPerLevel(sigmas)
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(initial, inPlace=False)
    result = method.Execute(fixed_image, moving_image)
    if convergence is not None:
        convergence.update(metric=float(method.GetMetricValue()), iterations=int(method.GetOptimizerIteration()),
                           stop=method.GetOptimizerStopConditionDescription())
    # Execute wraps the optimised Euler transform in a composite; unwrap it for printing and reuse.
    return sitk.Euler3DTransform(sitk.CompositeTransform(result).GetNthTransform(0))


def largest_displacement_mm(transform: sitk.Transform, volume: Volume) -> float:
    """How far `transform` moves any corner of `volume`'s field of view (mm); for a rigid transform no point
    inside moves farther than the farthest corner."""
    return max(float(np.linalg.norm(np.subtract(transform.TransformPoint(tuple(map(float, p))), p)))
               for p in volume.grid.corners())


def describe_transform(transform: sitk.Euler3DTransform) -> str:
    angles = np.degrees(transform.GetParameters()[:3])
    translation = transform.GetTranslation()
    return ("rotation " + " ".join(f"{a:+.2f}°" for a in angles)
            + ", translation " + " ".join(f"{t:+.2f}" for t in translation) + " mm (LPS)")
