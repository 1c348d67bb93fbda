"""The `mrisuperres` command: run, plan, models, devices, degrade, evaluate, demo, train.

Every failure ends with one sentence on stderr naming the problem and the fix, and a non-zero exit
code (2: bad input, 130: cancelled); an output file exists only when its command succeeded.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from .devices import DEVICES, wait_passively_when_the_cpu_is_busy
from .errors import MRISuperResError
from .io import check_new_output, read_volume, write_volume
from .plan import DEFAULT_ADAPT_SECONDS, DEFAULT_BATCH_SIZE, DEFAULT_TILE, PLANES, REFERENCE_MODES

log = logging.getLogger("mrisuperres")


class _OneSentenceParser(argparse.ArgumentParser):
    """A usage mistake gets the same one sentence as every other failure, not argparse's usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`.\n")


def _add_target_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--target-spacing", type=float, nargs="+", metavar="MM",
                        help="output spacing in mm: one value (isotropic) or three (i j k); "
                             "default: isotropic at the finest input spacing")
    target.add_argument("--scale", type=float, nargs="+", metavar="F",
                        help="upsampling factor: one value or three (i j k); non-integer allowed")
    parser.add_argument("--planes", nargs="+", choices=PLANES,
                        help="planes to run, by voxel axes (default: every plane holding an upsampled axis)")
    parser.add_argument("--model", help="model name from `mrisuperres models` (default: the registry's default)")
    parser.add_argument("--reference-mode", choices=REFERENCE_MODES,
                        help="texture-transfer models: paired (another contrast of the same patient, aligned), "
                             "unpaired (any high-resolution scan, not aligned) or self (no reference: the input's "
                             "own high-resolution planes); default paired with --reference, self without")
    parser.add_argument("--models-dir", help="folder with models.json and weights (or set MRISUPERRES_MODELS_DIR)")
    parser.add_argument("--device", default="auto", choices=DEVICES,
                        help="auto: an NVIDIA GPU (CUDA), else a Mac's GPU (MPS), else the CPU")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="slices (tiles) per network call")
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE, help="largest tile side in pixels")


def _progress(args: argparse.Namespace):
    from .progress import JsonLinesProgress, TqdmProgress, print_warnings

    if getattr(args, "progress_json", False):
        return JsonLinesProgress(sys.stdout)
    if getattr(args, "quiet", False):
        return print_warnings
    return TqdmProgress()


def _target(args: argparse.Namespace) -> dict:
    return {"target_spacing": args.target_spacing, "scale": args.scale, "planes": args.planes,
            "model": args.model, "models_dir": args.models_dir, "device": args.device, "threads": args.threads,
            "batch_size": args.batch_size, "tile": args.tile, "reference_mode": args.reference_mode}


def command_run(args: argparse.Namespace) -> int:
    from .models.registry import ModelRegistry
    from .pipeline import superresolve_with_confidence

    outputs = {"output": Path(args.output)}
    if args.confidence:
        card = ModelRegistry(args.models_dir).get(args.model)
        if not card.maps_confidence:
            raise MRISuperResError(f"--confidence maps the matches of texture-transfer and DAASR models, and model "
                                   f"{card.name} makes none; choose one of those (see `mrisuperres models`).")
        outputs["confidence output"] = Path(args.confidence)
    if len({path.resolve() for path in outputs.values()}) < len(outputs):
        raise MRISuperResError("The output and the confidence output are the same file; give them different paths.")
    inputs = {"input": args.input, "reference": args.reference}
    outputs = {what: check_new_output(path, args.overwrite, what, inputs) for what, path in outputs.items()}
    volume = read_volume(args.input, "input")
    reference = read_volume(args.reference, "reference") if args.reference else None
    progress = _progress(args)
    report: dict = {}
    try:
        result, confidence = superresolve_with_confidence(
            volume, reference, register_reference=args.register_reference, force=args.force, progress=progress,
            gate_reference=not args.no_reference_gate, adapt=0.0 if args.no_adapt else args.adapt,
            self_check=not args.no_self_check, fallback=not args.no_fallback, report=report,
            consistency=not args.no_consistency, round_lesions=not args.no_round_lesions, **_target(args))
    finally:
        if hasattr(progress, "close"):
            progress.close()
    written = {"output": str(outputs["output"])}
    if args.confidence and confidence is None:
        raise MRISuperResError("No reference or texture was matched in this run, so there is no confidence "
                               "map; no output was written.")
    try:
        if args.confidence:
            write_volume(confidence, outputs["confidence output"])
            written["confidence"] = str(outputs["confidence output"])
        write_volume(result, outputs["output"])
    except BaseException:
        # The confidence map alone is not a result: an output exists only when the run succeeded.
        if "confidence" in written:
            outputs["confidence output"].unlink(missing_ok=True)
        raise
    args.written.extend(written.values())
    if args.progress_json:
        print(json.dumps({"stage": "done", **written, "size": list(result.grid.size), "report": report}), flush=True)
    else:
        print(f"wrote {outputs['output']} ({result.grid.describe()})"
              + (f" and the confidence map {outputs['confidence output']}" if args.confidence else ""))
    return 0


