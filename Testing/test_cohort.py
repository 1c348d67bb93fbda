"""`mrisuperres batch` / `MRISuperResLib.batch`: folders, CSV manifests and BIDS datasets; resumable after a
kill; one bad case never stops the batch; parallel through a Dask local cluster or a scheduler address."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import smooth_volume
from MRISuperResLib import batch, read_volume
from MRISuperResLib.io import STAGING_PREFIX, write_volume

MODULE_PARENT = Path(__file__).resolve().parents[1] / "MRISuperRes"


def thick(seed: int, slices: int = 8):
    return smooth_volume(shape_kji=(slices, 40, 36), spacing=(0.9, 0.9, 3.6), seed=seed)


def bids_dataset(root: Path) -> Path:
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "phantoms", "BIDSVersion": "1.9.0"}))
    for seed, folder in enumerate(("sub-01/anat", "sub-02/ses-a/anat", "sub-02/ses-b/anat")):
        (root / folder).mkdir(parents=True)
        prefix = "_".join(part for part in folder.split("/") if part != "anat")
        write_volume(thick(seed), root / folder / f"{prefix}_T2w.nii.gz")
        write_volume(smooth_volume(shape_kji=(32, 40, 36), spacing=(0.9, 0.9, 0.9), seed=seed + 10),
                     root / folder / f"{prefix}_T1w.nii.gz")
    return root


def statuses(rows):
    return {row["case"]: row["status"] for row in rows}


def test_a_folder_with_references_runs_resumes_and_redoes_what_changed(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    for seed in range(3):
        write_volume(thick(seed), source / f"case{seed}.nii.gz")
    write_volume(smooth_volume(shape_kji=(32, 40, 36), spacing=(0.9, 0.9, 0.9)), source / "case0_T1.nii.gz")
    out = tmp_path / "out"
    rows = batch(source, out, reference_pattern="{stem}_T1.nii.gz", model="cubic")
    assert statuses(rows) == {"case0": "done", "case1": "done", "case2": "done"}  # the T1 is no case itself
    assert read_volume(out / "case0_SR.nii.gz").spacing == pytest.approx((0.9, 0.9, 0.9))
    sidecar = json.loads((out / "case0_SR.json").read_text())["mrisuperres"]
    assert sidecar["reference"]["path"].endswith("case0_T1.nii.gz") and sidecar["model"] == "cubic"
    with open(out / "batch_report.csv", newline="") as stream:
        report = list(csv.DictReader(stream))
    assert [r["status"] for r in report] == ["done"] * 3 and all(float(r["seconds"]) > 0 for r in report)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}
    assert set(statuses(batch(source, out, reference_pattern="{stem}_T1.nii.gz", model="cubic")).values()) == {"skipped"}
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")} == before  # nothing redone
    changed = batch(source, out, reference_pattern="{stem}_T1.nii.gz", model="cubic", target_spacing=[1.8])
    assert set(statuses(changed).values()) == {"done"}  # other options: redone
    assert read_volume(out / "case0_SR.nii.gz").spacing == pytest.approx((1.8, 1.8, 1.8))


def test_a_bad_case_is_reported_and_the_others_finish(tmp_path, cli):
    source = tmp_path / "in"
    source.mkdir()
    write_volume(thick(0), source / "good.nii.gz")
    constant = thick(1)
    constant.array[:] = 7.0
    write_volume(constant, source / "blank.nii.gz")
    (source / "broken.nii.gz").write_bytes(b"not an image")
    code, _, err = cli("batch", source, tmp_path / "out", "--model", "cubic", "--quiet")
    assert code == 2
    rows = json.loads((tmp_path / "out" / "batch_report.json").read_text())
    assert statuses(rows) == {"blank": "refused", "broken": "refused", "good": "done"}
    assert "is constant" in next(r["message"] for r in rows if r["case"] == "blank")
    assert "blank: refused: The input " in err and "1 done, 2 refused" in err
    assert not (tmp_path / "out" / "blank_SR.nii.gz").exists()


def test_a_manifest_gives_per_row_references_outputs_and_options(tmp_path):
    for seed in range(2):
        write_volume(thick(seed), tmp_path / f"t2_{seed}.nii.gz")
    (tmp_path / "cases.csv").write_text("input,output,target_spacing\n"
                                        "t2_0.nii.gz,first.nii.gz,\n"
                                        "t2_1.nii.gz,second.nrrd,1.8 1.8 1.8\n")
    rows = batch(tmp_path / "cases.csv", tmp_path / "out", model="cubic")
    assert set(statuses(rows).values()) == {"done"}
    assert read_volume(tmp_path / "out" / "first.nii.gz").spacing == pytest.approx((0.9, 0.9, 0.9))
    assert read_volume(tmp_path / "out" / "second.nrrd").spacing == pytest.approx((1.8, 1.8, 1.8))


def test_a_manifest_of_one_folder_per_subject_keeps_every_case_apart(tmp_path, cli):
    for subject in ("sub01", "sub02", "sub03"):
        (tmp_path / subject).mkdir()
        write_volume(thick(int(subject[-1])), tmp_path / subject / "T2.nii.gz")
    # Excel's "CSV UTF-8" starts with a byte-order mark; the third row asks for a scale and a spacing at once.
    (tmp_path / "cases.csv").write_bytes("\ufeffinput,scale,target_spacing\n"
                                         "sub01/T2.nii.gz,,\nsub02/T2.nii.gz,,\nsub03/T2.nii.gz,2,1.8\n".encode())
    code, _, _ = cli("batch", tmp_path / "cases.csv", tmp_path / "out", "--model", "cubic", "--quiet")
    rows = json.loads((tmp_path / "out" / "batch_report.json").read_text())
    assert code == 2 and [(r["case"], r["status"]) for r in rows] == [
        ("sub01/T2", "done"), ("sub02/T2", "done"), ("sub03/T2", "refused")]
    assert "not both" in rows[2]["message"]
    assert (tmp_path / "out" / "sub01" / "T2_SR.nii.gz").exists() and (tmp_path / "out" / "sub02" / "T2_SR.nii.gz").exists()
    # Outputs named alike in the manifest: the message names the two cases.
    (tmp_path / "same.csv").write_text("input,output\nsub01/T2.nii.gz,a.nii.gz\nsub02/T2.nii.gz,a.nii.gz\n")
    code, _, err = cli("batch", tmp_path / "same.csv", tmp_path / "out2", "--model", "cubic", "--quiet")
    assert code == 2 and "sub01/T2 and sub02/T2 would both write" in err and not (tmp_path / "out2").exists()


def test_manifest_rows_that_cannot_be_read_are_refused_one_by_one(tmp_path):
    write_volume(thick(0), tmp_path / "t2.nii.gz")
    (tmp_path / "cases.csv").write_text("input,adapt,output\n"
                                        "t2.nii.gz,abc,one.nii.gz\n"
                                        "t2.nii.gz,,two.nii.gz,surplus\n"
                                        ",,three.nii.gz\n"
                                        "t2.nii.gz,,four.nii.gz\n"
                                        ",,\n")
    rows = batch(tmp_path / "cases.csv", tmp_path / "out", model="cubic")
    assert [r["status"] for r in rows] == ["refused", "refused", "refused", "done"]  # the empty row is no case
    assert rows[0]["message"] == ("Line 2 of 'cases.csv': a run option is not a number where one is needed "
                                  "(adapt='abc'); correct it and run again.")
    assert "Line 3" in rows[1]["message"] and "more fields than the header" in rows[1]["message"]
    assert "Line 4" in rows[2]["message"] and "no input" in rows[2]["message"]


def test_a_reference_pattern_that_finds_nothing_or_has_another_placeholder_is_refused(tmp_path, cli):
    source = tmp_path / "in"
    source.mkdir()
    for name in ("a", "b"):
        write_volume(thick(0), source / f"{name}.nii.gz")
    write_volume(smooth_volume(shape_kji=(32, 40, 36), spacing=(0.9, 0.9, 0.9)), source / "a_T1.nii.gz")
    for pattern, expected in (("{stem}_t1.nii.gz", "matched no file in"), ("{name}_T1.nii.gz", "other than {stem}")):
        code, _, err = cli("batch", source, tmp_path / "out", "--reference-pattern", pattern, "--model", "cubic")
        assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
    # Found for some volumes only: the others run without one, and their rows say so.
    rows = batch(source, tmp_path / "out", reference_pattern="{stem}_T1.nii.gz", model="cubic")
    assert [(r["case"], r["status"], r["message"]) for r in rows] == [
        ("a", "done", ""), ("b", "done", "run without a reference: 'b_T1.nii.gz' does not exist")]


def test_a_batch_into_its_own_folder_does_not_take_its_outputs_for_inputs(tmp_path):
    for seed in range(2):
        write_volume(thick(seed), tmp_path / f"case{seed}.nii.gz")
    assert set(statuses(batch(tmp_path, tmp_path, model="cubic")).values()) == {"done"}
    assert statuses(batch(tmp_path, tmp_path, model="cubic")) == {"case0": "skipped", "case1": "skipped"}


def test_an_input_replaced_since_is_redone_and_one_named_another_way_is_not(tmp_path, monkeypatch):
    source = tmp_path / "in"
    source.mkdir()
    for seed in range(2):
        write_volume(thick(seed), source / f"case{seed}.nii.gz")
    batch(source, tmp_path / "out", model="cubic")
    monkeypatch.chdir(tmp_path)
    assert set(statuses(batch(Path("in"), tmp_path / "out", model="cubic")).values()) == {"skipped"}
    write_volume(thick(5), source / "case1.nii.gz")  # another scan under the same name
    assert statuses(batch(source, tmp_path / "out", model="cubic")) == {"case0": "skipped", "case1": "done"}
    # A header and its data file: a scan replaced in the data file alone is redone too.
    header = write_volume(thick(2), source / "case2.mhd")
    batch(source, tmp_path / "out", model="cubic")
    data = next(p for p in source.iterdir() if p.name.startswith("case2") and p != header)
    data.write_bytes(data.read_bytes() + b"\0")
    assert statuses(batch(source, tmp_path / "out", model="cubic"))["case2"] == "done"


def test_a_bids_dataset_on_a_dask_local_cluster_of_two_workers(tmp_path):
    dataset = bids_dataset(tmp_path / "bids")
    derivatives = tmp_path / "bids" / "derivatives" / "mrisuperres"
    rows = batch(dataset, derivatives, workers=2, model="cubic")
    assert statuses(rows) == {"sub-01": "done", "sub-02_ses-a": "done", "sub-02_ses-b": "done"}
    assert json.loads((derivatives / "dataset_description.json").read_text())["DatasetType"] == "derivative"
    output = derivatives / "sub-02/ses-b/anat/sub-02_ses-b_desc-superres_T2w.nii.gz"
    assert output.exists() and (output.parent / "sub-02_ses-b_desc-superres_T2w.json").exists()
    recorded = json.loads((output.parent / "sub-02_ses-b_desc-superres_T2w.json").read_text())["mrisuperres"]
    assert recorded["reference"]["path"].endswith("sub-02/ses-b/anat/sub-02_ses-b_T1w.nii.gz")
    # The derivatives inside the dataset are not cases of a second run, which skips everything.
    assert set(statuses(batch(dataset, derivatives, workers=2, model="cubic")).values()) == {"skipped"}


def test_a_running_scheduler_takes_the_same_cases(tmp_path):
    from distributed import LocalCluster

    dataset = bids_dataset(tmp_path / "bids")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        rows = batch(dataset, tmp_path / "derivatives", scheduler=cluster.scheduler_address, model="cubic",
                     threads=1)
    assert set(statuses(rows).values()) == {"done"} and len(rows) == 3


def slow_batch(tmp_path: Path, models_dir: Path) -> tuple[list[str], dict, Path]:
    """Six cases for an untrained network (about a second each): the command, its environment, its output."""
    source = tmp_path / "in"
    source.mkdir()
    for seed in range(6):
        write_volume(thick(seed, slices=16), source / f"case{seed}.nii.gz")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "MRISuperResLib.cli", "batch", str(source), str(out), "--model", "tiny",
               "--models-dir", str(models_dir), "--no-self-check", "--threads", "1", "--quiet"]
    return command, {**os.environ, "PYTHONPATH": str(MODULE_PARENT)}, out


def test_a_killed_batch_resumes_without_redoing_finished_cases(tmp_path, untrained_models_dir):
    command, environment, out = slow_batch(tmp_path, untrained_models_dir)
    child = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(out.glob("*_SR.json")) and time.monotonic() < deadline:
        assert child.poll() is None, child.stderr.read()
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)  # a crash: no chance to clean up
    child.wait()
    finished = {p.name for p in out.glob("*_SR.json")}
    assert 1 <= len(finished) < 6
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*_SR.nii.gz")}
    resumed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    rows = json.loads((out / "batch_report.json").read_text())
    skipped = {r["case"] for r in rows if r["status"] == "skipped"}
    assert skipped == {name[:-len("_SR.json")] for name in finished}
    assert {r["status"] for r in rows} <= {"skipped", "done"} and len(rows) == 6
    for name in finished:  # finished cases were not written again
        output = name.replace(".json", ".nii.gz")
        assert (out / output).stat().st_mtime_ns == mtimes[output]
    assert not list(out.glob(STAGING_PREFIX + "*"))  # the killed write's staging folder is gone too
    assert np.isfinite(read_volume(out / "case5_SR.nii.gz").array).all()


def test_cases_take_turns_on_the_gpus():
    from MRISuperResLib.cohort import device_for

    assert [device_for(i, "auto", 2) for i in range(4)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert device_for(3, None, 3) == "cuda:0"
    assert device_for(1, "cpu", 2) == "cpu" and device_for(1, "auto", 0) == "auto" and device_for(0, None, 1) is None


def test_ctrl_c_stops_the_batch_cleanly_and_reports_what_was_not_run(tmp_path, untrained_models_dir):
    command, environment, out = slow_batch(tmp_path, untrained_models_dir)
    # A test run started in the background (nohup … &) inherits an ignored SIGINT, and Python then installs no
    # KeyboardInterrupt handler: give the child the terminal's default, as a user's Ctrl-C finds it.
    child = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (out / "batch_report.json").exists() and time.monotonic() < deadline:
        assert child.poll() is None, child.stderr.read()
        time.sleep(0.02)
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 130, stderr
    assert "The batch was stopped; finished cases are kept and a rerun does the rest." in stderr
    rows = json.loads((out / "batch_report.json").read_text())
    assert len(rows) == 6 and "not run" in {r["status"] for r in rows}
    assert {r["status"] for r in rows} <= {"done", "not run"}
    assert not list(out.glob(STAGING_PREFIX + "*"))
