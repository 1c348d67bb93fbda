#!/usr/bin/env python3
"""Score cubic and the trained models on the held-back `val/` subjects, with, without and with a wrong
reference, across degradations; write the tables and figures the README shows.

Each case simulates a low-resolution acquisition along axes that really were acquired at high resolution
(thick slices with a box profile, or in-plane k-space truncation), super-resolves back to the truth's
spacing, and scores PSNR/SSIM over the foreground (the subject's brain mask where it has one, else the
rule of `MRISuperResLib.metrics`). A wrong reference is another subject's scan, placed so that its centre
coincides with the input's.

    python scripts/evaluate.py --threads 2 --output Resources/evaluation
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import _paths  # noqa: F401
from MRISuperResLib import read_volume, superresolve
from MRISuperResLib.degrade import kspace_truncate, thick_slices
from MRISuperResLib.figures import save_panels
from MRISuperResLib.metrics import score
from MRISuperResLib.models.registry import ModelRegistry
from MRISuperResLib.volume import Volume

REPO = Path(__file__).resolve().parents[1]
# (case, target, reference, mask, thick-slice axis, in-plane axes, wrong reference: another subject's scan)
CASES = [
    ("openms_p26 T2<-T1", "val/brain_openms_p26/T2.nii.gz", "val/brain_openms_p26/T1.nii.gz", None, 0, (0, 1),
     "val/brain_brats_preprocessed/t1n.nii.gz"),
    ("openms_p26 FLAIR<-T1", "val/brain_openms_p26/FLAIR.nii.gz", "val/brain_openms_p26/T1.nii.gz", None, 0, (0, 1),
     "val/brain_brats_preprocessed/t1n.nii.gz"),
    ("brats t2w<-t1n", "val/brain_brats_preprocessed/t2w.nii.gz", "val/brain_brats_preprocessed/t1n.nii.gz", None, 2,
     (0, 1), "val/brain_openms_p26/T1.nii.gz"),
    ("brats2013_p5 flair<-t1c", "val/brain_brats2013_pat0005/flair_zscored.nii.gz",
     "val/brain_brats2013_pat0005/t1c_zscored.nii.gz", "val/brain_brats2013_pat0005/brainmask.nii.gz", 2, (0, 1),
     "val/brain_brats_preprocessed/t1c.nii.gz"),
    ("spine_sub05 MTon<-MToff", "val/spine_sct_sub05/MTon.nii.gz", "val/spine_sct_sub05/MToff.nii.gz", None, 1, (0, 1),
     "train/spine_sct_sub03/MToff.nii.gz"),
]
EXAMPLES = {"openms_p26 T2<-T1": "example_brain.png", "spine_sub05 MTon<-MToff": "example_spine.png"}


def crop_to(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return array[tuple(slice(0, n) for n in shape)]


def centred_on(volume: Volume, target: Volume) -> Volume:
    """`volume` moved so that its centre lies on `target`'s centre (a wrong patient, placed plausibly)."""
    shift = target.grid.corners().mean(axis=0) - volume.grid.corners().mean(axis=0)
    return Volume(volume.array, volume.spacing, tuple(np.asarray(volume.origin) + shift), volume.direction)


def degrade(truth: Volume, kind: str, factor: int, case) -> Volume:
    if kind == "thick":
        return thick_slices(truth, case[4], factor, "box")
    return kspace_truncate(truth, case[5], factor)


def run_case(data: Path, case, kind: str, factor: int, variants: list[tuple[str, str]], threads: int,
             pictures: Path | None) -> list[dict]:
    name, target_path, reference_path, mask_path = case[:4]
    truth = read_volume(data / target_path)
    references = {"paired": read_volume(data / reference_path, "reference"), "none": None}
    references["wrong"] = centred_on(read_volume(data / case[6], "reference"), truth)
    mask = read_volume(data / mask_path).array if mask_path else None
    low = degrade(truth, kind, factor, case)
    rows, results = [], {}
    for model, reference in variants:
        started = time.perf_counter()
        result = superresolve(low, references[reference], model=model, target_spacing=truth.spacing, threads=threads)
        truth_crop = crop_to(truth.array, result.array.shape)
        rows.append({"case": name, "degradation": kind, "factor": factor, "model": model, "reference": reference,
                     "seconds": round(time.perf_counter() - started, 1),
                     **score(result.array, truth_crop, None if mask is None else crop_to(mask, result.array.shape))})
        results[(model, reference)] = result.array
        print(json.dumps(rows[-1]), flush=True)
    if pictures and kind == "thick" and name in EXAMPLES:
        picture(pictures / EXAMPLES[name], name, factor, low, results, crop_to(truth.array, result.array.shape), case[4])
    return rows


