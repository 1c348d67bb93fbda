#!/usr/bin/env python3
"""The texture-transfer ablation on the held-back `val/` subjects, 4× thick slices (box profile).

Per backbone: the reference-fusion model without a reference and with its paired reference, and the
texture-transfer model fine-tuned from it with a paired reference (the subject's other contrast, also
fed to the reference branch), an unpaired reference (another subject's scan: texture only) and self
(no reference: texture from the input's own acquired planes). The networks alone (no self-check or
adaptation, which texture models do not have). PSNR / SSIM over the foreground, as
`scripts/evaluate.py` scores them. Rows are cached in `<output>/texture_ablation.jsonl`, so an
interrupted run continues where it stopped.

    python scripts/evaluate_texture.py --threads 2 --output Resources
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import numpy as np

import _paths  # noqa: F401
from evaluate import CASES, centred_on, crop_to, degrade
from MRISuperResLib import read_volume, superresolve_with_confidence
from MRISuperResLib.figures import save_panels
from MRISuperResLib.metrics import score

REPO = Path(__file__).resolve().parents[1]
# (backbone, its texture-transfer model); srcnn-tt-l1 is srcnn-tt fine-tuned without the feature losses.
# edsr-tt-l1 is edsr-tt's training without the Gram texture loss.
PAIRS = [("srcnn-ref", "srcnn-tt"), ("srcnn-ref", "srcnn-tt-l1"), ("rfdn-ref", "rfdn-tt"), ("rcan-ref", "rcan-tt"),
         ("edsr-mixed", "edsr-tt"), ("edsr-mixed", "edsr-tt-l1")]
# column: (which model of the pair, reference, reference mode)
COLUMNS = {
    "no reference": (0, "none", None),
    "reference fusion": (0, "paired", None),
    "TT paired": (1, "paired", "paired"),
    "TT unpaired": (1, "unpaired", "unpaired"),
    "TT self": (1, "none", "self"),
}
# Attribution: the texture model run without any texture (its branch sees "none"), with and without the
# paired reference in its reference channels; what its fine-tuning alone changed.
NO_TEXTURE_COLUMNS = {
    "TT, no texture, no reference": (1, "none", "self"),
    "TT, no texture, paired reference": (1, "paired", "paired"),
}
PICTURE_CASE = "openms_p26 T2<-T1"


def run(data: Path, pairs, cases, factor: int, threads: int, cache: Path, pictures: Path | None,
        attribution: bool = False) -> list[dict]:
    done = [json.loads(line) for line in cache.read_text().splitlines()] if cache.exists() else []
    key = lambda r: (r["case"], r["model"], r["column"])  # noqa: E731
    finished = {key(r) for r in done}
    rows = list(done)
    for case in cases:
        name, target_path, reference_path, mask_path, axis = case[:5]
        truth = read_volume(data / target_path)
        references = {"none": None, "paired": read_volume(data / reference_path, "reference"),
                      "unpaired": centred_on(read_volume(data / case[6], "reference"), truth)}
        mask = read_volume(data / mask_path).array if mask_path else None
        low = degrade(truth, "thick", factor, case)
        truth_crop = None
        todo = [("cubic", "cubic", "none", None)] + [
            (column, pair[which], reference, mode) for pair in pairs
            for column, (which, reference, mode) in {**COLUMNS, **(NO_TEXTURE_COLUMNS if attribution else {})}.items()]
        confidences = {}
        for column, model, reference, mode in todo:
            wants_picture = (pictures is not None and name == PICTURE_CASE and model == pairs[0][1]
                             and column in COLUMNS and not confidences.get(column))
            if (name, model, column) in finished and not wants_picture:
                continue
            started = time.perf_counter()
            # The networks alone: texture models are not adapted, so neither is the backbone (no self-check).
            with without_texture(column in NO_TEXTURE_COLUMNS):
                result, confidence = superresolve_with_confidence(
                    low, references[reference], model=model, target_spacing=truth.spacing, threads=threads,
                    reference_mode=mode, self_check=False)
            truth_crop = crop_to(truth.array, result.array.shape)
            if wants_picture:
                confidences[column] = (result.array, confidence.array)
            if (name, model, column) in finished:
                continue
            row = {"case": name, "factor": factor, "model": model, "column": column, "reference": reference,
                   "seconds": round(time.perf_counter() - started, 1),
                   **score(result.array, truth_crop, None if mask is None else crop_to(mask, result.array.shape))}
            if confidence is not None:
                row["mean_confidence"] = round(float(confidence.array[truth_crop > 0].mean()), 3)
            rows.append(row)
            finished.add(key(row))  # the next pair may share this backbone
            with open(cache, "a") as stream:
                stream.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
        if confidences:
            confidence_picture(pictures / "texture_confidence.png", low, truth_crop, confidences, axis, factor)
    return rows


@contextlib.contextmanager
def without_texture(active: bool):
    """Runs in which the pipeline makes no texture source, so that a texture model's branch sees none."""
    if not active:
        yield
        return
    from MRISuperResLib import pipeline

    original = pipeline._texture_source
    pipeline._texture_source = lambda *args, **kwargs: None
    try:
        yield
    finally:
        pipeline._texture_source = original


