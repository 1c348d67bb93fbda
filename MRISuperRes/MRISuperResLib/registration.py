"""Optional rigid registration of the reference to the input (SimpleITK, Mattes mutual information)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .volume import Volume

SAMPLING_SEED = 20261121  # fixed so that the same pair always registers the same way
SHRINK_FACTORS = (4, 2, 1)
SMOOTHING_MM = (2.0, 1.0, 0.0)
SAMPLING_SHARE = 0.2
# ITK smooths the images at full resolution for every level with a non-zero sigma (only the sampling grid is
# shrunk), and its recursive Gaussian refuses an image with fewer voxels than this along any axis.
MIN_VOXELS_TO_SMOOTH = 4
# Mutual information over 32 bins is estimated as well from 200 k random samples as from more: on val/ pairs
# moved by 10 mm or 10 degrees the found placement was as close with 20 % of a 2 M-voxel input, while on a
# 4 M-voxel input the finest level's 840 k samples per iteration made registration a fifth of a run.
MAX_SAMPLES = 200_000
# A registration that moves no corner of the input's field of view by half a voxel (the finest spacing of the
# input and target grids) is treated as "already aligned": the reference stays where it was, and the registered
# copy is neither resampled nor scored.
BARELY_MOVED_VOXELS = 0.5


class RegistrationFailed(Exception):
    """ITK could not register the pair (an image too small or too uniform for the metric); the message says why."""


def pyramid_levels(*sizes: tuple[int, ...]) -> list[tuple[int, float]]:
    """(shrink factor, smoothing mm) of each resolution level for images of voxel counts `sizes`: all three, or
    only the finest, unsmoothed one when an image has fewer than `MIN_VOXELS_TO_SMOOTH` voxels along an axis (a
    stack of two or three thick slices, which ITK could not smooth)."""
    if all(n >= MIN_VOXELS_TO_SMOOTH for size in sizes for n in size):
        return list(zip(SHRINK_FACTORS, SMOOTHING_MM))
    return [(1, 0.0)]


def sampling_shares(size: tuple[int, ...], shrinks: list[int] | tuple[int, ...] = SHRINK_FACTORS) -> list[float]:
    """The share of each level's voxels that the metric samples: `SAMPLING_SHARE`, capped at `MAX_SAMPLES`."""
    shares = []
    for shrink in shrinks:
        voxels = float(np.prod([max(1, n // shrink) for n in size]))
        shares.append(min(SAMPLING_SHARE, MAX_SAMPLES / voxels))
    return shares


def register_rigid(fixed: Volume, moving: Volume, convergence: dict | None = None) -> sitk.Euler3DTransform:
    """The rigid transform mapping points of `fixed` (the input) into `moving` (the reference); `convergence`,
    when given, receives the final metric value, the iterations of the last level and why the optimiser stopped.

    Mutual information copes with different contrasts; three resolution levels (one for a stack of two or three
    slices: `pyramid_levels`), geometric centring first.
    """
    shrinks, sigmas = (list(values) for values in zip(*pyramid_levels(fixed.grid.size, moving.grid.size)))
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
    # One thread: with two, the metric's sums came in a varying order and the same pair registered to
    # transforms 1e-3 mm apart in 21 or 22 iterations, so the same input gave different outputs. The
    # method's own thread count does not reach the metric; ITK's global default does. On a 240 x 240 x 38
    # input against a 240 x 240 x 155 reference one thread took 5.1 s, two 3.0-3.1 s.
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        result = method.Execute(fixed_image, moving_image)
    except RuntimeError as error:  # e.g. a metric histogram of zero width, from images that are nearly uniform
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = next((line.removeprefix("ITK ERROR: ").split(": ", 1)[-1] for line in lines if "ITK ERROR" in line),
                      lines[-1] if lines else "unknown error")
        raise RegistrationFailed(reason) from None
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
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
