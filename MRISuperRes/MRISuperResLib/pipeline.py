"""`superresolve`: the whole run on in-memory volumes, shared by the CLI, Python scripts and Slicer."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import NamedTuple

import numpy as np
import torch

from . import adapt as scan_adaptation
from .consistency import ProfileOperator, estimate_profile, project
from .confidence import CONFIDENCE_THRESHOLD, REGISTRATION_MARGIN, reference_agreement
from .devices import resolve_device, set_threads
from .errors import MRISuperResError
from .foreground import scan_signal_shares
from .geometry import overlap_fraction, resampled_grid, voxel_extent_along
from .inference import plane_axes, plane_factors, predict_planes
from .intensity import IntensityScale
from .models.registry import ModelRegistry, load_network
from .plan import (DEFAULT_ADAPT_SECONDS, DEFAULT_BATCH_SIZE, DEFAULT_TILE, PROFILE_BLOCK, TILE_OVERLAP, Plan,
                   check_memory, make_plan, profile_block_margin, resolve_reference_mode)
from .progress import CancelFlag, ProgressCallback, StageReporter
from .registration import (BARELY_MOVED_VOXELS, RegistrationFailed, describe_transform, largest_displacement_mm,
                           register_rigid)
from .resample import preinterpolate, resample_to_grid, slab_average
from .round_lesions import restore
from .texture import TextureSource, acquired_planes
from .validation import check_reference_is_not_input, check_scalar_volume
from .volume import AXIS_NAMES, Volume

log = logging.getLogger("mrisuperres")

# Below this share of the output covered by the reference, a reference is taken as not overlapping.
MINIMUM_REFERENCE_OVERLAP = 0.01
# A reference helps along an upsampled axis only where its voxels are at least this much shorter than the
# input's there (a quarter finer); the val/ references are 1 mm against 2-5 mm slices.
COARSE_REFERENCE_RATIO = 0.8
# Unregistered, a reference that registration would move by more than this many of the input's finest voxels
# is not used (`_misplacement`): on val/ aligned pairs measure up to 1.18 voxels, 2 mm shifts from 1.84.
MISPLACED_REFERENCE_VOXELS = 1.5
# The largest share of voxels below 0 in an image still taken for a magnitude image (`_consistent_with_input`).
MOSTLY_MAGNITUDE = 0.01


def plan_run(volume: Volume, reference: Volume | None = None, model: str | None = None,
             target_spacing=None, scale=None, planes: list[str] | None = None, device: str = "auto",
             threads: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE, tile: int = DEFAULT_TILE,
             models_dir: str | None = None, registry: ModelRegistry | None = None,
             reference_mode: str | None = None, adapt: float | None = None, self_check: bool = True,
             register_reference: bool = True) -> Plan:
    """Validate the inputs and make the plan of a run, without running it (`adapt`, `self_check`,
    `register_reference`: as `superresolve` takes them, for the time estimate)."""
    check_scalar_volume(volume, "input")
    registry = registry or ModelRegistry(models_dir)
    card = registry.get(model)
    if batch_size < 1:
        raise MRISuperResError(f"The batch size must be at least 1, not {batch_size}.")
    if tile < 4 * TILE_OVERLAP:
        raise MRISuperResError(f"The tile size must be at least {4 * TILE_OVERLAP} pixels, not {tile}.")
    if adapt is not None and not adapt >= 0:  # NaN too
        raise MRISuperResError(f"The adaptation time must be 0 seconds or more, not {adapt:g}; give --adapt SECONDS "
                               "or --no-adapt.")
    mode = resolve_reference_mode(card, reference is not None, reference_mode,
                                  [c.name for c in registry.cards.values() if c.texture_transfer])
    shares = None if card.is_interpolation else scan_signal_shares(volume.array, batch_size)
    plan = make_plan(volume.grid, card, target_spacing, scale, planes, reference is not None,
                     resolve_device(device).type, threads or torch.get_num_threads(), batch_size, tile, mode,
                     self_check, DEFAULT_ADAPT_SECONDS if adapt is None else adapt, register_reference, shares)
    if mode == "self":
        acquired_planes(plan.upsampled)
    if reference is not None:
        check_scalar_volume(reference, "reference")
        check_reference_is_not_input(volume, reference)
        # An unpaired reference only lends texture: it need not overlap the input.
        if mode != "unpaired" and overlap_fraction(plan.target, reference.grid) < MINIMUM_REFERENCE_OVERLAP:
            raise MRISuperResError(
                "The reference does not overlap the input in physical space; choose a reference of the same "
                "patient and session, or fix its origin and direction.")
    return plan


def superresolve(volume: Volume, reference: Volume | None = None, model: str | None = None,
                 target_spacing=None, scale=None, planes: list[str] | None = None, device: str = "auto",
                 threads: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE, tile: int = DEFAULT_TILE,
                 register_reference: bool = True, models_dir: str | None = None, force: bool = False,
                 progress: ProgressCallback | None = None, cancel: CancelFlag | None = None,
                 gate_reference: bool = True, reference_mode: str | None = None, adapt: float | None = None,
                 self_check: bool = True, fallback: bool = True, report: dict | None = None,
                 consistency: bool = True, round_lesions: bool = True) -> Volume:
    """Super-resolve `volume` onto the planned target grid; the input is never modified.

    `model` names an entry of the model registry (None: the registry's default); `target_spacing` is
    one or three spacings in mm, `scale` one or three factors, neither: isotropic at the finest input
    spacing. `progress` receives `ProgressEvent`s; setting `cancel` (a `threading.Event`) stops the run
    with `CancelledError`. `gate_reference` drops a reference whose edges do not match the input's (see
    `confidence`); `register_reference` registers the reference rigidly first and keeps that placement when
    its edges then match the input's better (False: never). `reference_mode` (texture-transfer models): paired, unpaired or self; by default
    paired with a reference and self without.

    Every run checks itself (`self_check`, see `adapt`): the model is scored against cubic interpolation on
    pairs made from the scan's own acquired planes, then fine-tuned on them for `adapt` seconds of work
    (None: the default budget, `plan.DEFAULT_ADAPT_SECONDS`; 0: never); the adapted weights are kept only
    when they do better on held-out slices of the scan. `fallback`: when the model still does worse than
    cubic there, return cubic interpolation. `report`, a dict, receives the estimate and the decisions.
    `consistency`: estimate the slice profile from the output and, when one the models know fits clearly,
    change the output as little as possible so that its slices, so acquired, equal the input's (see
    `consistency`). `round_lesions`: after a projection onto box slabs, give small round lesions that two
    slabs show back the contrast the slabs averaged away (`round_lesions`); False leaves them as the network
    spread them.

    >>> import numpy as np
    >>> from MRISuperResLib import Volume, superresolve
    >>> thick = Volume(np.random.rand(8, 32, 32).astype("float32"), spacing=(1.0, 1.0, 4.0))
    >>> superresolve(thick, model="cubic").array.shape
    (32, 32, 32)
    """
    return superresolve_with_confidence(
        volume, reference, model, target_spacing, scale, planes, device, threads, batch_size, tile,
        register_reference, models_dir, force, progress, cancel, gate_reference, reference_mode, adapt,
        self_check, fallback, report, consistency, round_lesions)[0]


def superresolve_with_confidence(volume: Volume, reference: Volume | None = None, model: str | None = None,
                                 target_spacing=None, scale=None, planes: list[str] | None = None,
                                 device: str = "auto", threads: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                                 tile: int = DEFAULT_TILE, register_reference: bool = True,
                                 models_dir: str | None = None, force: bool = False,
                                 progress: ProgressCallback | None = None, cancel: CancelFlag | None = None,
                                 gate_reference: bool = True, reference_mode: str | None = None,
                                 adapt: float | None = None, self_check: bool = True, fallback: bool = True,
                                 report: dict | None = None, consistency: bool = True,
                                 round_lesions: bool = True) -> tuple[Volume, Volume | None]:
    """`superresolve`, and for texture-transfer models also the confidence of the texture matches (for DAASR,
    of its reference matches) on the output grid (0: no match, 1: a perfect one; averaged over the planes);
    None for other models."""
    set_threads(threads)
    registry = ModelRegistry(models_dir)
    plan = plan_run(volume, reference, model, target_spacing, scale, planes, device, threads, batch_size, tile,
                    registry=registry, reference_mode=reference_mode, adapt=adapt, self_check=self_check,
                    register_reference=register_reference)
    check_memory(plan, force)
    log.info("plan:\n%s", plan.summary())
    torch_device = resolve_device(device)
    card = plan.model
    network = None if card.is_interpolation else load_network(registry, card, torch_device)

    report = {} if report is None else report
    report["model"] = card.name
    for warning in plan.warnings:
        StageReporter("plan", 1, progress, cancel).finish(warning, warning=True)
    if plan.warnings:
        report["warnings"] = list(plan.warnings)
    if reference is not None and not plan.uses_reference and plan.reference_mode is None:
        report["reference"] = "not used"
        StageReporter("reference", 1, progress, cancel).finish(
            f"reference not used: {'cubic interpolation' if card.is_interpolation else 'model ' + card.name} takes "
            "none; choose a model that does (see `mrisuperres models`)", warning=True)
    stage = StageReporter("interpolate", 1, progress, cancel)
    interpolated = preinterpolate(volume, plan.target)
    stage.finish()
    if network is None:
        return interpolated, None

    input_scale = IntensityScale.fit(volume.array)
    lr = input_scale.normalise(interpolated.array)
    reference_array = reference_mask = reference_native = None
    mode = plan.reference_mode
    if plan.uses_reference:
        reference_array, reference_mask, reference_native = _paired_reference(
            volume, reference, plan, lr, register_reference, gate_reference, progress, cancel, report,
            check_placement=self_check and gate_reference and not register_reference)
        if reference_array is None and mode == "paired":
            mode = _fallback_mode(plan)
    tuned_for = None
    if self_check:
        profile, clear, in_plane = _profile_of_the_scan(network, volume, input_scale, plan, lr, reference_array,
                                                        reference_mask, torch_device, progress, cancel, report)
        projected = consistency and clear and _projectable(volume, plan)
        network, use_cubic, reference_helps = _check_and_adapt(
            network, volume, input_scale, reference_native, plan, torch_device, fallback, progress, cancel, report,
            profile, projected, in_plane)
        if projected and report.get("adapted"):
            # Tuned to leave what the projection fixes to it, so the projection must follow, onto this profile.
            tuned_for = profile
        if use_cubic:
            return interpolated, _no_matches(plan) if card.maps_confidence else None
        if not reference_helps:
            reference_array = reference_mask = None
            if mode == "paired":
                mode = _fallback_mode(plan)
    del interpolated
    texture = _texture_source(mode, plan, lr, reference, torch_device, progress, cancel)

    with torch.inference_mode():
        fused, confidence = predict_planes(network, plan, lr, reference_array, reference_mask, torch_device,
                                           progress, cancel, texture)
    del lr, reference_array, reference_mask
    fused = input_scale.restore(fused, in_place=True)
    if consistency:
        fused = _consistent_with_input(volume, fused, plan, progress, cancel, report, tuned_for, round_lesions)
    result = Volume.on_grid(fused, plan.target)
    if confidence is None:
        # A texture run whose reference was dropped with no plane of its own to take texture from.
        return result, _no_matches(plan) if card.maps_confidence else None
    return result, Volume.on_grid(confidence, plan.target)


def _projectable(volume: Volume, plan: Plan) -> bool:
    """Whether the output keeps the input's grid along every axis it does not upsample, which the projection
    onto the input's slices needs."""
    return all(plan.target.size[a] == volume.array.shape[2 - a] for a in range(3) if a not in plan.upsampled)


