#!/usr/bin/env python3
"""Score cubic and the trained models on the held-back `val/` subjects, with, without and with a wrong
reference, across degradations; write the tables and figures the README shows.

Each case simulates a low-resolution acquisition along axes that really were acquired at high resolution
(2×, 3×, 4×, 5× thick slices with a box profile; 2×, 4× in-plane by k-space truncation of i and j),
super-resolves back to the truth's spacing, and scores PSNR/SSIM over the foreground (the subject's brain
mask where it has one, else the rule of `MRISuperResLib.metrics`). Every model runs with and without its
reference; the default also with a wrong reference: another subject's scan, placed so that its centre
coincides with the input's. Texture-transfer models have their own ablation (`evaluate_texture.py`).

A model name may carry a suffix: `NAME` alone scores the network itself (no self-check, adaptation,
fallback or consistency with the acquired slices, as `--no-self-check --no-consistency`); `NAME+adapt` is what
a user gets by default (self-check, the default budget of adaptation on the scan's own planes, fallback, and the
projection onto the acquired slices when their profile is clear); `NAME+check` is the same without adaptation
(`adapt=0`): what the self-check's estimate describes. Rows of `+adapt` runs also hold the self-check's
estimate, plotted against the true gain of `NAME+check` where the cache holds it, else of the network alone
(`self_check_vs_true_gain.png`).

Rows are cached in `<output>/evaluation_rows.jsonl` under the model's weights sha256 (and, for product rows,
the product path's `PRODUCT_SETTINGS`: older rows predate some and no longer count), so an interrupted run
continues where it stopped and retrained weights are scored again. Every row records its `precision`; the
network alone moves by at most 0.003 dB between float32 and bfloat16 (README, *How it works*, Precision), so
its rows count in either. Product rows scored in float32 on a CPU whose fine-tuning the plan slows (AVX2 only:
fewer adaptation steps in the same seconds) also record its `vector_extension` and count only on such a CPU.
The default model goes first.

    python scripts/evaluate.py --threads 2 --output Resources
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import _paths  # noqa: F401
from MRISuperResLib import adapt, read_volume, superresolve
from MRISuperResLib.degrade import kspace_truncate, thick_slices
from MRISuperResLib.devices import cpu_vector_extension, installed_torch, uses_bfloat16
from MRISuperResLib.figures import save_panels
from MRISuperResLib.metrics import score
from MRISuperResLib.models.registry import ModelRegistry
from MRISuperResLib.plan import CPU_TRAINING_SHARE_BY_VECTOR_EXTENSION, on_gpu
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


DEGRADATIONS = ("thick:4", "thick:2", "thick:3", "thick:5", "kspace:2", "kspace:4")
TITLES = {"thick": "thick slices", "kspace": "in-plane (k-space truncation of i and j)"}


def parse_degradation(text: str) -> tuple[str, int]:
    kind, factor = text.split(":")
    if kind not in TITLES:
        raise argparse.ArgumentTypeError(f"unknown degradation '{kind}'; use one of {', '.join(TITLES)}")
    return kind, int(factor)


def degrade(truth: Volume, kind: str, factor: int, case) -> Volume:
    if kind == "thick":
        return thick_slices(truth, case[4], factor, "box")
    return kspace_truncate(truth, case[5], factor)


class Case:
    """One case's truth, references and mask, loaded once; its degraded inputs made on demand. A case without
    a paired or wrong reference (None in its tuple: a single-contrast scan) runs without one there."""

    def __init__(self, data: Path, case) -> None:
        self.case, self.name = case, case[0]
        self.truth = read_volume(data / case[1])
        self.references = {"paired": read_volume(data / case[2], "reference") if case[2] else None, "none": None,
                           "wrong": centred_on(read_volume(data / case[6], "reference"), self.truth)
                           if case[6] else None}
        self.mask = read_volume(data / case[3]).array if case[3] else None
        self._inputs: dict[tuple[str, int], Volume] = {}

    def low(self, kind: str, factor: int) -> Volume:
        if (kind, factor) not in self._inputs:
            self._inputs[(kind, factor)] = degrade(self.truth, kind, factor, self.case)
        return self._inputs[(kind, factor)]

    def run(self, kind: str, factor: int, model: str, reference: str, threads: int) -> tuple[np.ndarray, dict]:
        started = time.perf_counter()
        name, _, mode = model.partition("+")
        options = MODE_OPTIONS[mode]
        report: dict = {}
        result = superresolve(self.low(kind, factor), self.references[reference], model=name,
                              target_spacing=self.truth.spacing, threads=threads, report=report, **options)
        truth = crop_to(self.truth.array, result.array.shape)
        mask = None if self.mask is None else crop_to(self.mask, result.array.shape)
        return result.array, {"case": self.name, "degradation": kind, "factor": factor, "model": model,
                              "reference": reference, "seconds": round(time.perf_counter() - started, 1),
                              "precision": precision_now(), **dict(product_settings(model)),
                              **score(result.array, truth, mask),
                              **{k: v for k, v in report.items() if mode and k in REPORTED}}


# `superresolve`'s options per model suffix: the network alone, as users run it, and the same not adapted.
MODE_OPTIONS = {"": {"self_check": False, "consistency": False}, "adapt": {}, "check": {"adapt": 0}}
REPORTED = ("estimated_gain_db", "adapted", "adapted_gain_db", "fell_back_to_cubic", "slice_profile", "adaptation")


def row_key(row: dict) -> tuple:
    return (row["case"], row["degradation"], row["factor"], row["model"], row["reference"], row.get("sha256"),
            settings_of(row))


def cache_key(case: str, kind: str, factor: int, model: str, reference: str, sha: str | None) -> tuple:
    """The `row_key` of the row that scoring `model` now would give."""
    return case, kind, factor, model, reference, sha, product_settings(model)


# What has changed a product row's (`+adapt`, `+check`) numbers besides the weights, in the order it came: the consistency step;
# the self-check and adaptation counting only the error that step leaves; bfloat16, where this machine's CPU
# runs it (adaptation's steps then differ by rounding); more of the scan's own patches without a reference
# (and, for `edsr-large`, the card's step ceiling raised with them).
PRODUCT_SETTINGS = (("consistency", True), ("self_check", "after consistency"), ("precision", "bfloat16"),
                    ("adapt_pairs", f"{adapt.PAIRS}, {adapt.PAIRS_WITH_REFERENCE} with a reference"))


def precision_now() -> str:
    """The precision the networks of a run started now use (`devices.uses_bfloat16` on the auto device)."""
    return "bfloat16" if uses_bfloat16(installed_torch().auto_device) else "float32"


def machine_settings() -> tuple:
    """What this machine changes in a product row besides `PRODUCT_SETTINGS`: in float32 on a CPU whose vector
    extension the plan scales fine-tuning for (`plan.CPU_TRAINING_SHARE_BY_VECTOR_EXTENSION`), the same
    adaptation seconds hold fewer steps, so such rows are keyed by that extension too."""
    extension = cpu_vector_extension()
    if (precision_now() == "float32" and not on_gpu(installed_torch().auto_device)
            and extension in CPU_TRAINING_SHARE_BY_VECTOR_EXTENSION):
        return (("vector_extension", extension),)
    return ()


def is_product(model: str) -> bool:
    """A row of the product path: `NAME+adapt` (as users run it) or `NAME+check` (the same, not adapted)."""
    return model.partition("+")[2] in ("adapt", "check")


def product_settings(model: str) -> tuple:
    """The `PRODUCT_SETTINGS` a product row (`+adapt`, `+check`) scored now has, as (name, value) pairs; rows of
    the network alone have none."""
    if not is_product(model):
        return ()
    return tuple(setting for setting in PRODUCT_SETTINGS
                 if setting[0] != "precision" or setting[1] == precision_now()) + machine_settings()


def settings_of(row: dict) -> tuple:
    """A cached row's `product_settings` (rows that predate a setting lack it)."""
    if not is_product(row["model"]):
        return ()
    extension = row.get("vector_extension")
    return (tuple((name, value) for name, value in PRODUCT_SETTINGS if row.get(name) == value)
            + ((("vector_extension", extension),) if extension in CPU_TRAINING_SHARE_BY_VECTOR_EXTENSION else ()))


