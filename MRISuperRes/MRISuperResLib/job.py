"""Running `mrisuperres run` in a child Python process and following its `--progress-json` stream.

This is how the Slicer module keeps its GUI responsive and survives a crash of the computation (the
MONAIAuto3DSeg pattern): the child does the work, this side reads one JSON object per line from the
child's stdout, keeps the child's one-sentence error from stderr, and can kill the child at any time.
Pure Python, so the same code runs under Slicer and in plain tests.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from .errors import CancelledError, MRISuperResError
from .progress import ProgressEvent

ERROR_PREFIX = "mrisuperres: error: "
LIB_PARENT = Path(__file__).resolve().parents[1]  # the folder that holds MRISuperResLib
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    """The `mrisuperres run` options a caller can set; None leaves the command's default."""

    model: str | None = None
    target_spacing: tuple[float, ...] | None = None
    scale: tuple[float, ...] | None = None
    planes: tuple[str, ...] | None = None
    device: str = "auto"
    threads: int | None = None
    batch_size: int | None = None
    register_reference: bool = True  # moved only when that improves the match
    models_dir: str | None = None
    reference_mode: str | None = None
    adapt: float | None = None  # seconds of per-scan fine-tuning; None: the default budget; 0: never
    self_check: bool = True
    consistency: bool = True  # agree exactly with the acquired slices when their profile is clear
    round_lesions: bool = True  # small round lesions fitted as balls in the slabs that show them
    force: bool = False  # run even when the memory estimate exceeds what is free

    def arguments(self) -> list[str]:
        args: list[str] = ["--device", self.device]
        for flag, value in (("--model", self.model), ("--threads", self.threads),
                            ("--batch-size", self.batch_size), ("--models-dir", self.models_dir),
                            ("--reference-mode", self.reference_mode)):
            if value is not None:
                args += [flag, str(value)]
        for flag, values in (("--target-spacing", self.target_spacing), ("--scale", self.scale),
                             ("--planes", self.planes)):
            if values:
                args += [flag, *(str(v) for v in values)]
        if not self.register_reference:
            args.append("--no-register-reference")
        if self.adapt is not None:
            args += ["--adapt", str(self.adapt)] if self.adapt > 0 else ["--no-adapt"]
        if not self.self_check:
            args.append("--no-self-check")
        if not self.consistency:
            args.append("--no-consistency")
        if not self.round_lesions:
            args.append("--no-round-lesions")
        if self.force:
            args.append("--force")
        return args


class SuperResolutionJob:
    """One `mrisuperres run` in a child process: start it, read its progress, cancel it, get its outcome.

    >>> job = SuperResolutionJob(sys.executable, "thick.nrrd", "out.nrrd", options=RunOptions(model="cubic"))  # doctest: +SKIP
    >>> job.start(); job.wait(progress=print)                                                                    # doctest: +SKIP
    """

    def __init__(self, python: str, input_path: str | os.PathLike, output_path: str | os.PathLike,
                 reference_path: str | os.PathLike | None = None, options: RunOptions = RunOptions(),
                 environment: dict[str, str] | None = None, confidence_path: str | os.PathLike | None = None) -> None:
        self.python = python
        self.input_path, self.output_path = Path(input_path), Path(output_path)
        self.reference_path = Path(reference_path) if reference_path else None
        self.confidence_path = Path(confidence_path) if confidence_path else None
        self.options = options
        self.environment = dict(os.environ if environment is None else environment)
        self.process: subprocess.Popen | None = None
        self.events: queue.Queue[ProgressEvent] = queue.Queue()
        self.stderr_lines: list[str] = []
        self.cancelled = False
        self._readers: list[threading.Thread] = []

    def command(self) -> list[str]:
        command = [self.python, "-m", "MRISuperResLib.cli", "run", str(self.input_path), "-o", str(self.output_path),
                   "--progress-json", *self.options.arguments()]
        if self.reference_path:
            command += ["--reference", str(self.reference_path)]
        if self.confidence_path:
            command += ["--confidence", str(self.confidence_path)]
        return command

    def start(self) -> None:
        environment = dict(self.environment)
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(LIB_PARENT), environment.get("PYTHONPATH")]))
        environment["PYTHONUNBUFFERED"] = "1"
        environment["PYTHONUTF8"] = "1"  # "×" and "—" in messages, also on Windows with Slicer < 5.12
        # A session of its own, so that cancelling kills the launcher (PythonSlicer) and the Python it started.
        extra = ({"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}
                 if sys.platform == "win32" else {"start_new_session": True})
        self.process = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        encoding="utf-8", errors="replace", env=environment, **extra)
        self._readers = [threading.Thread(target=self._read_progress, daemon=True),
                         threading.Thread(target=self._read_errors, daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read_progress(self) -> None:
        for line in self.process.stdout:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # not ours: a library printing to stdout
            if isinstance(record, dict) and "stage" in record:
                self.events.put(ProgressEvent(record["stage"], int(record.get("done", 0)), int(record.get("total", 0)),
                                              record.get("eta"), record.get("message", "")))

    def _read_errors(self) -> None:
        # Every line also goes to the log (Slicer's Python log), so that a traceback or a CUDA message that
        # the one-sentence error cannot hold is there when the error says "see the log".
        for line in self.process.stderr:
            line = line.rstrip("\n")
            self.stderr_lines.append(line)
            if line.strip():
                log.info("mrisuperres: %s", line)

    def pending_events(self) -> list[ProgressEvent]:
        """The progress events that arrived since the last call (never blocks)."""
        events = []
        while True:
            try:
                events.append(self.events.get_nowait())
            except queue.Empty:
                return events

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cancel(self, grace_seconds: float = 5.0) -> None:
        """Stop the child (and anything it started): SIGTERM first, which unwinds it so that a write in
        progress removes its staging folder, then SIGKILL after `grace_seconds`. Its output, if any, is
        never written (atomic writes)."""
        self.cancelled = True
        if not self.running:
            return
        if sys.platform == "win32":
            # No console window flashes (as slicer.util.launchConsoleProcess hides its own).
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.process.pid)], capture_output=True,
                           creationflags=subprocess.CREATE_NO_WINDOW)
        else:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_seconds)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def wait(self, progress=None) -> Path:
        """Block until the child ends, passing its progress events on; return the output path or raise."""
        while self.process.poll() is None:
            try:
                event = self.events.get(timeout=0.1)
                if progress:
                    progress(event)
            except queue.Empty:
                pass
        return self.outcome(progress)

    def outcome(self, progress=None) -> Path:
        """After the child ended: the output path, or the child's own one-sentence error as an exception."""
        for reader in self._readers:
            reader.join(timeout=5)
        for event in self.pending_events():
            if progress:
                progress(event)
        if self.cancelled:
            raise CancelledError()
        code = self.process.returncode
        if code == 0 and self.output_path.exists():
            return self.output_path
        sentences = [line[len(ERROR_PREFIX):] for line in self.stderr_lines if line.startswith(ERROR_PREFIX)]
        if code == CancelledError.exit_code:
            raise CancelledError()
        if sentences:
            raise MRISuperResError(sentences[-1])
        tail = " | ".join(self.stderr_lines[-3:]) or "no message"
        raise MRISuperResError(f"The super-resolution process failed (exit code {code}: {tail}); "
                               "see the log for details and report it if it persists.")
