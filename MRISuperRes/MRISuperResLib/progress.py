"""Progress reports and cancellation shared by the CLI, the Python API and the Slicer module."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Protocol, TextIO

from .errors import CancelledError


@dataclass(frozen=True)
class ProgressEvent:
    """`done` of `total` units of `stage`; `eta` is the seconds this stage still needs (None: unknown);
    `warning`: the message changes what the user gets (a reference ignored or registered, a fallback), so
    it is shown even by `--quiet`."""

    stage: str
    done: int
    total: int
    eta: float | None = None
    message: str = ""
    warning: bool = False


ProgressCallback = Callable[[ProgressEvent], None]


class CancelFlag(Protocol):
    def is_set(self) -> bool: ...


class StageReporter:
    """Reports one stage's progress with an ETA, and stops the run when the cancel flag is set."""

    def __init__(self, stage: str, total: int, callback: ProgressCallback | None, cancel: CancelFlag | None,
                 message: str = "") -> None:
        self.stage, self.total, self.callback, self.cancel = stage, max(1, total), callback, cancel
        self.started = time.monotonic()
        self.done = 0
        self.check_cancel()
        self._emit(message)

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise CancelledError()

    def advance(self, units: int = 1) -> None:
        self.check_cancel()
        self.done = min(self.total, self.done + units)
        self._emit()

    def finish(self, message: str = "", warning: bool = False) -> None:
        if self.done < self.total or message:
            self.done = self.total
            self._emit(message, warning)

    def _emit(self, message: str = "", warning: bool = False) -> None:
        if self.callback is None:
            return
        elapsed = time.monotonic() - self.started
        eta = elapsed / self.done * (self.total - self.done) if self.done else None
        self.callback(ProgressEvent(self.stage, self.done, self.total, eta, message, warning))


class JsonLinesProgress:
    """Writes one JSON object per event, for programs (the Slicer module reads these)."""

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.stream = stream

    def __call__(self, event: ProgressEvent) -> None:
        record = asdict(event)
        record["eta"] = None if event.eta is None else round(event.eta, 1)
        self.stream.write(json.dumps(record) + "\n")
        self.stream.flush()


def print_warnings(event: ProgressEvent) -> None:
    """`--quiet`: no bar, only the messages that change what the user gets (a reference ignored, a
    fallback to interpolation), on stderr."""
    if event.message and event.warning:
        # "reference ignored: ..." names its stage already; "plan: scale 10 is outside ..." needs the prefix.
        named = event.message.split(":")[0].split()[0] == event.stage
        print(event.message if named else f"{event.stage}: {event.message}", file=sys.stderr, flush=True)


class TqdmProgress:
    """One tqdm bar per stage, on stderr, for people."""

    def __init__(self) -> None:
        self.bar = None
        self.stage = None

    def __call__(self, event: ProgressEvent) -> None:
        from tqdm import tqdm

        if event.stage != self.stage:
            self.close()
            self.stage = event.stage
            self.bar = tqdm(total=event.total, desc=event.stage, unit="step", leave=False, file=sys.stderr)
        self.bar.n = event.done
        self.bar.refresh()
        if event.message:
            self.bar.write(f"{event.stage}: {event.message}", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
