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
import logging
import os
import re
import time
from dataclasses import dataclass, field, replace
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
    note: str = ""     # for the report row of a case that runs, e.g. the reference it did not find
    problem: str = ""  # why the case is refused before it runs (a manifest row that cannot be read)


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
    """Every volume directly in `folder`, except the outputs this batch writes for the others (a batch into its
    own folder, run again); with `reference_pattern` (``{stem}`` is the input's name without its extension,
    relative to `folder`), the matching reference, which is then not an input itself."""
    def output_of(path: Path) -> Path:
        return output_dir / (_stem(path) + output_suffix)

    volumes = sorted(p for p in folder.iterdir() if _is_volume(p))
    outputs = {output_of(p).resolve() for p in volumes}
    volumes = [p for p in volumes if p.resolve() not in outputs]
    references, missing = {}, {}
    if reference_pattern:
        for path in volumes:
            candidate = folder / _reference_name(reference_pattern, path)
            if candidate.exists() and candidate != path:
                references[path] = candidate
            else:
                missing[path] = candidate
        if volumes and not references:
            example = next(iter(missing.items()))
            raise MRISuperResError(
                f"The reference pattern '{reference_pattern}' matched no file in '{folder}' (for '{example[0].name}' "
                f"it looked for '{example[1].name}'); check its spelling and case.")
    used_as_reference = set(references.values())
    return [Case(_stem(p), str(p), str(output_of(p)), str(references[p]) if p in references else None,
                 note=f"run without a reference: '{missing[p].name}' does not exist" if p in missing else "")
            for p in volumes if p not in used_as_reference]


