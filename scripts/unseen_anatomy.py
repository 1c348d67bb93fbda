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
import time
from pathlib import Path

import numpy as np

import _paths  # noqa: F401
from evaluate import (MODE_OPTIONS, REPO, REPORTED, crop_to, parse_degradation, precision_now, product_settings,
                      settings_of)
from MRISuperResLib import read_volume, superresolve
from MRISuperResLib.degrade import kspace_truncate, thick_slices
from MRISuperResLib.figures import save_panels
from MRISuperResLib.metrics import score
from MRISuperResLib.models.registry import ModelRegistry

SCAN = "real_lr/spine_lumbar_t2/t2.nii.gz"
AXES = {0: "x (sagittal slices)", 1: "y (coronal slices)", 2: "z (axial slices)"}
# The picture: an axial slice through a lumbar vertebral body, its spinal canal and the muscles behind it.
PICTURE_SLICE, PICTURE_COLUMNS = 100, slice(60, 200)


def degrade(truth, kind: str, axis: int, factor: int):
    """Thick slices along `axis`, or k-space truncation of the other two (the plane whose normal is `axis`)."""
    if kind == "thick":
        return thick_slices(truth, axis, factor, "box")
    return kspace_truncate(truth, tuple(a for a in AXES if a != axis), factor)


def run(truth, kind: str, axis: int, factor: int, variant: str, threads: int) -> dict:
    name, _, mode = variant.partition("+")
    low = degrade(truth, kind, axis, factor)
    report: dict = {}
    started = time.perf_counter()
    result = superresolve(low, None, model=name, target_spacing=truth.spacing, threads=threads, report=report,
                          **MODE_OPTIONS[mode])
    return {"degradation": kind, "axis": axis, "factor": factor, "model": variant, "seconds": round(time.perf_counter() - started, 1),
            "precision": precision_now(), **dict(product_settings(variant)),
            **score(result.array, crop_to(truth.array, result.array.shape)),
            **{k: v for k, v in report.items() if mode and k in REPORTED}}


def picture(path: Path, truth, model: str, threads: int) -> None:
    """Input, cubic, the network alone, as users run it, and the truth at 4× sagittal slices, on an axial slice
    (the thick axis, left-right, across: the slab is 38 voxels wide)."""
    low = degrade(truth, "thick", 0, 4)
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


def key(row: dict) -> tuple:
    """A cached row's identity; the product's settings it has as `evaluate.settings_of` reads them."""
    return row["degradation"], row["axis"], row["factor"], row["model"], row.get("sha256"), settings_of(row)


def table(rows: list[dict], variants: list[str]) -> str:
    """PSNR of cubic, and every variant's gain over it, per degradation, axis and factor."""
    lines = ["| degradation | cubic (dB) | " + " | ".join(variants) + " |", "|" + " --- |" * (len(variants) + 2)]
    for kind, label in (("thick", "thick along {axis}"), ("kspace", "in-plane, normal {axis}")):
        for axis in AXES:
            for factor in sorted({r["factor"] for r in rows}, reverse=True):
                where = (kind, axis, factor)
                cubic = [r["psnr"] for r in rows if (r["degradation"], r["axis"], r["factor"], r["model"]) == (*where, "cubic")]
                if not cubic:
                    continue
                cells = []
                for variant in variants:
                    hit = [r for r in rows if (r["degradation"], r["axis"], r["factor"], r["model"]) == (*where, variant)]
                    cells.append(f"{hit[0]['psnr'] - cubic[0]:+.2f}" if hit else "")
                lines.append(f"| {label.format(axis=AXES[axis])}, {factor}× | {cubic[0]:.2f} | " + " | ".join(cells) + " |")
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
    variants = [v for name in models for v in (name, f"{name}+check", f"{name}+adapt")]
    truth = read_volume(args.data / SCAN)
    if args.picture:
        picture(args.picture, truth, models[0], args.threads)
        return
    args.output.mkdir(parents=True, exist_ok=True)
    cache = args.output / "unseen_anatomy_rows.jsonl"
    rows = [json.loads(line) for line in cache.read_text().splitlines()] if cache.exists() else []

    def sha(variant: str) -> str | None:
        return registry.get(variant.partition("+")[0]).sha256

    def wanted(kind: str, axis: int, factor: int, variant: str) -> tuple:
        return kind, axis, factor, variant, sha(variant), product_settings(variant)

    def current(row: dict) -> bool:
        return key(row) == wanted(row["degradation"], row["axis"], row["factor"], row["model"])

    done = {key(r) for r in rows if current(r)}
    for kind, factor in args.degradations:
        for axis in args.axes:
            for variant in ["cubic"] + variants:
                if wanted(kind, axis, factor, variant) in done:
                    continue
                row = {**run(truth, kind, axis, factor, variant, args.threads), "sha256": sha(variant)}
                rows.append(row)
                done.add(key(row))
                with open(cache, "a") as stream:
                    stream.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    current_rows = [r for r in rows if current(r)]
    text = ("Gain over cubic (PSNR dB over the foreground) on the lumbar spine, an anatomy absent from train/ "
            f"(`{SCAN}`, every axis 1 mm, made thick with a box profile or coarse in-plane by k-space truncation; no "
            "reference).\n\n"
            + table(current_rows, variants) +
            "\n`NAME`: the network alone; `+check`: the self-check, fallback and consistency step without "
            "adaptation; `+adapt`: as users run it.\n")
    print(text)
    (args.output / "unseen_anatomy.md").write_text(text)
    (args.output / "unseen_anatomy.json").write_text(json.dumps(current_rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
