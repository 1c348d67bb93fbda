"""Super-resolution from volume nodes, computed in a child process; the scene changes only on success.

`start` validates the nodes, writes them to a private temporary folder and starts the child;
`SuperResolutionRun.finish` loads the result into a new `<input>_SR` node (or the given output node) once
the child succeeded, and with `confidence=True` (texture-transfer models) the match confidence into a
new `<input>_SR_confidence` node; `cancel` kills the child. A failure or a cancel leaves the scene exactly
as it was.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from MRISuperResLib.errors import MRISuperResError
from MRISuperResLib.io import read_volume, write_volume
from MRISuperResLib.job import RunOptions, SuperResolutionJob
from MRISuperResLib.validation import check_reference_is_not_input

from .nodes import check_volume_node, copy_window_level, update_node_from_volume, volume_from_node

OUTPUT_SUFFIX = "_SR"
CONFIDENCE_SUFFIX = "_SR_confidence"


class SuperResolutionRun:
    """One run started from nodes: poll it, cancel it, or finish it into the scene."""

    def __init__(self, scene, job: SuperResolutionJob, folder: Path, input_node, output_node) -> None:
        self.scene, self.job, self.folder = scene, job, folder
        self.input_node, self.output_node = input_node, output_node
        self.confidence_node = None

    @property
    def running(self) -> bool:
        return self.job.running

    def pending_events(self):
        return self.job.pending_events()

    def wait(self, progress=None):
        """Block until the child ends (passing progress on), then finish; returns the output node. The run's
        folder (a copy of the input) is removed on every path: success, failure, crash, cancel."""
        try:
            self.job.wait(progress)
        except BaseException:
            if self.job.running:  # interrupted while waiting
                self.job.cancel()
            self._clean()
            raise
        return self.finish(progress)

    def cancel(self) -> None:
        self.job.cancel()
        self._clean()

    def finish(self, progress=None):
        """Load the child's result into the output node (created now if none was given)."""
        try:
            result = read_volume(self.job.outcome(progress), role="result")
            # A run that fell back to cubic interpolation matched nothing: its confidence map is all zeros.
            confidence = (read_volume(self.job.confidence_path, role="confidence map", allow_constant=True)
                          if self.job.confidence_path else None)
            node = self.output_node
            if node is None:
                node = self._new_node(OUTPUT_SUFFIX)
            update_node_from_volume(node, result)
            copy_window_level(self.input_node, node)
            if confidence is not None:
                self.confidence_node = self._new_node(CONFIDENCE_SUFFIX)
                update_node_from_volume(self.confidence_node, confidence)
            return node
        finally:
            self._clean()

    def _new_node(self, suffix: str):
        name = self.scene.GenerateUniqueName(self.input_node.GetName() + suffix)
        return self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)

    def _clean(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class SuperResolutionRunner:
    """The node-level API that the module's Logic and the Python console use; needs MRML, not Qt."""

    def __init__(self, python: str | None = None, environment: dict[str, str] | None = None) -> None:
        self.python = python or sys.executable
        self.environment = environment

    @staticmethod
    def check_inputs(input_node, reference_node=None, output_node=None):
        """Refuse bad nodes with one sentence; returns the input and reference volumes (None: no reference).
        Needs neither torch nor scipy, so it can run before the dependencies are installed."""
        check_volume_node(input_node, "input")
        if output_node is not None:
            check_volume_node_class(output_node)
            if output_node is input_node or output_node is reference_node:
                raise MRISuperResError("The output volume is one of the inputs; choose a new volume as output.")
        input_volume = volume_from_node(input_node, "input")
        reference_volume = None
        if reference_node is not None:
            check_volume_node(reference_node, "reference")
            reference_volume = volume_from_node(reference_node, "reference")
            check_reference_is_not_input(input_volume, reference_volume)
        return input_volume, reference_volume

    def start(self, scene, input_node, reference_node=None, output_node=None, options: RunOptions = RunOptions(),
              confidence: bool = False):
        input_volume, reference_volume = self.check_inputs(input_node, reference_node, output_node)
        folder = Path(tempfile.mkdtemp(prefix="MRISuperRes-"))
        try:
            input_path = write_volume(input_volume, folder / "input.nrrd", compress=False)
            reference_path = (write_volume(reference_volume, folder / "reference.nrrd", compress=False)
                              if reference_volume is not None else None)
            job = SuperResolutionJob(self.python, input_path, folder / "output.nrrd", reference_path, options,
                                     self.environment, folder / "confidence.nrrd" if confidence else None)
            job.start()
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return SuperResolutionRun(scene, job, folder, input_node, output_node)

    def process(self, scene, input_node, reference_node=None, output_node=None, options: RunOptions = RunOptions(),
                progress=None, confidence: bool = False):
        """Run to completion and return the output node; raises `MRISuperResError` with the reason."""
        return self.start(scene, input_node, reference_node, output_node, options, confidence).wait(progress)


def check_volume_node_class(node) -> None:
    if not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise MRISuperResError(f"The output '{node.GetName()}' is not a scalar volume node; choose a new volume as output.")
