#!/usr/bin/env python3
"""How close the product's rigid registration lands on real pairs: each val/ case's 4× thick input as the
fixed image, its paired reference moved by known rigid transforms (as it is, 10 mm along the diagonal,
6° and 10° about (1, 1, 0), 8° about (0, 0.6, 0.8) with 5 mm), registered back with
`registration.register_rigid`. The error is the mean distance, over 27 points spread through the input,
between where the found and the true transform send them; also the seconds each registration took.

    python scripts/registration_accuracy.py --threads 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

import _paths  # noqa: F401
from evaluate import CASES, degrade
from MRISuperResLib import read_volume
from MRISuperResLib.registration import register_rigid
from MRISuperResLib.volume import Volume
from reference_robustness import ROTATION_AXIS, rigidly_moved

REPO = Path(__file__).resolve().parents[1]
MOVES = {"as it is": (0.0, 0.0, ROTATION_AXIS), "10 mm": (10.0, 0.0, ROTATION_AXIS), "6°": (0.0, 6.0, ROTATION_AXIS),
         "10°": (0.0, 10.0, ROTATION_AXIS), "8° + 5 mm": (5.0, 8.0, (0.0, 0.6, 0.8))}


def spread_points(volume: Volume) -> list[tuple[float, ...]]:
    image = volume.to_sitk()
    size = image.GetSize()
    return [image.TransformContinuousIndexToPhysicalPoint([f * (size[0] - 1), g * (size[1] - 1), h * (size[2] - 1)])
            for f in (0.2, 0.5, 0.8) for g in (0.2, 0.5, 0.8) for h in (0.2, 0.5, 0.8)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    print("| case | " + " | ".join(MOVES) + " |\n|" + " --- |" * (len(MOVES) + 1))
    for case in CASES:
        truth, reference = read_volume(args.data / case[1]), read_volume(args.data / case[2], "reference")
        fixed = degrade(truth, "thick", 4, case)
        points = spread_points(fixed)
        cells = []
        for shift, degrees, axis in MOVES.values():
            true, misplaced = rigidly_moved(reference, shift, degrees, axis)
            started = time.perf_counter()
            found = register_rigid(fixed, misplaced)
            seconds = time.perf_counter() - started
            # misplaced(p) = reference(T(p)): the input's point p shows in `misplaced` at T⁻¹(p).
            inverse = true.GetInverse()
            error = np.mean([np.linalg.norm(np.subtract(found.TransformPoint(p), inverse.TransformPoint(p)))
                             for p in points])
            cells.append(f"{error:.2f} mm, {seconds:.0f} s")
        print(f"| {case[0]} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