def picture(path: Path, name: str, factor: int, low: Volume, results: dict, truth: np.ndarray, axis: int) -> None:
    """Before / after / truth on a slice that holds the thick-slice axis (vertical)."""
    axis_np = 2 - axis
    other = [a for a in range(3) if a != axis_np]
    middle = truth.shape[other[0]] // 2

    def cut(array: np.ndarray) -> np.ndarray:
        plane = np.take(array, middle, axis=other[0])  # remaining axes keep their order
        return plane if axis_np < other[1] else plane.T

    thick = np.repeat(low.array, factor, axis=axis_np)[tuple(slice(0, n) for n in truth.shape)]
    panels = [(f"input: {factor}x thick slices", cut(thick))]
    for (model, reference), array in results.items():
        if reference != "wrong":
            label = f"{model}" + (" + reference" if reference == "paired" else "")
            panels.append((f"{label}  {score(array, truth)['psnr']:.2f} dB", cut(array)))
    panels.append(("truth", cut(truth)))
    save_panels(panels, path, (0.0, float(np.percentile(truth, 99.5))))


def markdown(rows: list[dict], kind: str, factor: int) -> str:
    chosen = [r for r in rows if r["degradation"] == kind and r["factor"] == factor]
    variants = list(dict.fromkeys((r["model"], r["reference"]) for r in chosen))
    label = lambda m, ref: m if ref == "none" else f"{m} + {'ref' if ref == 'paired' else 'wrong ref'}"  # noqa: E731
    lines = [f"| case | " + " | ".join(label(*v) for v in variants) + " |", "|" + " --- |" * (len(variants) + 1)]
    for case in dict.fromkeys(r["case"] for r in chosen):
        cells = []
        for model, reference in variants:
            hit = [r for r in chosen if (r["case"], r["model"], r["reference"]) == (case, model, reference)]
            cells.append(f"{hit[0]['psnr']:.2f} / {hit[0]['ssim']:.4f}" if hit else "")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    means = []
    for model, reference in variants:
        hit = [r for r in chosen if (r["model"], r["reference"]) == (model, reference)]
        means.append(f"**{np.mean([r['psnr'] for r in hit]):.2f} / {np.mean([r['ssim'] for r in hit]):.4f}**")
    lines.append("| **mean** | " + " | ".join(means) + " |")
    return "\n".join(lines) + "\n"


def mean_psnr(rows, **match) -> float:
    return float(np.mean([r["psnr"] for r in rows if all(r[k] == v for k, v in match.items())]))


def gain_plot(rows: list[dict], default: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 3.6), dpi=110)
    factors = sorted({r["factor"] for r in rows if r["degradation"] == "thick"})
    for reference, style in (("paired", "o-"), ("none", "s--"), ("wrong", "x:")):
        gains = [mean_psnr(rows, degradation="thick", factor=f, model=default, reference=reference)
                 - mean_psnr(rows, degradation="thick", factor=f, model="cubic") for f in factors]
        axis.plot(factors, gains, style, label=f"{default}, {'no' if reference == 'none' else reference} reference")
    axis.axhline(0, color="grey", lw=0.8)
    axis.set_xlabel("thick-slice factor")
    axis.set_ylabel("PSNR gain over cubic (dB), val/ mean")
    axis.set_xticks(factors)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--factor", type=int, default=4, help="thick-slice factor at which every model is scored")
    parser.add_argument("--models", nargs="+", help="default: every trained model in the registry")
    parser.add_argument("--sweep-factors", type=int, nargs="*", default=[2, 3, 5],
                        help="more thick-slice factors, scored for cubic and the default model")
    parser.add_argument("--inplane-factors", type=int, nargs="*", default=[2, 4],
                        help="in-plane k-space truncation factors, scored for cubic and the default model")
    parser.add_argument("--cases", nargs="+", help="case names to run (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, help="folder for evaluation.json/.md and the figures")
    args = parser.parse_args()
    registry = ModelRegistry()
    models = args.models or [n for n in registry.names() if n != "cubic"]
    default = registry.default_name

    def variants(names):
        """cubic; every model with and without its reference; the default also with a wrong reference."""
        chosen = [("cubic", "none")]
        for name in names:
            if registry.get(name).uses_reference:
                chosen += [(name, "paired"), (name, "none")] + ([(name, "wrong")] if name == default else [])
            else:
                chosen.append((name, "none"))
        return chosen

    if args.output:
        args.output.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in [c for c in CASES if not args.cases or c[0] in args.cases]:
        rows += run_case(args.data, case, "thick", args.factor, variants(models), args.threads, args.output)
        for factor in args.sweep_factors:
            rows += run_case(args.data, case, "thick", factor, variants([default]), args.threads, None)
        for factor in args.inplane_factors:
            rows += run_case(args.data, case, "kspace", factor, variants([default]), args.threads, None)
    text = [f"### {args.factor}× thick slices, every model\n", markdown(rows, "thick", args.factor)]
    for factor in args.sweep_factors:
        text += [f"\n### {factor}× thick slices\n", markdown(rows, "thick", factor)]
    for factor in args.inplane_factors:
        text += [f"\n### {factor}× in-plane (k-space truncation of both in-plane axes)\n", markdown(rows, "kspace", factor)]
    text.append("\nPSNR (dB) / SSIM over the foreground; data range = the truth's max − min.\n")
    print("".join(text))
    if args.output:
        (args.output / "evaluation.json").write_text(json.dumps(rows, indent=2) + "\n")
        (args.output / "evaluation.md").write_text("".join(text))
        gain_plot(rows, default, args.output / "psnr_gain_vs_factor.png")


if __name__ == "__main__":
    main()
