#!/usr/bin/env python3
"""An anatomy no model was trained on: the lumbar spine of `real_lr/spine_lumbar_t2` (a 1 mm T2 sagittal slab,
38 × 257 × 201; train/ holds brains, the cervical spine and the prostate). Its three axes are 1 mm, so each can
be made thick (box profile) and scored against the scan itself, as `evaluate.py` scores val/: cubic, the
network alone, the product without adaptation (`NAME+check`: self-check, fallback and the consistency step,
`adapt=0`) and the product as users run it (`NAME+adapt`). Single contrast, so no reference. The data's README
files the scan under real_lr/ ("look at it"); it is used here only to score, never to train or to choose.

Thick slices along x (left-right) are the clinical case: sagittal 2D slices, restored to 1 mm. In-plane
degradations (`kspace:F`, k-space truncation) coarsen the two axes other than `--axes`' (sagittal: y and z).

    python scripts/unseen_anatomy.py --threads 2 --output Resources
    python scripts/unseen_anatomy.py --threads 2 --picture Resources/unseen_lumbar.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import _paths  # noqa: F401
from evaluate import MODE_OPTIONS, REPO, Case, crop_to, parse_degradation, sweep
from MRISuperResLib import superresolve
from MRISuperResLib.figures import save_panels
from MRISuperResLib.metrics import score
from MRISuperResLib.models.registry import ModelRegistry

SCAN = "real_lr/spine_lumbar_t2/t2.nii.gz"
AXES = {0: "x (sagittal slices)", 1: "y (coronal slices)", 2: "z (axial slices)"}
# The picture: an axial slice through a lumbar vertebral body, its spinal canal and the muscles behind it.
PICTURE_SLICE, PICTURE_COLUMNS = 100, slice(60, 200)


def lumbar_case(data: Path, axis: int) -> Case:
    """The scan as an `evaluate.Case` made thick along `axis`, or coarse in-plane across it (the other two
    axes), without a reference."""
    return Case(data, (f"lumbar_t2 {'xyz'[axis]}", SCAN, None, None, axis, tuple(a for a in AXES if a != axis),
                       None))


def picture(path: Path, case: Case, model: str, threads: int) -> None:
    """Input, cubic, the network alone, as users run it, and the truth at 4× sagittal slices, on an axial slice
    (the thick axis, left-right, across: the slab is 38 voxels wide)."""
    low, truth = case.low("thick", 4), case.truth
    results = {label: superresolve(low, None, model=name, target_spacing=truth.spacing, threads=threads,
                                   **MODE_OPTIONS[mode]).array
               for label, name, mode in (("cubic", "cubic", ""), (f"{model} alone", model, ""),
                                         (f"{model} as users run it", model, "adapt"))}
    target = crop_to(truth.array, next(iter(results.values())).shape)

    def cut(array: np.ndarray) -> np.ndarray:
        return array[PICTURE_SLICE, PICTURE_COLUMNS, :]

    thick = np.repeat(low.array, 4, axis=2)[tuple(slice(0, n) for n in target.shape)]
    panels = [("input: 4x sagittal slices", cut(thick))]
    panels += [(f"{label}  {score(array, target)['psnr']:.2f} dB", cut(array)) for label, array in results.items()]
    panels.append(("truth", cut(target)))
    save_panels(panels, path, (0.0, float(np.percentile(target, 99.5))))


def table(rows: list[dict], variants: list[str]) -> str:
    """PSNR of cubic, and every variant's gain over it, per degradation, axis and factor."""
    lines = ["| degradation | cubic (dB) | " + " | ".join(variants) + " |", "|" + " --- |" * (len(variants) + 2)]
    psnr = {(r["degradation"], r["case"], r["factor"], r["model"]): r["psnr"] for r in rows}
    for kind, label in (("thick", "thick along {axis}"), ("kspace", "in-plane, normal {axis}")):
        for axis in AXES:
            for factor in sorted({r["factor"] for r in rows}, reverse=True):
                where = (kind, f"lumbar_t2 {'xyz'[axis]}", factor)
                if (*where, "cubic") not in psnr:
                    continue
                cubic = psnr[(*where, "cubic")]
                cells = [f"{psnr[(*where, v)] - cubic:+.2f}" if (*where, v) in psnr else "" for v in variants]
                lines.append(f"| {label.format(axis=AXES[axis])}, {factor}× | {cubic:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--models", nargs="+", help="default: the default model")
    parser.add_argument("--axes", type=int, nargs="+", default=list(AXES), choices=list(AXES))
    parser.add_argument("--degradations", type=parse_degradation, nargs="+",
                        default=[parse_degradation(d) for d in ("thick:4", "thick:3", "thick:2")],
                        help="kind:factor, kind thick or kspace (default: thick:4 thick:3 thick:2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=REPO / "Resources")
    parser.add_argument("--picture", type=Path, help="only draw the picture (the first of --models) into this file")
    args = parser.parse_args()
    registry = ModelRegistry()
    models = args.models or [registry.default_name]
    if args.picture:
        picture(args.picture, lumbar_case(args.data, 0), models[0], args.threads)
        return
    variants = [v for name in models for v in (name, f"{name}+check", f"{name}+adapt")]
    args.output.mkdir(parents=True, exist_ok=True)
    # Rows are cached and kept current as `evaluate.sweep` keeps val/'s (weights sha256, product settings).
    rows = sweep([lumbar_case(args.data, axis) for axis in args.axes], args.degradations,
                 [(v, "none") for v in ["cubic"] + variants], args.threads, args.output / "unseen_anatomy_rows.jsonl",
                 lambda name: registry.get(name.partition("+")[0]).sha256)
    text = ("Gain over cubic (PSNR dB over the foreground) on the lumbar spine, an anatomy absent from train/ "
            f"(`{SCAN}`, every axis 1 mm, made thick with a box profile or coarse in-plane by k-space truncation; no "
            "reference).\n\n"
            + table(rows, variants) +
            "\n`NAME`: the network alone; `+check`: the self-check, fallback and consistency step without "
            "adaptation; `+adapt`: as users run it.\n")
    print(text)
    (args.output / "unseen_anatomy.md").write_text(text)
    (args.output / "unseen_anatomy.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
