"""Super-resolving a cohort: every volume of a folder, a CSV manifest or a BIDS dataset, resumable, on one
machine or a Dask cluster (`mrisuperres batch`, `MRISuperResLib.batch`).

- Cases: a folder's volumes (a reference found by `reference_pattern`, e.g. ``{stem}_T1.nii.gz``); a CSV with
  the columns `input` and optionally `reference`, `output` and any run option (`model`, `target_spacing`,
  `scale`, `adapt`, `reference_mode`, `planes`); or a BIDS dataset (a `dataset_description.json` at its root):
  every `*_<target suffix>` image under `anat/`, its reference the same subject and session's
  `*_<reference suffix>`, outputs in a BIDS derivatives folder with the `desc-superres` entity.
- Resumable: beside every output a JSON sidecar records the options, the model and its weights' sha256; a
  case whose output and sidecar exist with the same record is skipped, so a rerun after a crash does only
  what is missing, and changed options redo their cases (`force` redoes everything).
- One bad case never stops the batch: its row says refused (with the sentence) or failed (with the error).
- Parallel through Dask distributed: `workers` > 1 starts a local cluster of that many single-threaded
  worker processes (each with its share of torch threads); `scheduler` submits to a running cluster at that
  address instead, through the same code. With neither, cases run one after another in this process.
"""

from __future__ import annotations

import csv
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CancelledError, MRISuperResError

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
RUN_OPTIONS = ("model", "target_spacing", "scale", "planes", "adapt", "reference_mode", "device", "threads",
               "register_reference", "models_dir")
REPORT_COLUMNS = ("case", "status", "message", "seconds", "peak_rss_mb", "reference", "reference_agreement",
                  "self_check_gain_db", "adapted", "model", "input", "output")
DERIVATIVE_NAME = "mrisuperres"


@dataclass(frozen=True)
class Case:
    name: str
    input: str
    output: str
    reference: str | None = None
    options: dict = field(default_factory=dict)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[:-len(suffix)]
    return path.stem