def sweep(cases: list, degradations, variants: list[tuple[str, str]], threads: int, cache: Path,
          weights_sha: Callable[[str], str | None], compute: bool = True) -> list[dict]:
    """Score every variant on every case and degradation, skipping (and keeping) what the cache holds; with
    `compute` False, only what the cache holds."""
    rows = [json.loads(line) for line in cache.read_text().splitlines()] if cache.exists() else []
    done = {row_key(r) for r in rows}
    for model, reference in variants if compute else []:  # model-major: the default's results land first
        for kind, factor in degradations:
            for case in cases:
                sha = weights_sha(model)
                if cache_key(case.name, kind, factor, model, reference, sha) in done:
                    continue
                _, row = case.run(kind, factor, model, reference, threads)
                row["sha256"] = sha
                rows.append(row)
                done.add(row_key(row))
                with open(cache, "a") as stream:
                    stream.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    return [r for r in rows if (r["model"], r["reference"]) in variants and r.get("sha256") == weights_sha(r["model"])
            and settings_of(r) == product_settings(r["model"])]


def across_thick_axis(case: Case, shape: tuple[int, ...]) -> Callable[[np.ndarray], np.ndarray]:
    """For pictures: the middle slice of an array of `shape` that holds the case's thick-slice axis, vertical."""
    axis_np = 2 - case.case[4]
    other = [a for a in range(3) if a != axis_np]

    def cut(array: np.ndarray) -> np.ndarray:
        plane = np.take(array, shape[other[0]] // 2, axis=other[0])  # remaining axes keep their order
        return plane if axis_np < other[1] else plane.T

    return cut


def picture(path: Path, case: Case, factor: int, default: str, threads: int) -> None:
    """Before / after / truth on a slice that holds the thick-slice axis (vertical): cubic and the default
    model with and without its reference."""
    axis_np = 2 - case.case[4]
    low = case.low("thick", factor)
    results = {label: case.run("thick", factor, model, reference, threads)[0]
               for label, model, reference in (("cubic", "cubic", "none"), (f"{default} + reference", default, "paired"),
                                               (default, default, "none"))}
    truth = crop_to(case.truth.array, next(iter(results.values())).shape)
    cut = across_thick_axis(case, truth.shape)
    thick = np.repeat(low.array, factor, axis=axis_np)[tuple(slice(0, n) for n in truth.shape)]
    panels = [(f"input: {factor}x thick slices", cut(thick))]
    panels += [(f"{label}  {score(array, truth)['psnr']:.2f} dB", cut(array)) for label, array in results.items()]
    panels.append(("truth", cut(truth)))
    save_panels(panels, path, (0.0, float(np.percentile(truth, 99.5))))


def variant_label(model: str, reference: str) -> str:
    return model if reference == "none" else f"{model} + {'ref' if reference == 'paired' else 'wrong ref'}"


def per_case_table(rows: list[dict], kind: str, factor: int, variants) -> str:
    chosen = [r for r in rows if r["degradation"] == kind and r["factor"] == factor]
    present = {(r["model"], r["reference"]) for r in chosen}
    variants = [v for v in variants if v in present]
    lines = ["| case | " + " | ".join(variant_label(*v) for v in variants) + " |", "|" + " --- |" * (len(variants) + 1)]
    for case in [c[0] for c in CASES if any(r["case"] == c[0] for r in chosen)]:
        cells = []
        for model, reference in variants:
            hit = [r for r in chosen if (r["case"], r["model"], r["reference"]) == (case, model, reference)]
            cells.append(f"{hit[0]['psnr']:.2f} / {hit[0]['ssim']:.4f}" if hit else "")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    means = [mean_cell(chosen, model=m, reference=ref) for m, ref in variants]
    lines.append("| **mean** | " + " | ".join(f"**{cell}**" for cell in means) + " |")
    return "\n".join(lines) + "\n"


def mean_cell(rows: list[dict], **match) -> str:
    hit = [r for r in rows if all(r[k] == v for k, v in match.items())]
    if len(hit) < len(CASES):
        return f"({len(hit)}/{len(CASES)} cases)" if hit else ""
    return f"{np.mean([r['psnr'] for r in hit]):.2f} / {np.mean([r['ssim'] for r in hit]):.4f}"


def mean_of(rows: list[dict], key: str = "psnr", **match) -> float | None:
    """Mean of `key` over the rows that match; None unless every case has one."""
    hit = [r[key] for r in rows if all(r[k] == v for k, v in match.items())]
    return float(np.mean(hit)) if len(hit) == len(CASES) else None


def mean_gain(rows: list[dict], kind: str, factor: int, model: str, reference: str) -> float | None:
    """Mean PSNR gain over cubic; None unless both are complete."""
    base = mean_of(rows, degradation=kind, factor=factor, model="cubic")
    value = mean_of(rows, degradation=kind, factor=factor, model=model, reference=reference)
    return None if base is None or value is None else value - base


def summary_table(rows: list[dict], degradations, variants) -> str:
    """Mean PSNR gain over cubic (dB) per variant and degradation; cubic's own mean PSNR on top."""
    names = [f"{factor}× {'thick' if kind == 'thick' else 'in-plane'}" for kind, factor in degradations]
    lines = ["| mean over val/ | " + " | ".join(names) + " |", "|" + " --- |" * (len(names) + 1)]
    cubic = [mean_of(rows, degradation=k, factor=f, model="cubic") for k, f in degradations]
    lines.append("| cubic (PSNR dB) | " + " | ".join("" if c is None else f"{c:.2f}" for c in cubic) + " |")
    for model, reference in variants:
        if model == "cubic":
            continue
        gains = [mean_gain(rows, kind, factor, model, reference) for kind, factor in degradations]
        cells = ["" if gain is None else f"{gain:+.2f}" for gain in gains]
        lines.append(f"| {variant_label(model, reference)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def gain_plot(rows: list[dict], variants, default: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8.0, 4.0), dpi=110)
    factors = sorted({r["factor"] for r in rows if r["degradation"] == "thick"})
    for model, reference in variants:
        if model == "cubic" or (model != default and reference != "paired"):
            continue
        gains = [(factor, mean_gain(rows, "thick", factor, model, reference)) for factor in factors]
        points = [(factor, gain) for factor, gain in gains if gain is not None]
        if not points:
            continue
        style = {"paired": "o-", "none": "s--", "wrong": "x:"}[reference]
        axis.plot(*zip(*points), style, lw=2.2 if model == default else 1.0, alpha=1.0 if model == default else 0.6,
                  label=f"{model}, {'no' if reference == 'none' else reference} reference")
    axis.axhline(0, color="grey", lw=0.8)
    axis.set_xlabel("thick-slice factor")
    axis.set_ylabel("PSNR gain over cubic (dB), val/ mean")
    axis.set_xticks(factors)
    axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def estimate_plot(rows: list[dict], path: Path, default: str) -> dict:
    """The self-check's estimated gain (on the scan's own planes) against the true gain of the same model on
    the same input (against the truth), one point per model, case, thick-slice factor and reference (a colour
    per model, the default first; filled with the reference). The estimate is of the model before adaptation,
    after the consistency step, so the true gain is that of `NAME+check` where the cache holds it; else, as
    before that mode existed, of the network alone. Returns, per model, how far the estimates were."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cubic = {(r["case"], r["degradation"], r["factor"]): r["psnr"] for r in rows if r["model"] == "cubic"}
    plain = {(r["case"], r["degradation"], r["factor"], r["model"], r["reference"]): r["psnr"] for r in rows}
    points = []
    for r in rows:
        if r["model"].endswith("+adapt") and "estimated_gain_db" in r and r["degradation"] == "thick":
            key = (r["case"], r["degradation"], r["factor"])
            model = r["model"].partition("+")[0]
            checked = plain.get(key + (f"{model}+check", r["reference"]))
            true = checked if checked is not None else plain.get(key + (model, r["reference"]))
            if true is not None and key in cubic:
                points.append((r["estimated_gain_db"], true - cubic[key], r["reference"], model, checked is not None))
    if not points:
        return {}
    figure, axis = plt.subplots(figsize=(4.6, 4.2), dpi=110)
    models = sorted({p[3] for p in points}, key=lambda name: (name != default, name))
    for model, colour in zip(models, plt.get_cmap("tab10").colors):
        for reference, marker in (("paired", "o"), ("none", "s")):
            chosen = [(x, y) for x, y, ref, m, _ in points if ref == reference and m == model]
            if chosen:
                # Filled: with the reference; hollow: without.
                axis.scatter(*zip(*chosen), marker=marker, edgecolors=colour,
                             facecolors=colour if reference == "paired" else "none",
                             label=f"{model}, {'with' if reference == 'paired' else 'without'} reference")
    low = min(min(p[0], p[1]) for p in points) - 0.5
    high = max(max(p[0], p[1]) for p in points) + 0.5
    axis.plot([low, high], [low, high], color="grey", lw=0.8)
    axis.axhline(0, color="grey", lw=0.5, ls=":")
    axis.axvline(0, color="grey", lw=0.5, ls=":")
    axis.set_xlabel("self-check estimate (dB over cubic, scan's own planes)")
    axis.set_ylabel("true gain over cubic (dB, against the truth)\nof the model not adapted")
    axis.legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    errors = {}
    for model in models:
        misses = [x - y for x, y, _, m, _ in points if m == model]
        errors[model] = {"points": len(misses), "within_0.5_db": sum(abs(d) <= 0.5 for d in misses),
                         "against_not_adapted_product": sum(c for *_, m, c in points if m == model),
                         "median_error_db": float(np.median(misses)), "worst_under_db": float(min(misses)),
                         "worst_over_db": float(max(misses)),
                         "below_cubic_missed": sum(y < 0 <= x for x, y, _, m, _ in points if m == model)}
    return errors


def update_cards(rows: list[dict], degradations, variants) -> None:
    """Put each model's val/ means (4× thick slices, and the gain over cubic per degradation) into its card."""
    from MRISuperResLib.models.registry import DEFAULT_MODELS_DIR, update_manifest

    def change(manifest: dict) -> None:
        _update(manifest, rows, degradations, variants)

    update_manifest(DEFAULT_MODELS_DIR, change)


def _update(manifest: dict, rows: list[dict], degradations, variants) -> None:
    columns = {"paired": "with_reference", "none": "without_reference", "wrong": "with_wrong_reference"}
    for card in manifest["models"]:
        mine = [ref for model, ref in variants if model == card["name"]]
        if not mine:
            continue

        def at_4x(key, model, reference="none"):
            value = mean_of(rows, key, degradation="thick", factor=4, model=model, reference=reference)
            return None if value is None else round(value, 4 if key == "ssim" else 2)

        validation = {
            "protocol": "scripts/evaluate.py: box thick slices and in-plane k-space truncation on the "
                        f"{len(CASES)} val/ cases, PSNR/SSIM over the foreground; see Resources/evaluation.md",
            "mean_psnr_db": {"cubic": at_4x("psnr", "cubic"),
                             **{columns[ref]: at_4x("psnr", card["name"], ref) for ref in mine}},
            "mean_ssim": {"cubic": at_4x("ssim", "cubic"),
                          **{columns[ref]: at_4x("ssim", card["name"], ref) for ref in mine}},
            "mean_psnr_gain_db": {},
        }
        for kind, factor in degradations:
            gains = {columns[ref]: round(gain, 2) for ref in mine
                     if (gain := mean_gain(rows, kind, factor, card["name"], ref)) is not None}
            if gains:
                validation["mean_psnr_gain_db"][f"{factor}x {'thick' if kind == 'thick' else 'in-plane'}"] = gains
        # As users get it: the self-check and adaptation on the scan (NAME+adapt rows).
        for ref in [ref for model, ref in variants if model == card["name"] + "+adapt"]:
            validation["mean_psnr_db"][columns[ref] + "_adapted"] = at_4x("psnr", card["name"] + "+adapt", ref)
            validation["mean_ssim"][columns[ref] + "_adapted"] = at_4x("ssim", card["name"] + "+adapt", ref)
        for key in ("patch_psnr_db", "patch_psnr_db_inplane"):
            if key in card["validation"]:
                validation[key] = card["validation"][key]
        card["validation"] = validation


def variants_of(registry, models: list[str], wrong: list[str], product_models: list[str],
                check_models: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(model, reference) pairs to score: each reference-guided model with and without its reference (and with a
    wrong one for `wrong`), the others alone, the product path (+adapt) of `product_models` and the product
    without adaptation (+check) of `check_models`."""
    variants = [("cubic", "none")]
    for name in models:
        if registry.get(name).uses_reference:
            variants += [(name, "paired"), (name, "none")] + ([(name, "wrong")] if name in wrong else [])
        else:
            variants.append((name, "none"))
    for name in product_models:
        variants += [(f"{name}+adapt", "paired"), (f"{name}+adapt", "none")]
    for name in check_models:
        variants += [(f"{name}+check", "paired"), (f"{name}+check", "none")]
    return variants


def table_scope(registry, cache: Path, asked) -> tuple[list[tuple[str, str]], list[tuple[str, int]]]:
    """Every variant and degradation the cache holds for a model the registry still has, in the order a full run
    scores them; degradations in the order DEGRADATIONS lists them, then the others the cache holds."""
    rows = [json.loads(line) for line in cache.read_text().splitlines()] if cache.exists() else []
    known = set(registry.names())
    held = {(r["model"], r["reference"]) for r in rows if r["model"].partition("+")[0] in known}
    default = registry.default_name
    wrong = {m for m, ref in held if ref == "wrong"}
    models = sorted([m for m in registry.names() if m != "cubic" and not registry.get(m).texture_transfer
                     and any(model == m for model, _ in held)], key=lambda name: (name not in wrong, name != default))
    product, check = ([m for m in registry.names() if (f"{m}+{mode}", "none") in held or (f"{m}+{mode}", "paired") in held]
                      for mode in ("adapt", "check"))
    variants = [v for v in variants_of(registry, models, sorted(wrong), product, check) if v in held or v[0] == "cubic"]
    held_degradations = {(r["degradation"], r["factor"]) for r in rows}
    degradations = [parse_degradation(d) for d in DEGRADATIONS]
    degradations += sorted(d for d in held_degradations | set(asked) if d not in degradations)
    return variants, [d for d in degradations if d in held_degradations]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--models", nargs="+", help="default: every trained model without texture transfer")
    parser.add_argument("--degradations", type=parse_degradation, nargs="+",
                        default=[parse_degradation(d) for d in DEGRADATIONS],
                        help=f"kind:factor, kind thick or kspace (default: {' '.join(DEGRADATIONS)})")
    parser.add_argument("--wrong-reference-models", nargs="+", help="also score these with a wrong reference "
                        "(default: the default model); they run first")
    parser.add_argument("--cases", nargs="+", help="case names to run (default: all)")
    parser.add_argument("--product-models", nargs="+", default=[],
                        help="also score these as users get them: self-check and adaptation (NAME+adapt)")
    parser.add_argument("--check-models", nargs="+", default=[],
                        help="also score these as users get them but not adapted (NAME+check): what the self-check's "
                             "estimate describes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=REPO / "Resources",
                        help="folder for the row cache, evaluation.json/.md and the figures")
    parser.add_argument("--no-pictures", action="store_true")
    parser.add_argument("--tables-only", action="store_true", help="write tables and plot from the cache; run nothing")
    parser.add_argument("--update-cards", action="store_true", help="write each model's val/ means into models.json")
    args = parser.parse_args()
    registry = ModelRegistry()
    default = registry.default_name
    models = args.models or [n for n in registry.names() if n != "cubic" and not registry.get(n).texture_transfer]
    wrong = args.wrong_reference_models or [default]
    models = sorted(models, key=lambda name: (name not in wrong, name != default))
    variants = variants_of(registry, models, wrong, args.product_models, args.check_models)

    def weights_sha(name: str) -> str | None:
        return registry.get(name.partition("+")[0]).sha256

    args.output.mkdir(parents=True, exist_ok=True)
    chosen = [c for c in CASES if not args.cases or c[0] in args.cases]
    cases = [] if args.tables_only else [Case(args.data, c) for c in chosen]
    cache = args.output / "evaluation_rows.jsonl"
    sweep(cases, args.degradations, variants, args.threads, cache, weights_sha, compute=not args.tables_only)
    # The tables always cover every model and degradation the cache holds, so scoring a subset (one new model,
    # one degradation) adds to them instead of replacing them.
    variants, degradations = table_scope(registry, cache, args.degradations)
    args.degradations = degradations
    rows = sweep([], degradations, variants, args.threads, cache, weights_sha, compute=False)
    if args.update_cards:
        update_cards(rows, args.degradations, variants)
    text = [f"Mean PSNR gain over cubic (dB) on the {len(CASES)} val/ cases; default model: `{default}`.\n\n",
            summary_table(rows, args.degradations, variants)]
    for kind, factor in args.degradations:
        text += [f"\n### {factor}× {TITLES[kind]}\n", per_case_table(rows, kind, factor, variants)]
    text.append("\nPSNR (dB) / SSIM over the foreground; data range = the truth's max − min.\n")
    print("".join(text))
    (args.output / "evaluation.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.output / "evaluation.md").write_text("".join(text))
    gain_plot(rows, variants, default, args.output / "psnr_gain_vs_factor.png")
    print(json.dumps({"self-check estimate minus true gain": estimate_plot(
        rows, args.output / "self_check_vs_true_gain.png", default)}))
    if not (args.no_pictures or args.tables_only):
        for case in cases:
            if case.name in EXAMPLES:
                picture(args.output / EXAMPLES[case.name], case, 4, default, args.threads)


if __name__ == "__main__":
    main()
