#!/usr/bin/env python3
"""Does a bad reference ever hurt? Score a model on val/ (4× thick) with references that are misaligned
(shifted 2, 5, 10 mm; rotated 3, 6, 10°), of another subject, of another anatomy, or of a contrast relation
no model saw (the reference's intensities inverted), against the same model without a reference, in two
registration modes: `never` (`--no-register-reference`: the gate alone) and `default` (a user's run: registered,
and moved only when its edges then match the input's better). The self-check, adaptation and the consistency
step (which acts alike with and without a reference) are off, so the rows measure the reference alone; the modes `never+check` and `default+check` add the self-check (without
adaptation), whose reference check drops a reference that does not help on the scan's own planes, as in a
user's run (a second table).

Rows are cached in `<output>/reference_robustness_rows.jsonl` (by model sha256); the table goes to
`<output>/reference_robustness.md`. Rows from before the modes existed (`registered` true: a registration that
was always kept) are left in the file and out of the table.

    python scripts/reference_robustness.py --threads 2 --models edsr-large --output Resources
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

import _paths  # noqa: F401
from evaluate import CASES, REPO, Case, centred_on, crop_to
from MRISuperResLib import read_volume, superresolve
from MRISuperResLib.metrics import score
from MRISuperResLib.models.registry import ModelRegistry
from MRISuperResLib.volume import Volume

SHIFTS_MM = (2, 5, 10)
ROTATIONS_DEGREES = (3, 6, 10)
OTHER_ANATOMY = {"brain": "val/spine_sct_sub05/MToff.nii.gz", "spine": "val/brain_openms_p26/T1.nii.gz"}


ROTATION_AXIS = (2 ** -0.5, 2 ** -0.5, 0.0)


def rigidly_moved(volume: Volume, shift_mm: float = 0.0, degrees: float = 0.0, axis=ROTATION_AXIS
                  ) -> tuple[sitk.VersorRigid3DTransform, Volume]:
    """The transform T (shift along the (1, 1, 1) diagonal by `shift_mm`, rotation by `degrees` about `axis`
    through the centre) and `volume`'s content moved by it on its own grid: its value at p is `volume`'s at T(p)."""
    image = volume.to_sitk()
    transform = sitk.VersorRigid3DTransform()
    transform.SetCenter(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))
    transform.SetTranslation(tuple(np.full(3, shift_mm / np.sqrt(3))))
    if degrees:
        transform.SetRotation(axis, float(np.deg2rad(degrees)))
    resampled = sitk.Resample(image, image, transform, sitk.sitkLinear, float(volume.array.min()))
    return transform, Volume.from_sitk(resampled)


def moved(volume: Volume, shift_mm: float = 0.0, degrees: float = 0.0) -> Volume:
    """`volume`'s content moved rigidly on its own grid: shifted along the (1, 1, 1) diagonal by `shift_mm`,
    or rotated by `degrees` about the axis (1, 1, 0) through its centre."""
    return rigidly_moved(volume, shift_mm, degrees)[1]


def inverted(volume: Volume) -> Volume:
    return volume.with_array(volume.array.max() + volume.array.min() - volume.array)


def variants(case: Case, data: Path) -> dict[str, Volume | None]:
    paired = case.references["paired"]
    anatomy = "spine" if "spine" in case.name else "brain"
    out = {"none": None, "aligned": paired}
    out.update({f"shifted {d} mm": moved(paired, shift_mm=d) for d in SHIFTS_MM})
    out.update({f"rotated {a}°": moved(paired, degrees=a) for a in ROTATIONS_DEGREES})
    out["other subject"] = case.references["wrong"]
    out["other anatomy"] = centred_on(read_volume(data / OTHER_ANATOMY[anatomy], "reference"), case.truth)
    out["other contrast (inverted)"] = inverted(paired)
    return out


# (register_reference, self_check) for each mode
MODES = {"never": (False, False), "default": (True, False), "never+check": (False, True), "default+check": (True, True)}


def _with_mode(row: dict) -> dict:
    """Rows written before the modes existed: `registered` false is today's `never`."""
    if "mode" not in row:
        row["mode"] = "never" if not row.get("registered") else "always (before the modes)"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--models", nargs="+", default=None, help="default: the registry's default model")
    parser.add_argument("--cases", nargs="+", help="case names (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=REPO / "Resources")
    parser.add_argument("--modes", nargs="+", choices=tuple(MODES), default=["never", "default"])
    args = parser.parse_args()
    registry = ModelRegistry()
    models = args.models or [registry.default_name]
    cache = args.output / "reference_robustness_rows.jsonl"
    rows = [_with_mode(json.loads(line)) for line in cache.read_text().splitlines()] if cache.exists() else []
    done = {(r["case"], r["model"], r["sha256"], r["variant"], r["mode"]): r for r in rows}
    for spec in [c for c in CASES if not args.cases or c[0] in args.cases]:
        case = Case(args.data, spec)
        low = case.low("thick", 4)
        for name in models:
            sha = registry.get(name).sha256
            for variant, reference in variants(case, args.data).items():
                for mode in (["never"] if reference is None else args.modes):
                    key = (case.name, name, sha, variant, mode)
                    if key in done:
                        continue
                    report: dict = {}
                    started = time.perf_counter()
                    result = superresolve(low, reference, model=name, target_spacing=case.truth.spacing,
                                          threads=args.threads, register_reference=MODES[mode][0],
                                          self_check=MODES[mode][1], adapt=0, report=report, consistency=False)
                    truth = crop_to(case.truth.array, result.array.shape)
                    mask = None if case.mask is None else crop_to(case.mask, result.array.shape)
                    row = {"case": case.name, "model": name, "sha256": sha, "variant": variant, "mode": mode,
                           "reference": report.get("reference", "none"), "registration": report.get("registration"),
                           "reference_gain_db": report.get("reference_gain_db"),
                           "seconds": round(time.perf_counter() - started, 1), **score(result.array, truth, mask)}
                    done[key] = row
                    rows.append(row)
                    with open(cache, "a") as stream:
                        stream.write(json.dumps(row) + "\n")
                    print(json.dumps(row), flush=True)
    # The tables cover every model whose current weights have rows, so scoring one more model adds to them.
    scored = {r["model"] for r in rows if r["model"] in registry.names() and r["sha256"] == registry.get(r["model"]).sha256}
    shown = sorted(scored, key=lambda name: (name != registry.default_name, name))
    text = table(rows, shown, registry) + "\n" + table(rows, shown, registry, checked=True)
    (args.output / "reference_robustness.md").write_text(text)
    print(text)


def table(rows: list[dict], models: list[str], registry: ModelRegistry, checked: bool = False) -> str:
    """Per model and variant: the mean and worst PSNR change against no reference, without and with
    registration, and how often the reference was kept (by the gate; `checked`: by the gate and the
    self-check's reference check)."""
    modes = ("never+check", "default+check") if checked else ("never", "default")
    kept_by = "gate and self-check kept" if checked else "gate kept"
    lines = [f"| model | reference | {'gate and self-check' if checked else 'gate only'} (`--no-register-reference`): "
             f"Δ PSNR vs none, mean (worst) | {kept_by} | default (registered, moved when that matches better"
             f"{', then the self-check' if checked else ''}): Δ mean (worst) | {kept_by} | registration kept |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name in models:
        sha = registry.get(name).sha256
        mine = [r for r in rows if r["model"] == name and r["sha256"] == sha and r["mode"] in MODES]
        baseline = {r["case"]: r["psnr"] for r in mine if r["variant"] == "none"}
        for variant in dict.fromkeys(r["variant"] for r in mine if r["variant"] != "none" and r["mode"] in modes):
            cells = []
            for mode in modes:
                chosen = [r for r in mine if r["variant"] == variant and r["mode"] == mode and r["case"] in baseline]
                if not chosen:
                    cells += ["", ""] + ([""] if mode == modes[1] else [])
                    continue
                deltas = [r["psnr"] - baseline[r["case"]] for r in chosen]
                kept = sum(r["reference"] == "used" for r in chosen)
                cells += [f"{np.mean(deltas):+.2f} ({min(deltas):+.2f})", f"{kept}/{len(chosen)}"]
                if mode == modes[1]:
                    moved = sum(bool((r.get("registration") or {}).get("kept")) for r in chosen)
                    cells.append(f"{moved}/{len(chosen)}")
            lines.append(f"| `{name}` | {variant} | " + " | ".join(cells) + " |")
    cases = sorted({r["case"] for r in rows if r["mode"] in modes})
    run = ("the self-check without adaptation (its reference check may drop the reference)" if checked else
           "network alone (no self-check or adaptation)")
    return ("\n".join(lines) + f"\n\nval/ cases: {', '.join(cases)} (each row's 'kept' count says how many it covers); "
            f"4× thick slices; {run}; the baseline is the "
            "network alone without a reference; Δ < 0 means the reference cost PSNR.\n")


if __name__ == "__main__":
    main()