def _consistent_with_input(volume: Volume, output: np.ndarray, plan: Plan, progress, cancel, report: dict,
                           tuned_for: str | None = None, lesions: bool = True) -> np.ndarray:
    """`output` projected onto the volumes that acquire exactly the input's slices, when the slice profile
    estimated from it is one the models know; else unchanged. `tuned_for`: adaptation learnt only what this
    profile's projection leaves, so the output is projected onto it whatever the estimate (on val/ at 2× such
    outputs, left unprojected when the estimate was not clear, lost 0.7-1.6 dB)."""
    stage = StageReporter("consistency", 1, progress, cancel)
    if not _projectable(volume, plan):
        stage.finish("slice profile not estimated: the output is resampled along an axis it does not upsample")
        return output
    estimate = estimate_profile(volume, output, plan.target.spacing, plan.upsampled)
    profile = tuned_for or estimate.profile
    report["slice_profile"] = profile
    report["slice_profile_misfits"] = {name: round(value, 4) for name, value in estimate.misfits.items()}
    if profile is None:
        stage.finish(f"{estimate.describe()}: output left as the model made it")
        return output
    # In a magnitude image (no voxel below 0) a slab acquired as 0 holds only air.
    non_negative = bool(volume.array.min() >= 0)
    projected = project(volume, output, plan.target.spacing, plan.upsampled, profile, non_negative)
    chosen = "" if profile == estimate.profile else f"; projected onto the {profile} profile the model was adapted for"
    restored = ""
    # The balls are fitted through a box, so only where the slabs were estimated to be boxes (not merely
    # projected onto the profile adaptation was tuned for), and only on a magnitude image: intensities that
    # start at 0, as the lesion-to-surround ratios it checks assume (a few voxels below 0 from a scanner's or a
    # registration's resampling, as open_ms has, 0.02 %, still count; a z-scored scan, half below 0, does not).
    if lesions and profile == estimate.profile == "box" and float(np.mean(volume.array < 0)) <= MOSTLY_MAGNITUDE:
        projected, balls = _restore_round_lesions(volume, projected, plan, stage.check_cancel)
        if balls is not None:
            report["round_lesions"] = len(balls)
            restored = f"; {len(balls)} small round lesion{'' if len(balls) == 1 else 's'} restored within the slabs"
    stage.finish(f"{estimate.describe()}: output made consistent with the acquired slices{chosen}{restored}")
    return projected


