#!/usr/bin/env python3
"""How much cropping the slice networks to the signal (foreground.py) moves PSNR on val/: each case at 4×
thick slices, with the paired reference and without, against the full-slice rows that scripts/evaluate.py
cached in Resources/evaluation_rows.jsonl for the same weights (the rows were made before cropping existed;
rerun them with `inference.predict_planes(..., crop_to_signal=False)` if the weights change).
    python scripts/signal_crop_check.py [--model edsr-large] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import _paths  # noqa: F401
import evaluate
from MRISuperResLib.models.registry import ModelRegistry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=evaluate.REPO.parent / "shared" / "data")
    parser.add_argument("--model", default="edsr-large")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    sha = ModelRegistry().get(args.model).sha256
    cached = [json.loads(line) for line in (evaluate.REPO / "Resources" / "evaluation_rows.jsonl").read_text().splitlines()]
    for reference in ("paired", "none"):
        for spec in evaluate.CASES:
            case = evaluate.Case(args.data, spec)
            _, row = case.run("thick", 4, args.model, reference, args.threads)
            full = [r["psnr"] for r in cached if (r["case"], r["degradation"], r["factor"], r["model"], r["reference"],
                                                   r.get("sha256")) == (case.name, "thick", 4, args.model, reference, sha)]
            print(json.dumps({"case": case.name, "reference": reference, "cropped_psnr": round(row["psnr"], 4),
                              "full_psnr": round(full[0], 4) if full else None,
                              "difference_db": round(row["psnr"] - full[0], 4) if full else None}), flush=True)


if __name__ == "__main__":
    main()
