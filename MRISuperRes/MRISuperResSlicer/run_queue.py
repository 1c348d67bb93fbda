"""Several volumes in one Apply: one child process at a time, in order, with one progress bar.

Every volume is checked before the first starts, so a bad one is refused before any work. A volume whose
run fails is recorded and the next one starts; Cancel stops the running volume (its scene stays as it was)
and every one after it, while the volumes already finished keep their results. Needs MRML, not Qt.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from MRISuperResLib.errors import CancelledError, MRISuperResError
from MRISuperResLib.progress import ProgressEvent

# Progress units per volume on the queue's one bar.
UNITS_PER_VOLUME = 1000


@dataclass(frozen=True)
class QueuedVolume:
    input_node: object
    reference_node: object = None
    output_node: object = None  # None: a new `<input>_SR` node


@dataclass
class Finished:
    """A volume that ended: its result nodes, or the error that stopped it."""

    item: QueuedVolume
    output_node: object = None
    confidence_node: object = None
    error: MRISuperResError | None = None


def queued_volumes(input_nodes, reference_nodes=None, output_nodes=None) -> list[QueuedVolume]:
    """Pair each input with its reference: `reference_nodes` None (no reference), one node (the same for
    every input) or a list with one entry (node or None) per input; `output_nodes` likewise a list or None."""
    inputs = list(input_nodes)
    if not inputs:
        raise MRISuperResError("No input volume is selected; select at least one volume to super-resolve.")
    if reference_nodes is None or not isinstance(reference_nodes, (list, tuple)):
        references = [reference_nodes] * len(inputs)
    else:
        references = list(reference_nodes)
    outputs = list(output_nodes) if output_nodes is not None else [None] * len(inputs)
    for what, values in (("references", references), ("output volumes", outputs)):
        if len(values) != len(inputs):
            raise MRISuperResError(f"{len(inputs)} input volumes but {len(values)} {what}; give one per input "
                                   "(None where there is none).")
    names = [node.GetID() for node in inputs if node is not None]
    if len(set(names)) != len(names):
        raise MRISuperResError("The same input volume is listed twice; select each volume once.")
    return [QueuedVolume(i, r, o) for i, r, o in zip(inputs, references, outputs)]


@dataclass
class RunQueue:
    """Runs `start(item)` (which returns a started `SuperResolutionRun`) for each item in turn; call `poll`
    until `running` is False, then read `finished`."""

    items: list[QueuedVolume]
    start: object
    finished: list[Finished] = field(default_factory=list)
    cancelled: bool = False
    _index: int = -1
    _run: object = None

    def begin(self) -> "RunQueue":
        self._next()
        return self

    @property
    def running(self) -> bool:
        return self._run is not None

    @property
    def results(self) -> list[Finished]:
        return [f for f in self.finished if f.error is None]

    @property
    def failures(self) -> list[Finished]:
        return [f for f in self.finished if f.error is not None]

    def poll(self) -> list[ProgressEvent]:
        """The progress since the last call, on the queue's scale; when the running volume has ended, its
        result goes into the scene (or its error into `finished`) and the next one starts."""
        if self._run is None:
            return []
        events = [self._on_queue_scale(e) for e in self._run.pending_events()]
        if not self._run.running:
            run, item = self._run, self.items[self._index]
            try:
                node = run.finish(lambda e: events.append(self._on_queue_scale(e)))
                self.finished.append(Finished(item, node, run.confidence_node))
            except CancelledError:
                self.cancelled = True
            except MRISuperResError as error:
                self.finished.append(Finished(item, error=error))
            self._run = None
            if not self.cancelled:
                self._next()
        return events

    def cancel(self) -> None:
        """Stop the running volume (the scene stays as it was for it) and every one after it."""
        self.cancelled = True
        if self._run is not None:
            self._run.cancel()
            self._run = None

    def _next(self) -> None:
        while self._index + 1 < len(self.items):
            self._index += 1
            try:
                self._run = self.start(self.items[self._index])
                return
            except MRISuperResError as error:  # this volume cannot start; the others may
                self.finished.append(Finished(self.items[self._index], error=error))
        self._run = None

    def _on_queue_scale(self, event: ProgressEvent) -> ProgressEvent:
        if len(self.items) == 1:
            return event
        name = self.items[self._index].input_node.GetName()
        # The child's last record ("done", the written files) carries no counts: the volume is complete.
        share = event.done / event.total if event.total else 1.0 if event.stage == "done" else 0.0
        return replace(event, done=self._index * UNITS_PER_VOLUME + round(share * UNITS_PER_VOLUME),
                       total=len(self.items) * UNITS_PER_VOLUME,
                       message=f"{name} ({self._index + 1}/{len(self.items)}): {event.message}" if event.message else "")

    def summary(self) -> str:
        """One line for the status: what was done, what failed and why, what was cancelled."""
        done = [f.output_node.GetName() for f in self.results]
        parts = [f"Done: {', '.join(done)}." if done else "Nothing was super-resolved."]
        for failure in self.failures:
            parts.append(f"{failure.item.input_node.GetName()} failed: {failure.error}")
        if self.cancelled:
            left = len(self.items) - len(self.finished)
            parts.append(f"Cancelled; {left} volume{'s' if left != 1 else ''} left unchanged.")
        return " ".join(parts)