def _restore_round_lesions(volume: Volume, output: np.ndarray, plan: Plan, cancelled):
    """`output` with the small round lesions of the input's box slabs restored (`round_lesions`), and the balls
    fitted; None instead of the balls where the slabs are not disjoint boxes along one axis."""
    slabs = ProfileOperator.between("box", volume, output.shape, plan.target.spacing, plan.upsampled).disjoint_slabs()
    if slabs is None:
        return output, None
    axis_np, slab_of = slabs
    return restore(output, volume.array, slab_of, axis_np, tuple(plan.target.spacing[::-1]), cancelled)


def _no_matches(plan: Plan) -> Volume:
    """The confidence map of a run that matched nothing (the reference dropped, or cubic interpolation): 0
    everywhere, so that a map asked for still comes."""
    return Volume.on_grid(np.zeros(plan.target.shape_kji, np.float32), plan.target)


def _paired_reference(volume: Volume, reference: Volume, plan: Plan, lr, register_reference: bool,
                      gate_reference: bool, progress, cancel, report: dict, check_placement: bool = False):
    """The reference normalised on the target grid, its coverage mask, and the reference normalised on the
    input's own grid (for the self-check's pairs); (None, None, None) when the gate finds that its edges do
    not match the input's.

    `register_reference`: register it rigidly and keep the registered placement when its edges then match the
    input's better by `REGISTRATION_MARGIN`. Measured on val/: a reference 2 mm or 3° off passes the gate and
    gives +0.2 to +0.6 dB as it is, +1.6 dB registered; an aligned one loses 0.07 dB if registration moves it.

    With the gate on, a reference no sharper than the input along any upsampled axis is dropped first: it
    has no detail to give there, and the network trusts its blur (`_coarse_reference`).

    `check_placement` (the self-check of a run that does not register): registration is measured, not
    applied, and a reference it would move by more than `MISPLACED_REFERENCE_VOXELS` input voxels is
    dropped: on val/ such references (2 mm or 3 degrees off) passed the gate and the self-check's reference
    check, yet cost the thin networks up to 0.81 dB; aligned pairs measure 0.74-1.18 mm, the 2 mm shifts
    1.84-2.60 mm."""
    stage = StageReporter("reference", 1, progress, cancel)
    coarse = _coarse_reference(volume, reference, plan) if gate_reference else None
    if coarse:
        report["reference"] = "ignored: no sharper than the input along the upsampled axes"
        stage.finish(f"reference ignored: it is no sharper than the input along the axes being super-resolved "
                     f"({coarse}), so it has no detail to give there; use a reference acquired at high resolution "
                     "along them (a 3D scan, or slices in another orientation)", warning=True)
        return None, None, None

    def on_target_grid(transform):
        resampled, mask = resample_to_grid(reference, plan.target, transform)
        return IntensityScale.fit(resampled.array, mask.array).normalise(resampled.array), mask.array

    def agreement_of(array, mask) -> float:
        return float(reference_agreement(lr, array, mask, plan.factors[::-1]))

    reference_array, reference_mask = on_target_grid(None)
    agreement = agreement_of(reference_array, reference_mask) if gate_reference or register_reference else None
    transform = None
    if register_reference:
        registration = StageReporter("register", 1, progress, cancel)
        convergence: dict = {}
        try:
            transform = register_rigid(volume, reference, convergence)
        except RegistrationFailed as failure:
            # The reference stays where its header puts it; the gate and the self-check still judge it.
            report["registration"] = {"kept": False, "failed": str(failure), "agreement_before": round(agreement, 3)}
            registration.finish(f"reference left where it was: registration failed in ITK ({failure})", warning=True)
    if transform is not None:
        moved_mm = largest_displacement_mm(transform, volume)
        fitted = (f"mutual information {convergence['metric']:.3f} after {convergence['iterations']} "
                  f"iterations at the finest level")
        voxel_mm = min(min(volume.spacing), min(plan.target.spacing))  # the reference is resampled onto the target
        if moved_mm < BARELY_MOVED_VOXELS * voxel_mm:
            # Resampling and scoring the registered copy would cost as much as registering, for a move
            # that cannot change the match (on val/ no aligned pair's registration was ever kept).
            report["registration"] = {"kept": False, "moved_mm": round(moved_mm, 3),
                                      "agreement_before": round(agreement, 3), **convergence}
            registration.finish(f"reference left where it was: registration moved it by at most {moved_mm:.2f} mm, "
                                f"under {BARELY_MOVED_VOXELS:g} of a {voxel_mm:.2f} mm voxel ({fitted})")
        else:
            registered_array, registered_mask = on_target_grid(transform)
            registered_agreement = agreement_of(registered_array, registered_mask)
            kept = registered_agreement >= agreement + REGISTRATION_MARGIN
            report["registration"] = {"kept": kept, "moved_mm": round(moved_mm, 3),
                                      "agreement_before": round(agreement, 3),
                                      "agreement_after": round(registered_agreement, 3), **convergence}
            change = f"edge agreement {agreement:.2f} -> {registered_agreement:.2f}; {fitted}"
            if kept:
                reference_array, reference_mask, agreement = registered_array, registered_mask, registered_agreement
                # Shown even with --quiet: it moved the reference.
                registration.finish(f"reference registered ({change}): {describe_transform(transform)}",
                                    warning=True)
            else:
                registration.finish(f"reference left where it was: registration did not improve the match "
                                    f"by the {REGISTRATION_MARGIN:g} it takes to move it ({change})")
            del registered_array, registered_mask
    message, ignored = "", False
    if gate_reference:
        report["reference_agreement"] = round(agreement, 3)
        if agreement < CONFIDENCE_THRESHOLD:
            ignored = True
            reference_array, reference_mask = None, None
            message = (f"reference ignored: its edges do not match the input's (agreement {agreement:.2f} < "
                       f"{CONFIDENCE_THRESHOLD}{', even after rigid registration' if register_reference else ''}); "
                       + ("check that it is the same patient and body part" if register_reference else
                          "check that it is the same patient, or let it be registered (without --no-register-reference)"))
        else:
            message = f"reference used (edge agreement {agreement:.2f})"
    misplaced = ""
    if reference_array is not None and check_placement:
        misplaced = _misplacement(volume, reference, report)
        if misplaced:
            reference_array = reference_mask = None
            message = (f"reference not used: {misplaced}; unregistered, a reference that far off costs more than it "
                       "gives; let it be registered (without --no-register-reference)")
    reference_native = None
    if reference_array is not None:
        # As the input's own slices see it: averaged over each thick slab. A sharp sample at the slab centre
        # would show detail the input's slices do not have, and the self-check would count it as an error.
        reference_native = slab_average(Volume.on_grid(reference_array * reference_mask, plan.target),
                                        volume.grid).array
    report["reference"] = ("ignored by the gate" if ignored else
                           "dropped: misplaced and not registered" if misplaced else "used")
    stage.finish(message, warning=ignored or bool(misplaced))
    return reference_array, reference_mask, reference_native


