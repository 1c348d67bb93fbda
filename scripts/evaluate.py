#!/usr/bin/env python3
"""Score cubic and every trained model on the held-back `val/` subjects, with and without reference.

Each case simulates thick slices (box profile) along an axis that really was acquired at high resolution,
super-resolves back to the truth's spacing, and scores PSNR/SSIM over the foreground (the subject's
brain mask where it has one, else the rule of `MRISuperResLib.metrics`).

    python scripts/evaluate.py --factors 4 --threads 2 --output Resources/evaluation
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import _paths  # noqa: F401
from MRISuperResLib import read_volume, superresolve
from MRISuperResLib.degrade import thick_slices
from MRISuperResLib.metrics import score
from MRISuperResLib.models.registry import ModelRegistry

REPO = Path(__file__).resolve().parents[1]
# (case name, target, reference, mask, degraded axis): every val subject, each axis truly high resolution.
CASES = [
    ("openms_p26 T2<-T1", "val/brain_openms_p26/T2.nii.gz", "val/brain_openms_p26/T1.nii.gz", None, 0),
    ("openms_p26 FLAIR<-T1", "val/brain_openms_p26/FLAIR.nii.gz", "val/brain_openms_p26/T1.nii.gz", None, 0),
    ("brats t2w<-t1n", "val/brain_brats_preprocessed/t2w.nii.gz", "val/brain_brats_preprocessed/t1n.nii.gz", None, 2),
    ("brats2013_p5 flair<-t1c", "val/brain_brats2013_pat0005/flair_zscored.nii.gz",
     "val/brain_brats2013_pat0005/t1c_zscored.nii.gz", "val/brain_brats2013_pat0005/brainmask.nii.gz", 2),
    ("spine_sub05 MTon<-MToff", "val/spine_sct_sub05/MTon.nii.gz", "val/spine_sct_sub05/MToff.nii.gz", None, 1),
]


def crop_to(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return array[tuple(slice(0, n) for n in shape)]


def evaluate_case(data: Path, case, factor: int, models: list[str], threads: int) -> list[dict]:
    name, target_path, reference_path, mask_path, axis = case
    truth = read_volume(data / target_path)
    reference = read_volume(data / reference_path, "reference")
    mask = read_volume(data / mask_path).array if mask_path else None
    thick = thick_slices(truth, axis, factor, "box")
    rows = []
    registry = ModelRegistry()
    for model in models:
        card = registry.get(model)
        for with_reference in ([True, False] if card.uses_reference else [False]):
            started = time.perf_counter()
            result = superresolve(thick, reference if with_reference else None, model=model,
                                  target_spacing=truth.spacing, threads=threads)
            seconds = time.perf_counter() - started
            truth_crop = crop_to(truth.array, result.array.shape)
            mask_crop = None if mask is None else crop_to(mask, result.array.shape)
            rows.append({"case": name, "factor": factor, "axis": axis, "model": model,
                         "reference": with_reference, "seconds": round(seconds, 1),
                         **score(result.array, truth_crop, mask_crop)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    variants = list(dict.fromkeys((r["model"], r["reference"]) for r in rows))
    header = "| case | factor | " + " | ".join(f"{m}{' + ref' if ref else ''}" for m, ref in variants) + " |"
    lines = [header, "|" + " --- |" * (len(variants) + 2)]
    for case, factor in dict.fromkeys((r["case"], r["factor"]) for r in rows):
        cells = []
        for m, ref in variants:
            hit = [r for r in rows if (r["case"], r["factor"], r["model"], r["reference"]) == (case, factor, m, ref)]
            cells.append(f"{hit[0]['psnr']:.2f} / {hit[0]['ssim']:.4f}" if hit else "")
        lines.append(f"| {case} | {factor}× | " + " | ".join(cells) + " |")
    for factor in dict.fromkeys(r["factor"] for r in rows):
        means = []
        for m, ref in variants:
            hit = [r for r in rows if (r["factor"], r["model"], r["reference"]) == (factor, m, ref)]
            means.append(f"**{np.mean([r['psnr'] for r in hit]):.2f} / {np.mean([r['ssim'] for r in hit]):.4f}**")
        lines.append(f"| **mean** | {factor}× | " + " | ".join(means) + " |")
    return "\n".join(lines) + "\n\nPSNR (dB) / SSIM over the foreground, truth's full data range.\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--factors", type=int, nargs="+", default=[4])
    parser.add_argument("--models", nargs="+", help="default: every model in the registry")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, help="folder for evaluation.json and evaluation.md")
    args = parser.parse_args()
    models = args.models or ModelRegistry().names()
    rows = [row for factor in args.factors for case in CASES
            for row in evaluate_case(args.data, case, factor, models, args.threads)]
    table = markdown(rows)
    print(table)
    if args.output:
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "evaluation.json").write_text(json.dumps(rows, indent=2) + "\n")
        (args.output / "evaluation.md").write_text(table)


if __name__ == "__main__":
    main()