def confidence_picture(path: Path, low, truth: np.ndarray, confidences: dict, axis: int, factor: int) -> None:
    """Input, texture-transfer output and the confidence maps of the three modes, on a slice that holds
    the thick-slice axis (vertical); confidence 0-1 is drawn on the image's grey scale."""
    axis_np = 2 - axis
    other = [a for a in range(3) if a != axis_np]
    middle = truth.shape[other[0]] // 2

    def cut(array: np.ndarray) -> np.ndarray:
        plane = np.take(array, middle, axis=other[0])
        return plane if axis_np < other[1] else plane.T

    top = float(np.percentile(truth, 99.5))
    thick = np.repeat(low.array, factor, axis=axis_np)[tuple(slice(0, n) for n in truth.shape)]
    panels = [(f"input: {factor}x thick slices", cut(thick)),
              ("TT paired output", cut(confidences["TT paired"][0]))]
    panels += [(f"confidence, {column[3:]} (0-1)", cut(confidence) * top)
               for column, (_, confidence) in confidences.items()]
    panels.append(("truth", cut(truth)))
    save_panels(panels, path, (0.0, top))


def markdown(rows: list[dict], pairs) -> str:
    cubic = [r for r in rows if r["model"] == "cubic"]
    cases = list(dict.fromkeys(r["case"] for r in rows))
    mean = lambda hits, what: float(np.mean([r[what] for r in hits]))  # noqa: E731
    lines = [f"Mean over {len(cases)} val/ cases, 4× thick slices, PSNR (dB) / SSIM over the foreground; "
             f"cubic: **{mean(cubic, 'psnr'):.2f} / {mean(cubic, 'ssim'):.4f}**.\n",
             "| backbone / texture model | " + " | ".join(COLUMNS) + " |", "|" + " --- |" * (len(COLUMNS) + 1)]
    for pair in pairs:
        cells = []
        for column, (which, _, _) in COLUMNS.items():
            hits = [r for r in rows if r["model"] == pair[which] and r["column"] == column]
            cells.append(f"{mean(hits, 'psnr'):.2f} / {mean(hits, 'ssim'):.4f}" if len(hits) == len(cases) else "")
        lines.append(f"| {pair[0]} / {pair[1]} | " + " | ".join(cells) + " |")
    attributed = [pair for pair in pairs if all(
        len([r for r in rows if r["model"] == pair[1] and r["column"] == column]) == len(cases)
        for column in NO_TEXTURE_COLUMNS)]
    if attributed:
        lines += ["", "The same texture models without any texture (their fine-tuning alone):", "",
                  "| texture model | " + " | ".join(NO_TEXTURE_COLUMNS) + " |", "|" + " --- |" * (len(NO_TEXTURE_COLUMNS) + 1)]
        for pair in attributed:
            cells = [f"{mean(hits, 'psnr'):.2f} / {mean(hits, 'ssim'):.4f}" for hits in
                     ([r for r in rows if r["model"] == pair[1] and r["column"] == column] for column in NO_TEXTURE_COLUMNS)]
            lines.append(f"| {pair[1]} | " + " | ".join(cells) + " |")
    lines += ["", "Per subject, PSNR (dB):", "", "| model | reference | " + " | ".join(cases) + " |",
              "|" + " --- |" * (len(cases) + 2)]
    variants = [("cubic", "cubic")] + list(dict.fromkeys(
        (pair[which], column) for pair in pairs for column, (which, _, _) in COLUMNS.items()))
    variants += [(pair[1], column) for pair in attributed for column in NO_TEXTURE_COLUMNS]
    for model, column in variants:
        cells = [next((f"{r['psnr']:.2f}" for r in rows if (r["case"], r["model"], r["column"]) == (case, model, column)),
                      "") for case in cases]
        lines.append(f"| {model} | {column} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def update_cards(rows: list[dict], pairs, cases) -> None:
    """Put each texture model's val/ means per reference mode into its card in models.json."""
    from MRISuperResLib.models.registry import DEFAULT_MODELS_DIR, update_manifest

    update_manifest(DEFAULT_MODELS_DIR, lambda manifest: _update(manifest, rows, pairs, cases))


def _update(manifest: dict, rows: list[dict], pairs, cases) -> None:
    cubic = [r for r in rows if r["model"] == "cubic"]
    for card in manifest["models"]:
        pair = next((p for p in pairs if p[1] == card["name"]), None)
        if pair is None:
            continue
        means = {"cubic": cubic}
        for column, (which, _, _) in COLUMNS.items():
            hits = [r for r in rows if r["model"] == pair[which] and r["column"] == column]
            if len(hits) == len(cases):
                means[column if which else f"{pair[0]} {column}"] = hits
        card["validation"] = {
            "protocol": f"scripts/evaluate_texture.py: 4x box thick slices on {len(cases)} val/ cases, PSNR/SSIM over "
                        "the foreground; see Resources/texture_ablation.md",
            "mean_psnr_db": {k: round(float(np.mean([r["psnr"] for r in v])), 2) for k, v in means.items()},
            "mean_ssim": {k: round(float(np.mean([r["ssim"] for r in v])), 4) for k, v in means.items()},
            "patch_psnr_db": card["validation"].get("patch_psnr_db", {}),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--texture-models", nargs="+", help="texture-transfer models to score (default: all of PAIRS)")
    parser.add_argument("--cases", nargs="+", help="case names to run (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=REPO / "Resources")
    parser.add_argument("--tables-only", action="store_true",
                        help="run nothing: write the tables (and update the cards) from the cached rows")
    parser.add_argument("--no-pictures", action="store_true", help="do not (re)make the confidence picture")
    parser.add_argument("--attribution", action="store_true",
                        help="also run each texture model without texture (with and without the paired reference)")
    parser.add_argument("--update-cards", action="store_true",
                        help="write each texture model's means into its card in models.json")
    args = parser.parse_args()
    pairs = [p for p in PAIRS if not args.texture_models or p[1] in args.texture_models]
    cases = [c for c in CASES if not args.cases or c[0] in args.cases]
    args.output.mkdir(parents=True, exist_ok=True)
    cache = args.output / "texture_ablation.jsonl"
    if args.tables_only:
        names = {c[0] for c in cases}
        unique = {}
        for row in map(json.loads, cache.read_text().splitlines()):
            unique.setdefault((row["case"], row["model"], row["column"]), row)  # an earlier run's duplicates
        rows = [r for r in unique.values() if r["case"] in names]
        pairs = [p for p in pairs if any(r["model"] == p[1] for r in rows)]  # texture models never scored: left out
        last_column = list(COLUMNS)[-1]  # a case is complete when the last model's last column is in
        cases = [c for c in cases if any((r["case"], r["model"], r["column"]) == (c[0], pairs[-1][1], last_column)
                                         for r in rows)]
        rows = [r for r in rows if r["case"] in {c[0] for c in cases}]
    else:
        rows = run(args.data, pairs, cases, args.factor, args.threads, cache,
                   None if args.no_pictures else args.output, args.attribution)
    if args.update_cards:
        update_cards(rows, pairs, cases)
    text = markdown(rows, pairs)
    print(text)
    (args.output / "texture_ablation.md").write_text(text)


if __name__ == "__main__":
    main()
