"""How much does per-scan adaptation add, and which way of fine-tuning adds most in the same seconds?

For each val/ case at 4× thick slices, the scan's own pairs are made as a user's run makes them
(`adapt.scan_pairs`, the reference as the pipeline prepares it), the default model is fine-tuned in each
variant, and the result is scored against the truth on every eighth slice of each planned plane (the
network's slices before the planes are fused: a fraction of a full run's cost, and the same comparison
between variants). Variants: `whole` fine-tunes every parameter (the product with a reference);
`later-half` only EDSR's later half (`adapt.adapted_parameters`; the product without a reference).
Steps are the plan's for `--seconds` of work on 2 threads at each variant's own cost per step
(`plan.LATER_HALF_SPEEDUP`).

    python scripts/adaptation_ablation.py --threads 1 --variants whole later-half

One JSON line per case and variant: true and held-out gain over cubic, and what adaptation added to each.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import _paths  # noqa: F401
from evaluate import CASES, REPO, Case, crop_to
from MRISuperResLib import adapt
from MRISuperResLib.consistency import profile_matrix, range_projector
from MRISuperResLib.devices import set_threads
from MRISuperResLib.inference import plane_axes, with_neighbours
from MRISuperResLib.intensity import IntensityScale
from MRISuperResLib.metrics import foreground_mask
from MRISuperResLib.models.registry import ModelRegistry, load_network
from MRISuperResLib.pipeline import _paired_reference, plan_run
from MRISuperResLib.plan import adaptation_steps
from MRISuperResLib.resample import preinterpolate

SLICE_STRIDE = 8
# `projected`: the pairs count only the error the consistency step leaves (`adapt.ScanPairs.projection`).
VARIANTS = {"whole": {"whole_network": True}, "later-half": {"whole_network": False},
            "whole-projected": {"whole_network": True, "projected": True},
            "later-half-projected": {"whole_network": False, "projected": True}}


def prepared(case: Case, model: str, with_reference: bool) -> dict:
    """The run's normalised input on the target grid, its reference and coverage (and on the input's own
    grid, for the pairs), the truth on the target grid and its foreground mask."""
    low = case.low("thick", 4)
    reference = case.references["paired"] if with_reference else None
    plan = plan_run(low, reference, model, target_spacing=case.truth.spacing, threads=2)
    scale = IntensityScale.fit(low.array)
    lr = scale.normalise(preinterpolate(low, plan.target).array)
    ref = ref_mask = ref_native = None
    if reference is not None:
        ref, ref_mask, ref_native = _paired_reference(low, reference, plan, lr, False, True, None, None, {})
    truth = scale.normalise(crop_to(case.truth.array, lr.shape).astype(np.float32))
    mask = crop_to(case.mask, lr.shape) > 0 if case.mask is not None else foreground_mask(truth)
    return {"plan": plan, "lr": lr, "reference": ref, "reference_mask": ref_mask, "truth": truth, "mask": mask,
            "scan": scale.normalise(low.array), "low": low, "reference_native": ref_native}


def thick_axis_projector(run: dict) -> np.ndarray:
    """`consistency.range_projector` along the run's thick axis (box slices, the target grid)."""
    (axis,) = run["plan"].upsampled
    return range_projector(profile_matrix("box", run["low"].array.shape[2 - axis], run["lr"].shape[2 - axis],
                                          run["low"].spacing[axis], run["plan"].target.spacing[axis])).astype(np.float32)


