#!/usr/bin/env python3
"""Is a real tumour kept, and is none invented? The BraTS val/ case (t2w, t1n as reference), 4× thick slices.

The tumour: the FLAIR-hyperintense region (t2f above the brain's mean + 2.5 SD, its largest connected
component); its surround: a 3-voxel shell outside it, within the brain. For cubic and the default model (with
and without the reference, network alone and as a user runs it) the lesion-to-surround contrast ratio and the
lesion's size (voxels of the shell-plus-lesion region above the truth's half-contrast level) are compared
with the truth's.

Invented pathology: the reference's tumour region is copied onto its mirror image across the mid-sagittal
plane (healthy tissue), and the model runs with that reference and with the original one; the output's mean
change in the mirrored region is compared with the noise level of the truth (robust SD of its difference
from a 3 × 3 × 3 median).

    python scripts/pathology_brats.py --threads 2 --output Resources
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

import _paths  # noqa: F401
from evaluate import CASES, REPO, Case, crop_to
from MRISuperResLib import read_volume, superresolve
from MRISuperResLib.models.registry import ModelRegistry

CASE = "brats t2w<-t1n"
FLAIR = "val/brain_brats_preprocessed/t2f.nii.gz"
SHELL_VOXELS = 3


def tumour_and_surround(flair: np.ndarray, brain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    inside = flair[brain]
    bright = (flair > inside.mean() + 2.5 * inside.std()) & brain
    components = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.GetImageFromArray(bright.astype(np.uint8))))
    tumour = sitk.GetArrayFromImage(components) == 1
    grown = sitk.GetArrayFromImage(sitk.BinaryDilate(sitk.GetImageFromArray(tumour.astype(np.uint8)),
                                                     [SHELL_VOXELS] * 3)) > 0
    return tumour, grown & ~tumour & brain


def contrast_and_size(image: np.ndarray, tumour: np.ndarray, surround: np.ndarray, level: float) -> tuple[float, int]:
    region = tumour | surround
    return float(image[tumour].mean() / image[surround].mean()), int((image[region] > level).sum())


def noise_level(truth: np.ndarray, brain: np.ndarray) -> float:
    median = sitk.GetArrayFromImage(sitk.Median(sitk.GetImageFromArray(truth.astype(np.float32)), [1, 1, 1]))
    residual = (truth - median)[brain]
    return float(1.4826 * np.median(np.abs(residual - np.median(residual))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--model", default=None, help="default: the registry's default model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=REPO / "Resources")
    args = parser.parse_args()
    model = args.model or ModelRegistry().default_name
    case = Case(args.data, next(c for c in CASES if c[0] == CASE))
    low = case.low("thick", 4)
    truth = case.truth.array
    brain = truth > 0.05 * np.percentile(truth, 99)
    tumour, surround = tumour_and_surround(read_volume(args.data / FLAIR).array, brain)

    # The reference with its tumour region copied onto the mirror image of that region (x flipped).
    paired = case.references["paired"]
    mirrored = tumour[..., ::-1]
    if (mirrored & tumour).mean() > 0.1 * tumour.mean():
        raise SystemExit("the tumour's mirror image overlaps the tumour; pick another healthy region")
    transplanted = paired.array.copy()
    transplanted[mirrored] = paired.array[..., ::-1][mirrored]
    references = {"none": None, "paired": paired, "transplanted": paired.with_array(transplanted)}

    alone = {"self_check": False, "consistency": False}  # the network itself
    runs = [("cubic", "none", {}), (model, "none", alone), (model, "paired", alone),
            (model, "transplanted", alone), (f"{model}+adapt", "none", {}),
            (f"{model}+adapt", "paired", {})]
    outputs, rows = {}, []
    for name, reference, options in runs:
        started = time.perf_counter()
        result = superresolve(low, references[reference], model=name.partition("+")[0],
                              target_spacing=case.truth.spacing, threads=args.threads, **options).array
        outputs[(name, reference)] = result
        print(f"{name} {reference}: {time.perf_counter() - started:.0f} s", flush=True)
    shape = outputs[("cubic", "none")].shape
    truth, tumour, surround, brain, mirrored = (crop_to(a, shape) for a in (truth, tumour, surround, brain, mirrored))
    level = (truth[tumour].mean() + truth[surround].mean()) / 2
    truth_ratio, truth_size = contrast_and_size(truth, tumour, surround, level)
    for (name, reference), image in outputs.items():
        if reference == "transplanted":
            continue
        ratio, size = contrast_and_size(image, tumour, surround, level)
        rows.append({"model": name, "reference": reference, "contrast_ratio": round(ratio, 4),
                     "ratio_change_percent": round(100 * ratio / truth_ratio - 100, 1),
                     "contrast_change_percent": round(100 * (ratio - 1) / (truth_ratio - 1) - 100, 1),
                     "size_voxels": size, "size_change_percent": round(100 * size / truth_size - 100, 1)})
    change = outputs[(model, "transplanted")][mirrored] - outputs[(model, "paired")][mirrored]
    sigma = noise_level(truth, brain)
    invented = {"region_voxels": int(mirrored.sum()), "mean_change": round(float(change.mean()), 3),
                "mean_absolute_change": round(float(np.abs(change).mean()), 3), "noise_sigma": round(sigma, 3),
                "reference_change_there": round(float(np.abs(crop_to(transplanted - paired.array, shape)[mirrored]).mean()), 3)}
    summary = {"case": CASE, "model": model, "tumour_voxels": int(tumour.sum()), "truth_contrast_ratio": round(truth_ratio, 4),
               "truth_size_voxels": truth_size, "rows": rows, "reference_only_lesion": invented}
    (args.output / "pathology_brats.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