def _misplacement(volume: Volume, reference: Volume, report: dict) -> str:
    """Where registration would move the reference, measured and not applied: why it is too far off to use
    unregistered, or "" (also when registration fails: the check cannot tell then)."""
    try:
        transform = register_rigid(volume, reference)
    except RegistrationFailed:
        return ""
    moved_mm = largest_displacement_mm(transform, volume)
    limit_mm = MISPLACED_REFERENCE_VOXELS * min(volume.spacing)
    report["placement_error_mm"] = round(moved_mm, 3)
    if moved_mm <= limit_mm:
        return ""
    return (f"registration, measured but not applied, would move it by up to {moved_mm:.1f} mm "
            f"(more than {limit_mm:.2f} mm, {MISPLACED_REFERENCE_VOXELS:g} input voxels): {describe_transform(transform)}")


def _profile_of_the_scan(network, volume: Volume, input_scale: IntensityScale, plan: Plan, lr: np.ndarray,
                         reference: np.ndarray | None, reference_mask: np.ndarray | None, device: torch.device,
                         progress, cancel, report: dict) -> tuple[str, bool, bool]:
    """The slice profile the scan's own pairs are coarsened with: the nearer of box and Gaussian
    (`consistency.estimate_profile`) given the pretrained model's output on a block at the centre of the scan
    (`PROFILE_BLOCK` voxels along each axis it does not upsample, all of every upsampled one); whether it is
    clear enough that the consistency step will likely project onto it; and whether the input rather looks
    coarse in-plane (two or more upsampled axes, and `ProfileEstimate.k_space_truncated`), which no slice
    profile mimics. Box pairs taught
    a scan of Gaussian slices the wrong blur: on val/ (4x Gaussian, no reference) adaptation then cost 0.19 dB
    (BraTS t2w) and 0.71 dB (openms T2) while its own pairs said it helped."""
    if plan.model.texture_transfer:
        return "box", False, False
    stage = StageReporter("check", 1, progress, cancel)
    margin = profile_block_margin(getattr(network, "context", 0))
    block, inner = [slice(None)] * 3, [slice(None)] * 3
    for axis in range(3):
        if axis in plan.upsampled:
            continue
        n = lr.shape[2 - axis]
        size = min(n, PROFILE_BLOCK + 2 * margin)
        first = (n - size) // 2
        block[2 - axis] = slice(first, first + size)
        keep = min(margin, (size - 1) // 2)  # the block's edge slices see clamped neighbours: left out
        inner[2 - axis] = slice(keep, size - keep)
    block, inner = tuple(block), tuple(inner)
    with torch.inference_mode():
        output, _ = predict_planes(network, plan, np.ascontiguousarray(lr[block]),
                                   None if reference is None else np.ascontiguousarray(reference[block]),
                                   None if reference_mask is None else np.ascontiguousarray(reference_mask[block]),
                                   device)
    # along the axes it does not upsample the target grid is the input's, so the same block cuts both
    source = Volume(input_scale.normalise(volume.array[block][inner]), volume.spacing)
    estimate = estimate_profile(source, np.ascontiguousarray(output[inner]), plan.target.spacing, plan.upsampled)
    # Unlike the projection, no margin: openms T2's Gaussian slices were a close call on the block.
    profile = estimate.closest_projected
    report["pairs_profile"] = profile
    # A profile the estimate did not single out is still the closest of those the pairs can take: say so.
    chosen = "" if estimate.profile == profile else ", the closest of the projected ones"
    stage.finish(f"the scan's own pairs are coarsened with a {profile} profile{chosen}: {estimate.describe()}, "
                 f"from the model on {' × '.join(str(n) for n in output[inner].shape[::-1])} voxels at the scan's centre")
    # Two or more upsampled axes make an in-plane run (as `plan.make_plan` judges the factors); a thick-slice
    # input whose block happens to fit a sinc best is still thick-sliced.
    in_plane = len(plan.upsampled) > 1 and estimate.k_space_truncated
    return profile, estimate.profile == profile, in_plane


def _check_and_adapt(network, volume: Volume, input_scale: IntensityScale, reference_native, plan: Plan,
                     device: torch.device, fallback: bool, progress, cancel, report: dict, profile: str = "box",
                     projected: bool = False, in_plane: bool = False):
    """The self-check, the reference check, adaptation for the plan's steps (none with `adapt=0`) and the
    fallback decision: (network, use cubic, keep the reference).

    `projected`: the output will be made consistent with the input's slices, so the pairs score, and
    fine-tuning learns, only the error that step leaves (`adapt.ScanPairs.projection`): the estimate is of the
    output a user gets, and fine-tuning does not spend its steps on what the projection fixes anyway (on val/
    +0.00 to +0.07 dB per run, one case −0.03: README, *Validation*).

    `in_plane`: the input looks coarse in-plane (k-space truncated) rather than thick-sliced. Its pairs,
    coarsened through its slices with a slice profile, still serve the check, but fine-tuning on them is
    skipped as on pairs shaped unlike inference's, unless the model loses to cubic there
    (`_adaptation_mismatch`).

    The reference check scores the model on the scan's own held-out pairs with the reference and without it
    (blank, as the networks see "none"), and drops the reference unless it helps there: a reference that is
    a few mm or degrees off, or of a contrast relation the model never saw, passes the edge gate but costs
    PSNR (measured on val/: README, *A reference that does not fit*)."""
    stage = StageReporter("check", 1, progress, cancel)
    scan = input_scale.normalise(volume.array)

    def draw(reference, count):
        return scan_adaptation.scan_pairs(scan, volume, plan.upsampled, max(plan.factors), reference,
                                          getattr(network, "context", 0), count=count, run_planes=plan.planes,
                                          profile=profile, projected=projected)

    pairs, why = draw(reference_native, scan_adaptation.PAIRS if reference_native is None
                      else scan_adaptation.PAIRS_WITH_REFERENCE)
    if pairs is None:
        report["self_check"] = f"skipped: {why}"
        stage.finish(f"self-check skipped: {why}")
        return network, False, True
    held_out = pairs.subset(pairs.holdout)
    texture_transfer = plan.model.texture_transfer
    if texture_transfer and plan.reference_mode == "paired" and reference_native is not None:
        held_out = held_out.with_paired_texture(network.texture.project, device)
    model_psnr, cubic_psnr = scan_adaptation.score(network, held_out, device)
    reference_helps = True
    if reference_native is not None:
        without_psnr, _ = scan_adaptation.score(network, held_out.without_reference(), device)
        reference_helps = bool(model_psnr > without_psnr + scan_adaptation.REFERENCE_MARGIN_DB)
        report["reference_gain_db"] = round(float(model_psnr - without_psnr), 3)
        if not reference_helps:
            # From here on the run is one without a reference, on the pairs such a run draws (the first of them
            # the patches just scored, with a blank reference).
            pairs, _ = draw(None, scan_adaptation.PAIRS)
            held_out = pairs.subset(pairs.holdout)
            model_psnr, cubic_psnr = scan_adaptation.score(network, held_out, device)
            report["reference"] = "dropped by the self-check"
            StageReporter("check", 1, progress, cancel).finish(
                f"reference not used: on this scan's own planes the model does {report['reference_gain_db']:+.2f} dB "
                "with it against without it (a reference a few mm or degrees off, or a contrast relation the model "
                "was not trained on); "
                + ("check that it is the same patient and session" if "registration" in report else
                   "let it be registered (without --no-register-reference), or check that it is the same session"),
                warning=True)
    gain = float(model_psnr - cubic_psnr)
    report.update(self_check="done", estimated_gain_db=round(gain, 3), self_check_pairs=len(held_out),
                  self_check_after_consistency=held_out.projection is not None)
    message = f"estimated gain over cubic on this scan's own acquired planes: {gain:+.2f} dB"
    if texture_transfer:
        # Self or unpaired texture from the scan's own planes would hold these pairs' truth: checked without.
        report["self_check_texture"] = "none" if held_out.texture is None else "paired"
        if held_out.texture is None:
            message += " (the network checked without texture)"
    if gain < 0:
        message += " (the model does worse than interpolation here)"
    stage.finish(message, warning=gain < 0)
    steps = plan.adapt_steps if pairs.has_reference else plan.adapt_steps_without_reference
    if texture_transfer:
        report["adaptation"] = "not available for texture-transfer models"
    mismatch = _adaptation_mismatch(pairs, in_plane) if steps else None
    if mismatch:
        # One that does worse than cubic here would otherwise give way to cubic: on unlike pairs a model that
        # never saw spines gained (README, *Leave one anatomy out*).
        if gain < 0:
            if mismatch.no_pair_like_inference:
                pairs = replace(pairs, like_inference=None)
            report["adaptation"] = f"on {mismatch.adapted_on}, since the model loses to cubic"
            StageReporter("check", 1, progress, cancel).finish(
                f"adapting on this scan's own planes although {mismatch.why}: the pretrained model does worse than "
                "interpolation here, and cubic interpolation is the alternative")
        else:
            steps = 0
            report["adaptation"] = f"skipped: {mismatch.skipped}"
            StageReporter("check", 1, progress, cancel).finish(
                f"not adapted: {mismatch.why}; the pretrained weights are used")
    if steps:
        adapted = scan_adaptation.fine_tune(network, pairs, steps, device, progress=progress, cancel=cancel)
        adapted_psnr, _ = scan_adaptation.score(adapted, held_out, device)
        kept = bool(adapted_psnr > model_psnr + scan_adaptation.KEEP_MARGIN_DB)
        report.update(adapted=kept, adaptation_steps=steps, adapted_gain_db=round(float(adapted_psnr - cubic_psnr), 3))
        StageReporter("check", 1, progress, cancel).finish(
            f"adapted for {steps} steps: {adapted_psnr - cubic_psnr:+.2f} dB over cubic on held-out pairs "
            f"against {gain:+.2f} dB before; " + ("adapted weights kept" if kept else "pretrained weights kept"))
        if kept:
            network, gain = adapted, adapted_psnr - cubic_psnr
    use_cubic = bool(fallback and gain < 0)
    report["fell_back_to_cubic"] = use_cubic
    if use_cubic:
        StageReporter("check", 1, progress, cancel).finish(
            f"the model does worse than cubic interpolation on this scan ({gain:+.2f} dB): the output is cubic "
            "interpolation (turn this off with --no-fallback)", warning=True)
    return network, use_cubic, reference_helps


class AdaptationMismatch(NamedTuple):
    """Why fine-tuning on the scan's own pairs would teach what inference does not ask, worded for the report
    and the progress line."""

    adapted_on: str  # what the pairs are, for the report when adapted on anyway
    skipped: str     # the report's reason when not adapted
    why: str         # the progress line's reason
    # No pair is shaped like the inference slices: adapted on anyway, fine-tuning must take them all.
    no_pair_like_inference: bool = False


def _adaptation_mismatch(pairs, in_plane: bool) -> AdaptationMismatch | None:
    """Why fine-tuning on the scan's own pairs would teach what inference does not ask, or None.

    - No pair shaped like the inference slices: e.g. a 0.9 x 0.9 x 5 mm spine thick along a 0.9 mm axis, whose
      only pairs have the thick axis along their columns while its one plane has the sharp 0.9 mm axis there;
      fine-tuning on them cost a model that knew the anatomy 0.2-0.3 dB.
    - An input coarse in-plane: its pairs coarsen a sharp axis with a slice profile, not as it was made coarse.
      On val/'s brains at 2x in-plane adapting cost 0.18 dB on average without the reference and 0.11 with
      it (4x: 0.01), and 0.28 on the lumbar spine of real_lr/; pairs made by k-space truncation instead helped
      there (+0.25) but, through the val/ brains' softer slice axis, told the check that the model lost to
      cubic on openms T2 (README, *Validation*, "In-plane inputs")."""
    if not bool(pairs.for_fine_tuning.any()):
        return AdaptationMismatch(
            "pairs shaped unlike its inference slices",
            "the scan's own planes give no pairs shaped like its inference slices",
            "this scan's own planes give no pairs whose columns run along the kind of axis (sharp or upsampled) "
            "its planes have", no_pair_like_inference=True)
    if in_plane:
        return AdaptationMismatch(
            "pairs coarsened unlike its input, which looks coarse in-plane",
            "the input looks coarse in-plane (k-space truncated), unlike the pairs the scan's own planes give",
            "the input looks coarse in-plane (k-space truncated), while the pairs this scan's own planes give "
            "are coarsened through its slices")
    return None


def _coarse_reference(volume: Volume, reference: Volume, plan: Plan) -> str:
    """Why the reference cannot sharpen the input (its voxels reach as far as the input's, or farther, along
    every upsampled axis: e.g. 5.5 mm axial slices for 5.5 mm axial input), or "" when it can along one.

    The self-check cannot see this: its pairs coarsen the input's sharp axes, along which such a reference
    is sharp. On val/ (`edsr-large` as users run it, 4x thick) the paired reference made 4x thick along the
    input's own thick axis cost 0.74 dB on BraTS t2w and 0.18 on openms T2 and gained 0.32 on openms FLAIR
    (mean -0.20) while the check credited it +1.3 to +2.0 dB; README, *A reference that does not fit*."""
    reasons = []
    for axis in plan.upsampled:
        extent = voxel_extent_along(reference.grid, volume.grid.direction[:, axis])
        if extent < COARSE_REFERENCE_RATIO * volume.spacing[axis]:
            return ""
        reasons.append(f"{AXIS_NAMES[axis]}: {extent:.2f} mm against the input's {volume.spacing[axis]:.2f} mm")
    return "; ".join(reasons)


def _fallback_mode(plan: Plan) -> str | None:
    """After the gate dropped a paired reference: texture from the input's own planes, if it has any."""
    if "self" in plan.model.supported_reference_modes:
        try:
            acquired_planes(plan.upsampled)
            return "self"
        except MRISuperResError:
            pass
    return None


def _texture_source(mode: str | None, plan: Plan, lr, reference: Volume | None, device: torch.device,
                    progress, cancel) -> TextureSource | None:
    if mode is None:
        return None
    stage = StageReporter("texture", 1, progress, cancel)
    if mode == "paired":
        source = TextureSource.paired(device=device)
    elif mode == "unpaired":
        # Its own orientation and extent, at the output's spacing, so that its texture has the output's scale.
        own_grid = resampled_grid(reference.grid, plan.target.spacing)
        resampled, mask = resample_to_grid(reference, own_grid)
        normalised = IntensityScale.fit(resampled.array, mask.array).normalise(resampled.array)
        source = TextureSource.unpaired(normalised, device=device)
    else:
        source = TextureSource.self_reference(lr, plan.upsampled, device=device)
    source.prepare([plane_factors(plan, plane_axes(p, plan.upsampled)) for p in plan.planes])
    stage.finish(f"texture transfer: {mode} reference")
    return source
