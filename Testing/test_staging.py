"""Nothing is left behind (issue 11, item 6): a run stopped by SIGTERM during its write removes its staging
folder and writes no output; folders left by runs killed outright (SIGKILL) are removed by the next write
into the same folder; the Slicer module's Cancel stops the child with SIGTERM first."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import smooth_volume
from MRISuperResLib.io import STAGING_PREFIX, write_volume

MODULE_PARENT = Path(__file__).resolve().parents[1] / "MRISuperRes"
HOST = socket.gethostname().replace("-", "_")
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

# A CLI run whose write stalls after the data reached its staging folder, so that the test can stop it there.
STALLED_WRITE = """
import sys, time
import SimpleITK as sitk
from MRISuperResLib import cli, io
real_write = sitk.WriteImage
def stalled_write(*args, **kwargs):
    real_write(*args, **kwargs)
    print("written to staging", flush=True)
    time.sleep(120)
io.sitk.WriteImage = stalled_write
sys.exit(cli.main(sys.argv[1:]))
"""


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_sigterm_during_the_write_leaves_no_staging_folder_and_no_output(tmp_path):
    source = write_volume(smooth_volume(), tmp_path / "thick.nii.gz")
    output = tmp_path / "out" / "sr.nii.gz"
    output.parent.mkdir()
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(MODULE_PARENT), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", STALLED_WRITE, "run", str(source), "-o", str(output),
                              "--model", "cubic", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=environment)
    assert child.stdout.readline().strip() == "written to staging"
    staged = list(output.parent.glob(STAGING_PREFIX + "*"))
    assert len(staged) == 1 and any(staged[0].iterdir())
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 130, stderr
    assert "cancelled; no output was written" in stderr
    assert list(output.parent.iterdir()) == []


def test_staging_folders_of_killed_runs_are_removed_by_the_next_write(tmp_path):
    def staging(name: str) -> Path:
        folder = tmp_path / (STAGING_PREFIX + name)
        folder.mkdir()
        (folder / "sr.nii.gz").write_bytes(b"partial")
        return folder

    killed = staging(f"{HOST}-{dead_pid()}-abc123")
    running = staging(f"{HOST}-{os.getpid()}-def456")  # a live writer's: kept
    old_unknown = staging("zz9plural")  # no owner to ask (an older version, another host): kept for a day
    os.utime(old_unknown, (time.time() - 2 * 86400,) * 2)
    new_unknown = staging("other_host-12-ghi789")
    write_volume(smooth_volume(), tmp_path / "next.nii.gz")
    assert not killed.exists() and not old_unknown.exists()
    assert running.exists() and new_unknown.exists()
    assert (tmp_path / "next.nii.gz").exists()
    assert {p.name for p in tmp_path.iterdir()} == {"next.nii.gz", running.name, new_unknown.name}


def test_the_slicer_modules_cancel_during_the_write_leaves_nothing_behind(tmp_path):
    from MRISuperResLib.errors import CancelledError
    from MRISuperResLib.job import RunOptions, SuperResolutionJob

    source = write_volume(smooth_volume(), tmp_path / "thick.nii.gz")
    output = tmp_path / "out" / "sr.nii.gz"
    output.parent.mkdir()
    (tmp_path / "stalled.py").write_text(STALLED_WRITE)
    # The job runs `<python> -m MRISuperResLib.cli run ...`: this "python" runs the same CLI, stalled in its write.
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nshift 2\nexec "{sys.executable}" "{tmp_path / "stalled.py"}" "$@"\n')
    python.chmod(0o755)
    environment = {**os.environ, "PYTHONPATH": str(MODULE_PARENT)}
    job = SuperResolutionJob(str(python), source, output, options=RunOptions(model="cubic"), environment=environment)
    job.start()
    deadline = time.monotonic() + 120
    while not any(output.parent.glob(STAGING_PREFIX + "*/*")) and time.monotonic() < deadline:
        assert job.running, job.stderr_lines
        time.sleep(0.1)
    time.sleep(0.5)  # past the write into the staging folder
    job.cancel()
    with pytest.raises(CancelledError):
        job.outcome()
    assert list(output.parent.iterdir()) == []


# A CLI run that stalls in its closing report, after its output was written, so that the test can stop it there.
STALLED_REPORT = """
import sys, time
from MRISuperResLib import cli
def stalled_print(*args, **kwargs):
    cli.print = print  # stall once: the message of the cancel goes through it too
    print("output written", flush=True)
    time.sleep(120)
cli.print = stalled_print
sys.exit(cli.main(sys.argv[1:]))
"""


def test_sigterm_after_the_write_reports_the_complete_output(tmp_path):
    source = write_volume(smooth_volume(), tmp_path / "thick.nii.gz")
    output = tmp_path / "sr.nii.gz"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(MODULE_PARENT), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", STALLED_REPORT, "run", str(source), "-o", str(output),
                              "--model", "cubic", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=environment)
    assert child.stdout.readline().strip() == "output written"
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 0, stderr
    assert stderr.strip() == f"mrisuperres: cancelled after the run; {output} is complete."
    assert output.exists() and not list(tmp_path.glob(STAGING_PREFIX + "*"))
