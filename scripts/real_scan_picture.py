#!/usr/bin/env python3
"""A genuinely thick-slice scan, which has no truth: cubic interpolation and a model as users run it, side by
side on the middle coronal and sagittal slices (rows along the thick axis). The data's README
files such scans under real_lr/: look at the results, no metrics. The run's own estimate of its gain over
cubic (the self-check, on the scan's acquired planes) and what adaptation did are printed.

    python scripts/real_scan_picture.py --threads 2 --output Resources/real_tcga_t2.png
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import _paths  # noqa: F401
from evaluate import REPO
from MRISuperResLib import read_volume, superresolve
from MRISuperResLib.figures import save_panels
from MRISuperResLib.models.registry import ModelRegistry

SCAN = "real_lr/brain_tcga_fg6692_native/t2.nii.gz"
REPORTED = ("slice_profile", "estimated_gain_db", "adapted", "adaptation_steps", "adapted_gain_db", "fell_back_to_cubic")


def middle_slices(array: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The middle coronal (fixed j) and sagittal (fixed i) slices of a (k, j, i) array, k up and j reversed: with
    LPS axes near the scanner's, superior up, the patient's right on the left and anterior on the left."""
    _, j, i = array.shape
    return [("coronal", array[::-1, j // 2, :]), ("sagittal", array[::-1, ::-1, i // 2])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--scan", default=SCAN, help=f"path under --data (default {SCAN})")
    parser.add_argument("--model", help="default: the default model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=REPO / "Resources" / "real_tcga_t2.png")
    args = parser.parse_args()
    model = args.model or ModelRegistry().default_name
    scan = read_volume(args.data / args.scan)
    cubic = superresolve(scan, model="cubic", threads=args.threads)
    report: dict = {}
    started = time.perf_counter()
    result = superresolve(scan, model=model, threads=args.threads, report=report)
    seconds = time.perf_counter() - started
    print(f"{model} as users run it: {seconds:.0f} s; " + ", ".join(f"{k} {report[k]}" for k in REPORTED if k in report))
    low, high = np.percentile(scan.array, [0.5, 99.5])
    panels = []
    for (view, cubic_slice), (_, model_slice) in zip(middle_slices(cubic.array), middle_slices(result.array)):
        panels += [(f"cubic, {view}", cubic_slice), (f"{model}, {view}", model_slice)]
    print("wrote", save_panels(panels, args.output, (float(low), float(high))))


if __name__ == "__main__":
    main()