def sampled_psnr(network: torch.nn.Module, run: dict, consistent: bool = False) -> tuple[float, float]:
    """PSNR of the network and of cubic interpolation over the foreground of every `SLICE_STRIDE`-th slice of
    each planned plane (data range: the normalised truth's); `consistent`: the network's output as the
    consistency step makes it (its error along the thick axis, which runs along the slices' rows, less the
    part the acquired slices fix)."""
    plan, context = run["plan"], getattr(network, "context", 0)
    projector = thick_axis_projector(run) if consistent else None
    errors, counted = np.zeros(2), 0
    for plane in plan.planes:
        axes = plane_axes(plane, plan.upsampled)
        oriented = {k: None if run[k] is None else np.transpose(run[k], axes)
                    for k in ("lr", "truth", "mask", "reference", "reference_mask")}
        for s in range(SLICE_STRIDE // 2, oriented["lr"].shape[0], SLICE_STRIDE):
            mask = oriented["mask"][s]
            if not mask.any():
                continue
            lr = torch.from_numpy(with_neighbours(oriented["lr"], s, 1, context))
            ref, ref_mask = ((torch.from_numpy(np.ascontiguousarray(oriented[k][s]))[None, None]
                              for k in ("reference", "reference_mask")) if oriented["reference"] is not None
                             else (torch.zeros_like(lr[:, :1]), torch.zeros_like(lr[:, :1])))
            with torch.inference_mode():
                output = network(lr, ref, ref_mask)[0, 0].numpy()
            truth = oriented["truth"][s]
            error = output - truth
            if projector is not None:
                error = error - projector @ error
            errors += [(error[mask] ** 2).sum(), ((oriented["lr"][s] - truth)[mask] ** 2).sum()]
            counted += int(mask.sum())
    data_range = float(run["truth"].max() - run["truth"].min())
    model_psnr, cubic_psnr = 10 * np.log10(data_range ** 2 * counted / errors)
    return float(model_psnr), float(cubic_psnr)


def blended(pretrained: torch.nn.Module, adapted: torch.nn.Module, weight: float) -> torch.nn.Module:
    """pretrained + weight (adapted − pretrained), parameter by parameter."""
    mixed = copy.deepcopy(adapted)
    start = pretrained.state_dict()
    mixed.load_state_dict({k: (start[k] + weight * (v - start[k])) if v.is_floating_point() else v
                           for k, v in adapted.state_dict().items()})
    return mixed.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--model", default=None, help="default: the registry's default model")
    parser.add_argument("--cases", nargs="+", help="case names (default: all)")
    parser.add_argument("--reference", action="store_true", help="with the paired reference")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=sorted(VARIANTS))
    parser.add_argument("--seconds", type=float, default=50.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=None,
                        help="patches drawn from the scan's planes (default: as the product, adapt.PAIRS, or "
                             "adapt.PAIRS_WITH_REFERENCE with --reference)")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="times the card's step ceiling")
    parser.add_argument("--learning-rate", type=float, default=adapt.ADAPT_LEARNING_RATE)
    parser.add_argument("--blend", type=float, nargs="*", default=[],
                        help="also score pretrained + w (adapted - pretrained) for each weight w")
    parser.add_argument("--consistent", action="store_true",
                        help="score outputs as the consistency step makes them (box slices)")
    args = parser.parse_args()
    set_threads(args.threads)
    if args.pairs is None:
        args.pairs = adapt.PAIRS_WITH_REFERENCE if args.reference else adapt.PAIRS
    registry = ModelRegistry()
    card = registry.get(args.model)
    network = load_network(registry, card, torch.device("cpu"))
    device = torch.device("cpu")
    for case in [c for c in CASES if not args.cases or c[0] in args.cases]:
        run = prepared(Case(args.data, case), card.name, args.reference)
        pairs, why = adapt.scan_pairs(run["scan"], run["low"], run["plan"].upsampled, max(run["plan"].factors),
                                      run["reference_native"], getattr(network, "context", 0),
                                      run_planes=run["plan"].planes, projected=True, count=args.pairs)
        if pairs is None or not pairs.for_fine_tuning.any():
            # The product checks such a scan but does not adapt it (no pairs like inference's slices).
            print(json.dumps({"case": case[0], "skipped": why or "no pairs like inference's slices"}))
            continue
        plain = replace(pairs, projection=None)
        held_out = (pairs if args.consistent else plain).subset(pairs.holdout)
        held_model, held_cubic = adapt.score(network, held_out, device)
        true_model, true_cubic = sampled_psnr(network, run, args.consistent)
        row = {"case": case[0], "model": card.name, "reference": args.reference}
        print(json.dumps({**row, "variant": "pretrained", "true_gain": true_model - true_cubic,
                          "held_out_gain": held_model - held_cubic}), flush=True)

        def measured(model: torch.nn.Module) -> dict:
            """`model`'s true and held-out gain over cubic, and what it adds to the pretrained network's."""
            held, _ = adapt.score(model, held_out, device)
            true, _ = sampled_psnr(model, run, args.consistent)
            return {"true_gain": true - true_cubic, "held_out_gain": held - held_cubic,
                    "adaptation_true": true - true_model, "adaptation_held_out": held - held_model,
                    "pairs": args.pairs, "learning_rate": args.learning_rate}

        for name in args.variants:
            options = dict(VARIANTS[name])
            projected = options.pop("projected", False)
            # The same seconds: the whole network's steps cost more (the plan counts them as with a reference).
            whole = options["whole_network"]
            variant_steps = adaptation_steps(args.seconds, card.architecture, card.macs_per_pixel, "cpu", 2, whole,
                                             card.adapt_step_ceiling(whole))
            variant_steps = int(round(variant_steps * args.steps_scale))
            started = time.perf_counter()
            adapted = adapt.fine_tune(network, pairs if projected else plain, variant_steps, device,
                                      learning_rate=args.learning_rate, **options)
            seconds = time.perf_counter() - started
            print(json.dumps({**row, "variant": name, "steps": variant_steps, "seconds": round(seconds, 1),
                              **measured(adapted)}), flush=True)
            for weight in args.blend:
                print(json.dumps({**row, "variant": f"{name} blend {weight}", "steps": variant_steps,
                                  **measured(blended(network, adapted, weight))}), flush=True)


if __name__ == "__main__":
    main()