def command_batch(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .cohort import batch

    options = {k: v for k, v in _target(args).items() if v is not None}
    options.update(register_reference=args.register_reference, self_check=not args.no_self_check,
                   adapt=0.0 if args.no_adapt else args.adapt, consistency=not args.no_consistency)
    if args.no_round_lesions:  # only when asked, so that the records of earlier batches stay valid
        options["round_lesions"] = False
    bar = None  # made at the first finished case, so that a batch refused outright shows no empty bar

    def progress(done: int, total: int, row: dict) -> None:
        nonlocal bar
        if args.progress_json:
            print(json.dumps({"stage": "batch", "done": done, "total": total, "case": row}), flush=True)
        elif not args.quiet:
            bar = bar or tqdm(unit="case", desc="batch", dynamic_ncols=True, total=total)
            bar.update(1)
            bar.set_postfix_str(f"{row['case']}: {row['status']}")
    try:
        rows = batch(args.input, args.output_dir, args.reference_pattern, args.bids_target,
                     None if args.bids_reference == "none" else args.bids_reference, args.workers, args.scheduler,
                     args.force, progress, **options)
    finally:
        if bar is not None:
            bar.close()
    counts = {status: sum(r["status"] == status for r in rows) for status in ("done", "skipped", "refused", "failed")}
    print(", ".join(f"{n} {status}" for status, n in counts.items() if n)
          + f"; report: {Path(args.output_dir) / 'batch_report.csv'}", file=sys.stderr)
    for row in rows:
        if row["status"] in ("refused", "failed"):
            print(f"{row['case']}: {row['status']}: {row['message']}", file=sys.stderr)
    # Non-zero when any case did not succeed, so that scripts notice.
    return 2 if counts["refused"] or counts["failed"] else 0


def command_plan(args: argparse.Namespace) -> int:
    from .pipeline import plan_run

    volume = read_volume(args.input, "input")
    reference = read_volume(args.reference, "reference") if args.reference else None
    plan = plan_run(volume, reference, adapt=0.0 if args.no_adapt else args.adapt,
                    self_check=not args.no_self_check, register_reference=args.register_reference, **_target(args))
    print(json.dumps(plan.to_json(), indent=2, ensure_ascii=False) if args.json else plan.summary())
    return 0


def command_models(args: argparse.Namespace) -> int:
    from .models.registry import ModelRegistry

    registry = ModelRegistry(args.models_dir)
    if args.json:
        print(json.dumps({"default": registry.default_name,
                          "models": [c.to_json() for c in registry.cards.values()]}, indent=2))
        return 0
    width = max(len(name) for name in registry.cards)
    for card in registry.cards.values():
        mark = "*" if card.name == registry.default_name else " "
        reference = "uses reference" if card.uses_reference else "no reference"
        if card.texture_transfer:
            reference += "; texture transfer: " + ", ".join(card.supported_reference_modes)
        trained = ""
        if card.trained_factors:
            trained = f"; thick {min(card.trained_factors)}-{max(card.trained_factors)}x"
            trained += f", in-plane {'/'.join(map(str, card.inplane_factors))}x" if card.inplane_factors else ""
        print(f"{mark} {card.name:<{width}} {card.title} [{reference}{trained}; {card.parameters} parameters]")
    print("(* = default)")
    return 0


def command_devices(args: argparse.Namespace) -> int:
    from .advice import device_advice
    from .devices import installed_torch
    from .foreground import scan_signal_shares
    from .models.registry import ModelRegistry

    volume = read_volume(args.input, "input") if args.input else None
    threads = args.threads or _torch_threads()
    print(device_advice(installed_torch(), ModelRegistry(args.models_dir), volume and volume.grid,
                        has_reference=args.reference, threads=threads,
                        signal_shares=volume and scan_signal_shares(volume.array, DEFAULT_BATCH_SIZE)))
    return 0


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def command_degrade(args: argparse.Namespace) -> int:
    from .degrade import bicubic_downsample, kspace_truncate, thick_slices

    output = check_new_output(args.output, args.overwrite, inputs={"input": args.input})
    # Simulating an acquisition of a constant volume is pointless but harmless: nothing to refuse.
    volume = read_volume(args.input, "input", allow_constant=True)
    if args.kspace and args.bicubic:
        raise MRISuperResError("--kspace and --bicubic are two different degradations; give one of them.")
    if args.kspace:
        result = kspace_truncate(volume, tuple(args.axes), args.factor)
    elif args.bicubic:
        result = bicubic_downsample(volume, tuple(args.axes), args.factor)
    else:
        if len(args.axes) != 1:
            raise MRISuperResError("Thick slices are simulated along one axis; give one --axes value.")
        result = thick_slices(volume, args.axes[0], args.factor, args.profile)
        left_over = volume.grid.size[args.axes[0]] % int(args.factor)
        if left_over:
            print(f"the last {left_over} of {volume.grid.size[args.axes[0]]} slices along axis {args.axes[0]} do not "
                  f"fill a {int(args.factor)}-slice slab and are left out, so the output covers "
                  f"{left_over * volume.spacing[args.axes[0]]:g} mm less (`mrisuperres evaluate` crops the truth "
                  "to match)")
    write_volume(result, output)
    args.written.append(str(output))
    print(f"wrote {output} ({result.grid.describe()})")
    return 0


def command_evaluate(args: argparse.Namespace) -> int:
    from .geometry import common_voxels
    from .metrics import score

    result = read_volume(args.result, "result")
    truth = read_volume(args.truth, "truth")
    mask = read_volume(args.mask, "mask") if args.mask else None
    result_array, truth_array = result.array, truth.array
    mask_array = None if mask is None else mask.array
    cropped = None
    # Any difference in the grid, spacing and direction included: the same size alone is not the same voxels.
    if not result.grid.same_as(truth.grid, tolerance=1e-3):
        boxes = common_voxels(result.grid, truth.grid)
        if boxes is None:
            raise MRISuperResError(_different_lattices(result.grid, truth.grid))
        in_result, in_truth = boxes
        result_array, truth_array = result_array[in_result], truth_array[in_truth]
        if truth_array.size == 0:
            raise MRISuperResError("The result and the truth do not overlap; check that they are the same scan.")
        if mask_array is not None:
            if mask.grid.size != truth.grid.size:
                raise MRISuperResError("The mask must be on the truth's grid; resample it onto the truth first.")
            mask_array = mask_array[in_truth]
        cropped = list(truth_array.shape[::-1])
        shared = "×".join(map(str, cropped))
        if result_array.shape != result.array.shape:
            # A result made from the truth never reaches beyond it: rather the two files are the other way round.
            print(f"evaluate: the result ({'×'.join(map(str, result.grid.size))} voxels) reaches beyond the truth; "
                  f"scored on the {shared} they share (the order is RESULT TRUTH: check it)", file=sys.stderr)
        else:
            print(f"evaluate: the result covers {shared} of the truth's {'×'.join(map(str, truth.grid.size))} voxels "
                  "(thick slices drop an incomplete last slab); scored on those", file=sys.stderr)
    scores = score(result_array, truth_array, mask_array)
    if cropped:
        scores["compared_voxels"] = cropped
    scores["mask"] = args.mask or "truth > 5% of its 99th percentile"
    scores["data_range"] = "truth max - truth min"
    print(json.dumps(scores, indent=2))
    return 0


def _different_lattices(result, truth) -> str:
    """Why `mrisuperres evaluate` cannot compare two grids voxel by voxel, and what to do."""
    from .geometry import lattice_difference

    grids = f"The result ({result.describe()}) and the truth ({truth.describe()})"
    difference = lattice_difference(result, truth)
    if difference == "spacing":
        spacing = " ".join(f"{s:g}" for s in truth.spacing)
        return (f"{grids} have different voxel sizes; super-resolve with --target-spacing {spacing} or resample one "
                "onto the other.")
    if difference == "direction":
        return f"{grids} are oriented differently; check that the result was made from this truth's scan."
    shift = " ".join(f"{r - t:+.3g}" for r, t in zip(result.origin, truth.origin))
    return (f"{grids} are offset by {shift} mm, not a whole number of voxels; check that the result was made from "
            "this truth's scan.")


def command_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    summary = run_demo(Path(args.output_dir), model=args.model, threads=args.threads, progress=_progress(args))
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


def command_train(args: argparse.Namespace) -> int:
    from .training import train_from_arguments

    train_from_arguments(args)
    return 0


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `mrisuperres train`, shared with `python -m MRISuperResLib.training` (for torchrun)."""
    parser.add_argument("config", help="YAML training config (see scripts/configs/)")
    parser.add_argument("--data", default=None,
                        help="folder the config's target/reference paths are relative to (default: ../shared/data "
                             "beside the checkout, else the config's folder)")
    parser.add_argument("--runs", default="runs", help="folder for checkpoints, logs, weights and cards (default: runs)")
    parser.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--steps", type=int, help="override the config's step count")
    parser.add_argument("--install", action="store_true",
                        help="add the trained model to the models folder (the built-in one, or --models-dir)")
    parser.add_argument("--models-dir", help="models folder to install into and to initialise from")


def _add_registration_arguments(parser: argparse.ArgumentParser, which: str) -> None:
    registration = parser.add_mutually_exclusive_group()
    registration.add_argument("--no-register-reference", dest="register_reference", action="store_false",
                              default=True, help=f"use {which} as it lies; by default it is rigidly registered "
                                                 "and moved only when its edges then match the input's better")
    # Registration is the default now; the flag stays so that existing scripts keep working.
    registration.add_argument("--register-reference", dest="register_reference", action="store_true",
                              help="the default (kept for older scripts)")


def _add_check_arguments(parser: argparse.ArgumentParser) -> None:
    """The self-check and adaptation options, shared by `run` and `plan` (whose time estimate counts them)."""
    adapt = parser.add_mutually_exclusive_group()
    adapt.add_argument("--adapt", type=float, nargs="?", const=DEFAULT_ADAPT_SECONDS, metavar="SECONDS",
                       help=f"seconds of fine-tuning on this scan's own acquired planes before the run (default "
                            f"{DEFAULT_ADAPT_SECONDS:.0f}, on by default; kept only if it helps on held-out slices)")
    adapt.add_argument("--no-adapt", action="store_true", help="do not fine-tune on the scan (faster)")
    parser.add_argument("--no-self-check", action="store_true",
                        help="skip scoring the model on the scan's own planes (and so adaptation and fallback)")


def _add_consistency_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-consistency", action="store_true",
                        help="keep the model's output as it is, even when the slice profile estimated from it would "
                             "make it agree exactly with the acquired slices")
    parser.add_argument("--no-round-lesions", action="store_true",
                        help="leave small round lesions as the model spread them over the thick slabs, instead of "
                             "fitting a ball to the slabs that show them (README, Pathology is kept)")


def _add_output_arguments(command: argparse.ArgumentParser) -> None:
    """The output file, after the input (`run in.nii.gz out.nii.gz`, as most tools take it) or as -o."""
    command.add_argument("output_file", nargs="?", metavar="OUTPUT", help="output file (or give it with -o)")
    command.add_argument("--output", "-o", help="output file")


def _resolve_output(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not hasattr(args, "output_file"):
        return
    if args.output_file and args.output and args.output_file != args.output:
        parser.error(f"two outputs given ({args.output_file} and -o {args.output}); give one")
    args.output = args.output or args.output_file
    if not args.output:
        parser.error(f"no output file given; add it after the input: mrisuperres {args.command} INPUT OUTPUT")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneSentenceParser(prog="mrisuperres", description="Slice-wise MRI super-resolution.")
    parser.add_argument("--verbose", action="store_true", help="log the plan and registration details")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="super-resolve a volume")
    run.add_argument("input", help="volume file or DICOM folder")
    _add_output_arguments(run)
    run.add_argument("--reference", help="high-resolution volume of another contrast of the same patient "
                                         "(with --reference-mode unpaired: any high-resolution scan)")
    run.add_argument("--confidence", metavar="OUT",
                     help="texture-transfer and DAASR models: also write the confidence of the reference or "
                          "texture matches (0-1) here")
    run.add_argument("--overwrite", action="store_true", help="replace the output (and confidence) files if they exist")
    _add_registration_arguments(run, "the reference")
    run.add_argument("--no-reference-gate", action="store_true",
                     help="use the reference everywhere, even where its edges do not match the input's")
    run.add_argument("--force", action="store_true", help="run even when the memory estimate exceeds what is free")
    _add_check_arguments(run)
    _add_consistency_argument(run)
    run.add_argument("--no-fallback", action="store_true",
                     help="keep the model's output even when the self-check finds it worse than cubic")
    run.add_argument("--progress-json", action="store_true", help="one JSON progress object per line on stdout")
    run.add_argument("--quiet", action="store_true", help="no progress bar; only warnings (a reference ignored, a fallback)")
    _add_target_arguments(run)
    run.set_defaults(handler=command_run)

    batch = commands.add_parser("batch", help="super-resolve a folder, a CSV manifest or a BIDS dataset (resumable)")
    batch.add_argument("input", help="folder of volumes, .csv manifest (input, reference, output, options) or BIDS dataset")
    batch.add_argument("output_dir", help="folder for the outputs and batch_report.csv/.json (BIDS: the derivatives folder)")
    batch.add_argument("--reference-pattern", metavar="PATTERN",
                       help="folder input: each volume's reference, relative to the folder; {stem} is the volume's "
                            "name without extension (e.g. '{stem}_T1.nii.gz' or 'refs/{stem}.nrrd')")
    batch.add_argument("--bids-target", default="T2w", metavar="SUFFIX", help="BIDS: the suffix to super-resolve")
    batch.add_argument("--bids-reference", default="T1w", metavar="SUFFIX",
                       help="BIDS: the suffix of the same session's reference ('none': no reference)")
    batch.add_argument("--workers", type=int, default=1,
                       help="cases in parallel on this machine (a Dask local cluster; threads shared between them)")
    batch.add_argument("--scheduler", metavar="ADDRESS",
                       help="submit the cases to a running Dask scheduler (e.g. tcp://host:8786) instead")
    batch.add_argument("--force", action="store_true", help="redo cases that are already done")
    _add_registration_arguments(batch, "each reference")
    batch.add_argument("--progress-json", action="store_true", help="one JSON object per finished case on stdout")
    batch.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_check_arguments(batch)
    _add_consistency_argument(batch)
    _add_target_arguments(batch)
    batch.set_defaults(handler=command_batch)

    plan = commands.add_parser("plan", help="print what a run would do, without running it")
    plan.add_argument("input")
    plan.add_argument("--reference")
    plan.add_argument("--json", action="store_true")
    _add_registration_arguments(plan, "the reference")
    _add_check_arguments(plan)
    _add_target_arguments(plan)
    plan.set_defaults(handler=command_plan)

    models = commands.add_parser("models", help="list the available models")
    models.add_argument("--models-dir")
    models.add_argument("--json", action="store_true")
    models.set_defaults(handler=command_models)

    devices = commands.add_parser("devices", help="what PyTorch runs on here and, on a CPU, how long the "
                                                  "default and the fast model take")
    devices.add_argument("input", nargs="?", help="a scan to estimate the times on (default: the benchmark volume)")
    devices.add_argument("--reference", action="store_true", help="estimate with a reference")
    devices.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    devices.add_argument("--models-dir")
    devices.set_defaults(handler=command_devices)

    degrade = commands.add_parser("degrade", help="simulate a low-resolution acquisition")
    degrade.add_argument("input")
    _add_output_arguments(degrade)
    degrade.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    degrade.add_argument("--factor", type=float, default=4,
                         help="how many times coarser (thick slices: a whole number of slices per slab; default 4)")
    degrade.add_argument("--axes", type=int, nargs="+", default=[2], choices=(0, 1, 2),
                         help="voxel axes (0 = i, 1 = j, 2 = k); default 2")
    degrade.add_argument("--profile", default="box", choices=("box", "gaussian"), help="thick-slice profile")
    degrade.add_argument("--kspace", action="store_true", help="k-space truncation instead of thick slices")
    degrade.add_argument("--bicubic", action="store_true",
                         help="antialiased bicubic downsampling (integer factor) instead of thick slices")
    degrade.set_defaults(handler=command_degrade)

    evaluate = commands.add_parser("evaluate", help="PSNR and SSIM of a result against the truth, as JSON")
    evaluate.add_argument("result")
    evaluate.add_argument("truth")
    evaluate.add_argument("--mask", help="foreground mask on the truth's grid")
    evaluate.set_defaults(handler=command_evaluate)

    demo = commands.add_parser("demo", help="super-resolve a built-in multi-contrast phantom")
    demo.add_argument("--output-dir", default="demo-output")
    demo.add_argument("--model")
    demo.add_argument("--threads", type=int)
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(handler=command_demo)

    train = commands.add_parser("train", help="train or fine-tune a model on your own volumes from a YAML config")
    add_training_arguments(train)
    train.set_defaults(handler=command_train)
    return parser


def _stop_on_sigterm(signum, frame) -> None:
    # SIGTERM (a scheduler, the Slicer module's Cancel) unwinds like Ctrl+C, so that a write in progress
    # removes its staging folder and no partial output remains.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # The files a command has finished writing: a Ctrl+C after them must not report that nothing was written.
    args.written = []
    _resolve_output(parser, args)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    # Only the commands that run networks: the others would wait for the sample and gain nothing.
    busy = wait_passively_when_the_cpu_is_busy() if args.command in ("run", "batch", "demo", "train") else None
    if busy is not None:
        log.info("the CPU is busy (%.1f CPUs busy): waiting threads yield it (OMP_WAIT_POLICY=PASSIVE)", busy)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm) if main_thread else None
    try:
        return args.handler(args)
    except MRISuperResError as error:
        print(f"mrisuperres: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        if args.written:
            # Cancelled while reporting: what was written is complete, so the run succeeded.
            print(f"mrisuperres: cancelled after the run; {', '.join(args.written)} is complete.", file=sys.stderr)
            return 0
        print("mrisuperres: cancelled; no output was written.", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our stdout went away (`mrisuperres models | head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