def _reference_name(pattern: str, path: Path) -> str:
    try:
        return pattern.format(stem=_stem(path))
    except (KeyError, IndexError, ValueError, AttributeError):
        raise MRISuperResError(f"The reference pattern '{pattern}' has a placeholder other than {{stem}} (the "
                               "volume's name without extension); write it like '{stem}_T1.nii.gz'.") from None


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
    the CSV's folder, outputs to `output_dir` (by default at the input's path relative to the CSV, so that
    `sub01/T2.nii.gz` and `sub02/T2.nii.gz` write `sub01/T2_SR.nii.gz` and `sub02/T2_SR.nii.gz`). A row that
    cannot be read becomes a refused case; the others run."""
    base = manifest.parent
    # utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark, which would hide the first column's name.
    with open(manifest, newline="", encoding="utf-8-sig") as stream:
        reader = csv.DictReader(stream)
        rows = [row for row in reader if any((v or "").strip() for v in row.values() if isinstance(v, str))]
        header = reader.fieldnames or []
    if "input" not in header:
        raise MRISuperResError(f"The manifest '{manifest}' needs a header row with an 'input' column (and "
                               "optionally reference, output and run options); add one.")
    unknown = set(header) - {"input", "reference", "output", *RUN_OPTIONS}
    if unknown:
        raise MRISuperResError(f"The manifest '{manifest}' has unknown columns ({', '.join(sorted(unknown))}); "
                               f"use input, reference, output and run options ({', '.join(RUN_OPTIONS)}).")
    cases = []
    for number, row in enumerate(rows, start=2):  # the header is line 1
        given = (row.get("input") or "").strip()
        relative = Path(given)
        inside = not relative.is_absolute() and ".." not in relative.parts
        name = (str(relative.parent / _stem(relative)) if inside else _stem(relative)) if given else f"line {number}"
        default_output = (relative.parent if inside else Path()) / (_stem(relative) + output_suffix)
        output = (row.get("output") or "").strip() or str(default_output)
        reference = (row.get("reference") or "").strip()
        case = Case(name, str(base / given), str(output_dir / output), str(base / reference) if reference else None)
        try:
            problem = _manifest_row_problem(row, given)
            options = {} if problem else {option: _option_value(option, row[option]) for option in RUN_OPTIONS
                                          if (row.get(option) or "").strip()}
        except ValueError:
            options, problem = {}, ("a run option is not a number where one is needed ("
                                    + ", ".join(f"{k}={row[k]!r}" for k in RUN_OPTIONS if (row.get(k) or "").strip())
                                    + ")")
        cases.append(replace(case, options=options,
                             problem=f"Line {number} of '{manifest.name}': {problem}; correct it and run again."
                             if problem else ""))
    return cases


def _manifest_row_problem(row: dict, given: str) -> str:
    if None in row:  # csv puts the fields beyond the header under None
        return "it has more fields than the header (a comma inside a path needs quotes)"
    if not given:
        return "it has no input"
    return ""


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
    """What decides whether an existing output is still valid: the inputs (wherever they are named from, and
    as they are now: a file replaced since is redone), the options and the model."""
    from .models.registry import ModelRegistry

    registry = ModelRegistry(options.get("models_dir"))
    card = registry.get(options.get("model"))
    return {"input": _file_state(case.input), "reference": _file_state(case.reference) if case.reference else None,
            "options": {k: v for k, v in sorted(options.items()) if k not in ("threads", "device")},
            "model": card.name, "model_sha256": card.sha256 or "interpolation"}


def _file_state(path: str) -> dict:
    """The volume's resolved path, and the size and newest modification time of the files it is stored in (a
    .mhd or .nhdr header and its data file, `io.files_of`; a DICOM folder's files)."""
    from .io import files_of

    resolved = Path(path).resolve()
    stored = [p for p in resolved.rglob("*") if p.is_file()] if resolved.is_dir() else files_of(resolved)
    states = [p.stat() for p in stored if p.is_file()]
    return {"path": str(resolved), "bytes": sum(f.st_size for f in states),
            "modified_ns": max((f.st_mtime_ns for f in states), default=0)}


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
    if case.problem:
        return {**row, "status": "refused", "message": case.problem}
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
        row.update(status="done", message=case.note, model=report.get("model"), reference=report.get("reference"),
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
    writers: dict[str, Case] = {}
    for case in (c for c in cases if not c.problem):
        other = writers.setdefault(str(Path(case.output).resolve()), case)
        if other is not case:
            raise MRISuperResError(f"The cases {other.name} and {case.name} would both write '{case.output}'; give "
                                   "them distinct output names (a manifest's output column).")
    rows: dict[int, dict] = {}  # by the case's place: names need not be unique

    def finished(index: int, row: dict) -> None:
        rows[index] = row
        write_report([rows[i] for i in range(len(cases)) if i in rows], output_dir)
        if progress:
            progress(len(rows), len(cases), row)

    try:
        if workers <= 1 and scheduler is None:
            for index, case in enumerate(cases):
                finished(index, run_case(case, options, force))
        else:
            _run_distributed(cases, options, force, workers, scheduler, finished)
    except KeyboardInterrupt:
        for index, case in enumerate(cases):
            rows.setdefault(index, {"case": case.name, "status": "not run",
                                    "message": "the batch was stopped before it finished (a worker may still "
                                               "finish a case it had begun: a rerun skips it then)",
                                    "input": case.input, "output": case.output})
        write_report([rows[i] for i in range(len(cases))], output_dir)
        raise CancelledError("The batch was stopped; finished cases are kept and a rerun does the rest.")
    return [rows[i] for i in range(len(cases))]


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
        # Dask's own lines (scheduler and nanny start and stop) at errors only: the report says what happened.
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=logging.ERROR)
        options = {"threads": max(1, (os.cpu_count() or 1) // workers), **options}
    client = Client(scheduler or cluster)
    try:
        futures = {}
        for i, case in enumerate(cases):
            device = device_for(i, options.get("device"), gpus)
            future = client.submit(run_case, case, {**options, **({"device": device} if device else {})},
                                   force, key=f"mrisuperres-{i}", pure=False)
            futures[future] = i
        try:
            for future in as_completed(futures):
                finished(futures[future], future.result())
        except BaseException:
            client.cancel(list(futures))
            raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
