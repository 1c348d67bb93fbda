"""`superresolve`: the whole run on in-memory volumes, shared by the CLI, Python scripts and Slicer."""

from __future__ import annotations

import logging

import torch

from .confidence import CONFIDENCE_THRESHOLD, reference_agreement
from .devices import resolve_device, set_threads
from .errors import MRISuperResError
from .geometry import overlap_fraction, resampled_grid
from .inference import plane_axes, plane_factors, predict_planes
from .intensity import IntensityScale
from .models.registry import ModelRegistry, load_network
from .plan import DEFAULT_TILE, TILE_OVERLAP, Plan, check_memory, make_plan, resolve_reference_mode
from .progress import CancelFlag, ProgressCallback, StageReporter
from .registration import describe_transform, register_rigid
from .resample import preinterpolate, resample_to_grid
from .texture import TextureSource, acquired_planes
from .validation import check_reference_is_not_input, check_scalar_volume
from .volume import Volume

log = logging.getLogger("mrisuperres")

# Below this share of the output covered by the reference, a reference is taken as not overlapping.
MINIMUM_REFERENCE_OVERLAP = 0.01


def plan_run(volume: Volume, reference: Volume | None = None, model: str | None = None,
             target_spacing=None, scale=None, planes: list[str] | None = None, device: str = "auto",
             threads: int | None = None, batch_size: int = 8, tile: int = DEFAULT_TILE,
             models_dir: str | None = None, registry: ModelRegistry | None = None,
             reference_mode: str | None = None) -> Plan:
    """Validate the inputs and make the plan of a run, without running it."""
    check_scalar_volume(volume, "input")
    registry = registry or ModelRegistry(models_dir)
    card = registry.get(model)
    if batch_size < 1:
        raise MRISuperResError(f"The batch size must be at least 1, not {batch_size}.")
    if tile < 4 * TILE_OVERLAP:
        raise MRISuperResError(f"The tile size must be at least {4 * TILE_OVERLAP} pixels, not {tile}.")
    mode = resolve_reference_mode(card, reference is not None, reference_mode,
                                  [c.name for c in registry.cards.values() if c.texture_transfer])
    plan = make_plan(volume.grid, card, target_spacing, scale, planes, reference is not None,
                     resolve_device(device).type, threads or torch.get_num_threads(), batch_size, tile, mode)
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
                 threads: int | None = None, batch_size: int = 8, tile: int = DEFAULT_TILE,
                 register_reference: bool = False, models_dir: str | None = None, force: bool = False,
                 progress: ProgressCallback | None = None, cancel: CancelFlag | None = None,
                 gate_reference: bool = True, reference_mode: str | None = None) -> Volume:
    """Super-resolve `volume` onto the planned target grid; the input is never modified.

    `model` names an entry of the model registry (None: the registry's default); `target_spacing` is
    one or three spacings in mm, `scale` one or three factors, neither: isotropic at the finest input
    spacing. `progress` receives `ProgressEvent`s; setting `cancel` (a `threading.Event`) stops the run
    with `CancelledError`. `gate_reference` drops a reference whose edges do not match the input's (see
    `confidence`). `reference_mode` (texture-transfer models): paired, unpaired or self; by default
    paired with a reference and self without.

    >>> import numpy as np
    >>> from MRISuperResLib import Volume, superresolve
    >>> thick = Volume(np.random.rand(8, 32, 32).astype("float32"), spacing=(1.0, 1.0, 4.0))
    >>> superresolve(thick, model="cubic").array.shape
    (32, 32, 32)
    """
    return superresolve_with_confidence(
        volume, reference, model, target_spacing, scale, planes, device, threads, batch_size, tile,
        register_reference, models_dir, force, progress, cancel, gate_reference, reference_mode)[0]


def superresolve_with_confidence(volume: Volume, reference: Volume | None = None, model: str | None = None,
                                 target_spacing=None, scale=None, planes: list[str] | None = None,
                                 device: str = "auto", threads: int | None = None, batch_size: int = 8,
                                 tile: int = DEFAULT_TILE, register_reference: bool = False,
                                 models_dir: str | None = None, force: bool = False,
                                 progress: ProgressCallback | None = None, cancel: CancelFlag | None = None,
                                 gate_reference: bool = True, reference_mode: str | None = None
                                 ) -> tuple[Volume, Volume | None]:
    """`superresolve`, and for texture-transfer models also the confidence of the texture matches on the
    output grid (0: no match, 1: a perfect one; averaged over the planes); None for other models."""
    set_threads(threads)
    registry = ModelRegistry(models_dir)
    plan = plan_run(volume, reference, model, target_spacing, scale, planes, device, threads, batch_size, tile,
                    registry=registry, reference_mode=reference_mode)
    check_memory(plan, force)
    log.info("plan:\n%s", plan.summary())
    torch_device = resolve_device(device)
    card = plan.model
    network = None if card.is_interpolation else load_network(registry, card, torch_device)

    stage = StageReporter("interpolate", 1, progress, cancel)
    interpolated = preinterpolate(volume, plan.target)
    stage.finish()
    if network is None:
        return interpolated, None

    input_scale = IntensityScale.fit(volume.array)
    lr = input_scale.normalise(interpolated.array)
    del interpolated
    reference_array = reference_mask = None
    mode = plan.reference_mode
    if plan.uses_reference:
        reference_array, reference_mask = _paired_reference(volume, reference, plan, lr, register_reference,
                                                            gate_reference, progress, cancel)
        if reference_array is None and mode == "paired":
            mode = _fallback_mode(plan)
    texture = _texture_source(mode, plan, lr, reference, torch_device, progress, cancel)

    with torch.inference_mode():
        fused, confidence = predict_planes(network, plan, lr, reference_array, reference_mask, torch_device,
                                           progress, cancel, texture)
    del lr, reference_array, reference_mask
    result = Volume.on_grid(input_scale.restore(fused, in_place=True), plan.target)
    return result, None if confidence is None else Volume.on_grid(confidence, plan.target)


def _paired_reference(volume: Volume, reference: Volume, plan: Plan, lr, register_reference: bool,
                      gate_reference: bool, progress, cancel):
    """The reference normalised on the target grid and its coverage mask, or (None, None) when the gate
    finds that its edges do not match the input's."""
    transform = None
    if register_reference:
        stage = StageReporter("register", 1, progress, cancel)
        transform = register_rigid(volume, reference)
        stage.finish(f"reference registered: {describe_transform(transform)}")
    stage = StageReporter("reference", 1, progress, cancel)
    resampled, mask = resample_to_grid(reference, plan.target, transform)
    reference_mask = mask.array
    reference_array = IntensityScale.fit(resampled.array, reference_mask).normalise(resampled.array)
    del resampled, mask
    message = ""
    if gate_reference:
        agreement = reference_agreement(lr, reference_array, reference_mask, plan.factors[::-1])
        if agreement < CONFIDENCE_THRESHOLD:
            reference_array, reference_mask = None, None
            message = (f"reference ignored: its edges do not match the input's (agreement {agreement:.2f} < "
                       f"{CONFIDENCE_THRESHOLD}); check that it is the same patient, or register it")
        else:
            message = f"reference used (edge agreement {agreement:.2f})"
    stage.finish(message)
    return reference_array, reference_mask


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
