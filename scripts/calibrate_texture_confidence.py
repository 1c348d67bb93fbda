#!/usr/bin/env python3
"""How good are texture transfer's paired matches, and what does their score mean?

On paired data (a subject's other contrast, registered to the target) the true match of every feature
patch is the one at the same place (offset 0). For 128-pixel patches of thick-slice inputs (factors 2-6)
this script measures, over foreground feature positions:

- how often the best-scoring patch within the window is the true one (and within one feature pixel of it);
- the reliability of the raw score (the cosine similarity of standardised scattering patches) and of
  the margin (the score less the mean score of the window's candidates) as a probability that the match
  is the true one, per bin;
- a monotone mapping from margin to that probability per factor (2, 4, 6), fitted on train/ subjects
  (pooled adjacent violators), checked on val/: `texture.CONFIDENCE_CALIBRATION` holds its knots, and the confidence map
  a run writes is the calibrated one (the networks keep the raw score as input).

    python scripts/calibrate_texture_confidence.py --output Resources
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import _paths  # noqa: F401
from MRISuperResLib.devices import set_threads
from MRISuperResLib.scattering import Scattering
from MRISuperResLib.texture import (FOREGROUND_LEVEL, MatchSettings, best_window_offsets,
                                    blur_like_input, calibrate_confidence)
from MRISuperResLib.training.config import TrainingConfig
from MRISuperResLib.training.loop import fixed_validation_set, split_batch
from MRISuperResLib.training.pairs import load_scans

REPO = Path(__file__).resolve().parents[1]
BINS = 12


def matches(scans, config: TrainingConfig, seed: int, scattering: Scattering, radius: int) -> dict[int, dict]:
    """Per thick-slice factor: the raw scores and margins of foreground positions and whether each match
    is exact / within one feature pixel of the truth."""
    found: dict[int, dict] = {}
    for patches, factor in fixed_validation_set(scans, config, seed):
        lr, _, reference, mask = split_batch(patches, config.context)
        paired = mask[:, 0].flatten(1).mean(1) > 0.99
        if not paired.any():
            continue
        lr, reference = lr[paired, :1], reference[paired] * mask[paired]
        with torch.inference_mode():
            query = scattering(lr[:, 0])
            blurred = scattering(blur_like_input(reference[:, 0], (factor, 1)))
            score, dy, dx, margin = best_window_offsets(query, blurred, radius)
        foreground = query[:, :1] > FOREGROUND_LEVEL
        entry = found.setdefault(factor, {"score": [], "margin": [], "exact": [], "near": []})
        entry["score"].append(score[foreground].numpy())
        entry["margin"].append(margin[foreground].numpy())
        entry["exact"].append(((dy == 0) & (dx == 0))[foreground].numpy())
        entry["near"].append(((dy.abs() <= 1) & (dx.abs() <= 1))[foreground].numpy())
    return {f: {k: np.concatenate(v) for k, v in e.items()} for f, e in sorted(found.items())}


def pooled(found: dict[int, dict]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([e[k] for e in found.values()]) for k in ("score", "margin", "exact", "near")}


def reliability(score: np.ndarray, correct: np.ndarray, edges: np.ndarray) -> list[dict]:
    rows = []
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (score >= low) & (score <= high)
        if inside.sum() >= 20:
            rows.append({"low": float(low), "high": float(high), "count": int(inside.sum()),
                         "mean_score": float(score[inside].mean()), "accuracy": float(correct[inside].mean())})
    return rows


def fit_monotone(rows: list[dict]) -> list[tuple[float, float]]:
    """Pooled adjacent violators over the bins (weighted by count): a non-decreasing accuracy per bin."""
    blocks = [[r["mean_score"] * r["count"], r["accuracy"] * r["count"], r["count"]] for r in rows]
    merged: list[list[float]] = []
    for block in blocks:
        merged.append(block)
        while len(merged) > 1 and merged[-2][1] / merged[-2][2] > merged[-1][1] / merged[-1][2]:
            last = merged.pop()
            merged[-1] = [a + b for a, b in zip(merged[-1], last)]
    return [(round(s / n, 4), round(a / n, 4)) for s, a, n in merged]


def expected_calibration_error(probability: np.ndarray, correct: np.ndarray, edges: np.ndarray) -> float:
    total = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (probability >= low) & (probability < high if high < 1 else probability <= high)
        if inside.any():
            total += inside.sum() * abs(probability[inside].mean() - correct[inside].mean())
    return float(total / probability.size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "scripts/configs/edsr-tt.yaml"),
                        help="training config whose train/ and val/ pairs are used")
    parser.add_argument("--data", default=str(REPO.parent / "shared/data"))
    parser.add_argument("--patch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=str(REPO / "Resources"))
    args = parser.parse_args()
    set_threads(args.threads)
    config = TrainingConfig.from_yaml(Path(args.config))
    config.patch_size = args.patch_size
    scattering, radius = Scattering(), MatchSettings().window
    train_specs = [s for s in config.pair_specs("train") if s.reference]
    fit_by_factor = matches(load_scans(Path(args.data), train_specs), config, 1, scattering, radius)
    fit = pooled(fit_by_factor)
    table, edges = {}, {}
    for factor, found in fit_by_factor.items():
        edges[factor] = np.quantile(found["margin"], np.linspace(0, 1, BINS + 1))
        table[float(factor)] = fit_monotone(reliability(found["margin"], found["exact"], edges[factor]))
    check_by_factor = matches(load_scans(Path(args.data), config.pair_specs("val")), config, 2, scattering, radius)
    probability_edges = np.linspace(0, 1, 11)

    def calibrated(found: dict, factor: float) -> np.ndarray:
        return calibrate_confidence(torch.from_numpy(found["margin"].clip(min=0)), factor, table).numpy()

    report = {
        "fitted_on": "train/ pairs with a reference", "checked_on": "val/",
        "table": {str(f): k for f, k in table.items()},
        "train": {str(f): {"positions": int(e["score"].size), "exact": float(e["exact"].mean()),
                           "within_one": float(e["near"].mean())} for f, e in fit_by_factor.items()},
        "train_pooled": {"exact": float(fit["exact"].mean()), "within_one": float(fit["near"].mean())},
        "val": {str(f): {"positions": int(e["score"].size), "exact": float(e["exact"].mean()),
                         "within_one": float(e["near"].mean()), "mean_score": float(e["score"].mean()),
                         "ece_raw_score": expected_calibration_error(e["score"].clip(0, 1), e["exact"],
                                                                     probability_edges),
                         "ece_calibrated": expected_calibration_error(calibrated(e, f), e["exact"],
                                                                      probability_edges),
                         "reliability_raw_score": reliability(e["score"], e["exact"],
                                                              np.quantile(e["score"], np.linspace(0, 1, BINS + 1))),
                         "reliability_calibrated": reliability(calibrated(e, f), e["exact"], probability_edges)}
                for f, e in check_by_factor.items()},
    }
    output = Path(args.output)
    (output / "texture_confidence_calibration.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({"table": report["table"], "train": report["train"],
                      "val": {f: {k: v for k, v in e.items() if not k.startswith("reliability")}
                              for f, e in report["val"].items()}}, indent=1))
    picture(report, output / "texture_confidence_calibration.png")


def picture(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 4.5))
    for (factor, found), colour in zip(report["val"].items(), ("tab:blue", "tab:orange", "tab:green")):
        for key, style, label in (("reliability_raw_score", "o--", "raw score"),
                                  ("reliability_calibrated", "s-", "calibrated (the map)")):
            rows = found[key]
            axis.plot([r["mean_score"] for r in rows], [r["accuracy"] for r in rows], style, color=colour,
                      label=f"{factor}x thick, {label}", markersize=4)
    axis.plot([0, 1], [0, 1], color="grey", linewidth=0.8, label="perfect calibration")
    axis.set_xlabel("confidence")
    axis.set_ylabel("share of matches that are the true patch")
    axis.set_title("Texture matches on val/ (paired; 2x, 4x, 6x thick)")
    axis.set_xlim(0, 1), axis.set_ylim(0, 1)
    axis.legend(loc="upper left", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