def _is_volume(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(VOLUME_SUFFIXES) and not path.name.startswith(".")


def folder_cases(folder: Path, output_dir: Path, reference_pattern: str | None = None,
                 output_suffix: str = "_SR.nii.gz") -> list[Case]:
    """Every volume directly in `folder`; with `reference_pattern` (``{stem}`` is the input's name without
    its extension, relative to `folder`), the matching reference, which is then not an input itself."""
    volumes = sorted(p for p in folder.iterdir() if _is_volume(p))
    references = {}
    if reference_pattern:
        for path in volumes:
            candidate = folder / reference_pattern.format(stem=_stem(path))
            if candidate.exists() and candidate != path:
                references[path] = candidate
    used_as_reference = set(references.values())
    return [Case(_stem(p), str(p), str(output_dir / (_stem(p) + output_suffix)),
                 str(references[p]) if p in references else None)
            for p in volumes if p not in used_as_reference]


def _option_value(name: str, text: str):
    text = text.strip()
    if name in ("target_spacing", "scale"):
        return [float(v) for v in text.replace(",", " ").split()]
    if name == "planes":
        return text.split()
    if name == "adapt":
        return float(text)
    if name == "threads":
        return int(text)
    if name == "register_reference":  # registered unless the column says no
        return text.lower() not in ("0", "false", "no")
    return text


def manifest_cases(manifest: Path, output_dir: Path, output_suffix: str = "_SR.nii.gz") -> list[Case]:
    """Rows of a CSV with `input` and optionally `reference`, `output` and run options; paths are relative to
    the CSV's folder, outputs to `output_dir`."""
    base = manifest.parent
    with open(manifest, newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    if not rows or "input" not in rows[0]:
        raise MRISuperResError(f"The manifest '{manifest}' needs a header row with an 'input' column (and "
                               "optionally reference, output and run options); add one.")
    unknown = set(rows[0]) - {"input", "reference", "output", *RUN_OPTIONS}
    if unknown:
        raise MRISuperResError(f"The manifest '{manifest}' has unknown columns ({', '.join(sorted(unknown))}); "
                               f"use input, reference, output and run options ({', '.join(RUN_OPTIONS)}).")
    cases = []
    for row in rows:
        source = base / row["input"].strip()
        output = row.get("output", "").strip() or _stem(source) + output_suffix
        options = {name: _option_value(name, row[name]) for name in RUN_OPTIONS if (row.get(name) or "").strip()}
        reference = (row.get("reference") or "").strip()
        cases.append(Case(_stem(source), str(source), str(output_dir / output),
                          str(base / reference) if reference else None, options))
    return cases


def bids_cases(dataset: Path, output_dir: Path, target_suffix: str = "T2w",
               reference_suffix: str | None = "T1w") -> list[Case]:
    """Every `sub-*/[ses-*/]anat/*_<target_suffix>` image of a BIDS dataset (derivatives excluded), its
    reference the same folder's image with the same subject and session and `reference_suffix`; outputs
    at the same relative path under `output_dir` with `desc-superres` before the suffix."""
    cases = []
    for path in sorted(dataset.glob(f"sub-*/**/anat/*_{target_suffix}.nii*")):
        if "derivatives" in path.relative_to(dataset).parts:
            continue
        stem = _stem(path)
        entities = stem[:-len(target_suffix) - 1]
        reference = None
        if reference_suffix:
            key = "_".join(part for part in entities.split("_") if part.startswith(("sub-", "ses-")))
            matches = sorted(path.parent.glob(f"{key}*_{reference_suffix}.nii*"))
            reference = str(matches[0]) if matches else None
        desc = re.sub(r"_desc-[^_]+", "", entities) + "_desc-superres_" + target_suffix
        output = output_dir / path.parent.relative_to(dataset) / (desc + ".nii.gz")
        cases.append(Case(entities, str(path), str(output), reference))
    return cases


def write_derivative_description(output_dir: Path) -> None:
    from . import __version__

    output_dir.mkdir(parents=True, exist_ok=True)
    description = {"Name": "MRISuperRes super-resolution", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
                   "GeneratedBy": [{"Name": DERIVATIVE_NAME, "Version": __version__}]}
    (output_dir / "dataset_description.json").write_text(json.dumps(description, indent=2) + "\n")


def find_cases(source: str | os.PathLike, output_dir: str | os.PathLike, reference_pattern: str | None = None,
               bids_target: str = "T2w", bids_reference: str | None = "T1w") -> list[Case]:
    source, output_dir = Path(source), Path(output_dir)
    if source.is_file() and source.suffix.lower() == ".csv":
        return manifest_cases(source, output_dir)
    if source.is_dir() and (source / "dataset_description.json").exists():
        write_derivative_description(output_dir)
        return bids_cases(source, output_dir, bids_target, bids_reference)
    if source.is_dir():
        return folder_cases(source, output_dir, reference_pattern)
    raise MRISuperResError(f"The batch input '{source}' is neither a folder, a BIDS dataset nor a .csv manifest; "
                           "give one of those.")


def _record(case: Case, options: dict) -> dict:
    """What decides whether an existing output is still valid: the inputs, the options and the model."""
    from .models.registry import ModelRegistry

    registry = ModelRegistry(options.get("models_dir"))
    card = registry.get(options.get("model"))
    return {"input": case.input, "reference": case.reference,
            "options": {k: v for k, v in sorted(options.items()) if k not in ("threads", "device")},
            "model": card.name, "model_sha256": card.sha256 or "interpolation"}


def _sidecar(output: str) -> Path:
    path = Path(output)
    return path.with_name(_stem(path) + ".json")


def _peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def run_case(case: Case, options: dict, force: bool = False) -> dict:
    """Super-resolve one case (in whichever process runs it); returns its report row. Never raises for a
    bad case: a refusal or an error becomes the row's status."""
    from .io import check_new_output, read_volume, write_volume
    from .pipeline import superresolve

    options = {**options, **case.options}
    row = {"case": case.name, "input": case.input, "output": case.output, "status": "", "message": ""}
    started = time.perf_counter()
    try:
        record = _record(case, options)
        sidecar = _sidecar(case.output)
        if not force and Path(case.output).exists() and sidecar.exists() and \
                json.loads(sidecar.read_text()).get(DERIVATIVE_NAME) == record:
            return {**row, "status": "skipped", "message": "done before with the same options and model",
                    "model": record["model"]}
        Path(case.output).parent.mkdir(parents=True, exist_ok=True)
        # A batch redoes its own outputs (above: unless done with the same options), never a file it reads.
        check_new_output(case.output, overwrite=True, inputs={"input": case.input, "reference": case.reference})
        volume = read_volume(case.input, "input")
        reference = read_volume(case.reference, "reference") if case.reference else None
        report: dict = {}
        result = superresolve(volume, reference, report=report, **options)
        write_volume(result, case.output)
        # The sidecar last: an output without it (a crash in between) is redone.
        sidecar.write_text(json.dumps({DERIVATIVE_NAME: record, "report": report}, indent=2) + "\n")
        row.update(status="done", model=report.get("model"), reference=report.get("reference"),
                   reference_agreement=report.get("reference_agreement"),
                   self_check_gain_db=report.get("estimated_gain_db"), adapted=report.get("adapted"))
    except CancelledError:
        raise
    except MRISuperResError as error:
        row.update(status="refused", message=str(error))
    except Exception as error:  # one bad case never stops the batch
        row.update(status="failed", message=f"{type(error).__name__}: {error}")
    row["seconds"] = round(time.perf_counter() - started, 2)
    row["peak_rss_mb"] = _peak_rss_mb()
    return row


def write_report(rows: list[dict], output_dir: Path) -> tuple[Path, Path]:
    output_dir.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = output_dir / "batch_report.csv", output_dir / "batch_report.json"
    with open(csv_path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, REPORT_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    json_path.write_text(json.dumps(rows, indent=2, default=str) + "\n")
    return csv_path, json_path


def batch(source: str | os.PathLike, output_dir: str | os.PathLike, reference_pattern: str | None = None,
          bids_target: str = "T2w", bids_reference: str | None = "T1w", workers: int = 1,
          scheduler: str | None = None, force: bool = False, progress=None, **options) -> list[dict]:
    """Super-resolve every case of `source` (a folder, a CSV manifest or a BIDS dataset) into `output_dir`;
    returns the report rows (also written as `batch_report.csv` and `.json` there). `options` are
    `superresolve`'s (model, target_spacing, adapt, …); `progress(done, total, row)` is called per case."""
    output_dir = Path(output_dir)
    cases = find_cases(source, output_dir, reference_pattern, bids_target, bids_reference)
    if not cases:
        raise MRISuperResError(f"No volumes to super-resolve were found in '{source}'; check the path (and the "
                               "BIDS suffix or the reference pattern).")
    names = [c.output for c in cases]
    if len(set(names)) < len(names):
        raise MRISuperResError("Two cases would write the same output file; give them distinct output names.")
    rows: dict[str, dict] = {}

    def finished(row: dict) -> None:
        rows[row["case"]] = row
        write_report([rows[c.name] for c in cases if c.name in rows], output_dir)
        if progress:
            progress(len(rows), len(cases), row)

    try:
        if workers <= 1 and scheduler is None:
            for case in cases:
                finished(run_case(case, options, force))
        else:
            _run_distributed(cases, options, force, workers, scheduler, finished)
    except KeyboardInterrupt:
        for case in cases:
            rows.setdefault(case.name, {"case": case.name, "status": "not run", "message": "the batch was stopped",
                                        "input": case.input, "output": case.output})
        write_report([rows[c.name] for c in cases], output_dir)
        raise CancelledError("The batch was stopped; finished cases are kept and a rerun does the rest.")
    return [rows[c.name] for c in cases]


def device_for(index: int, requested: str | None, gpus: int) -> str | None:
    """The device of the `index`-th case on a machine with `gpus` GPUs: on GPUs, one after another, so that
    parallel workers share them out; otherwise what was asked."""
    if gpus > 1 and requested in (None, "auto", "cuda"):
        return f"cuda:{index % gpus}"
    return requested


def _run_distributed(cases: list[Case], options: dict, force: bool, workers: int, scheduler: str | None,
                     finished) -> None:
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise MRISuperResError("Parallel batches need Dask distributed; install it (pip install "
                               "'distributed>=2024.1') or run with one worker.") from None
    cluster, gpus = None, 0
    if scheduler is None:
        import torch

        # Worker processes, one task each, sharing the machine's cores between them; on a machine with
        # several GPUs, one worker per GPU at most, each case on the next GPU.
        gpus = torch.cuda.device_count() if options.get("device") in (None, "auto", "cuda") else 0
        if gpus:
            workers = min(workers, gpus)
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        options = {"threads": max(1, (os.cpu_count() or 1) // workers), **options}
    client = Client(scheduler or cluster)
    try:
        futures = []
        for i, case in enumerate(cases):
            device = device_for(i, options.get("device"), gpus)
            futures.append(client.submit(run_case, case, {**options, **({"device": device} if device else {})},
                                         force, key=f"mrisuperres-{i}-{case.name}", pure=False))
        try:
            for future in as_completed(futures):
                finished(future.result())
        except BaseException:
            client.cancel(futures)
            raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
