"""MRISuperRes: the 3D Slicer module. Thin glue only; the work is in MRISuperResLib (the core, run in a child
process) and MRISuperResSlicer (nodes ↔ core volumes, the child-process runner)."""

import logging
import os
import shutil
import sys
import time
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from MRISuperResLib.advice import device_advice
from MRISuperResLib.devices import DEVICES, installed_torch
from MRISuperResLib.errors import CancelledError, MRISuperResError
from MRISuperResLib.job import RunOptions
from MRISuperResLib.models.registry import ModelRegistry
from MRISuperResLib.plan import DEFAULT_ADAPT_SECONDS, REFERENCE_MODES, make_plan, resolve_reference_mode
from MRISuperResSlicer import dependencies, log_panel, sample_data, views
from MRISuperResSlicer.nodes import grid_from_node, signal_shares_of_node
from MRISuperResSlicer.parameters import fallback_message, stale_parameters
from MRISuperResSlicer.wording import in_gui_words
from MRISuperResSlicer.run_queue import QueuedVolume, RunQueue, queued_volumes
from MRISuperResSlicer.runner import SuperResolutionRunner

TARGET_MODES = ("isotropic", "scale", "spacing")
REFERENCE_MODE_CHOICES = ("", *REFERENCE_MODES)  # "": automatic
POLL_MILLISECONDS = 200


class MRISuperRes(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MRI Super-Resolution"
        self.parent.categories = ["Filtering"]
        self.parent.dependencies = []
        self.parent.contributors = ["MRISuperRes developers"]
        self.parent.helpText = """
Turns a low-resolution MRI volume (thick slices, say 0.9 × 0.9 × 4 mm) into a volume at a finer resolution
(by default isotropic at the finest input spacing), in exactly the same physical place and in the input's
intensity units. Pretrained 2D networks run on every slice of every plane that contains a thick-slice
axis, and the planes are averaged. A high-resolution volume of another contrast of the same patient (for
example a 1 mm T1 for a 4 mm T2) can serve as reference; models that use one borrow its detail. When the
slices' profile (box or Gaussian) can be told from the result, the result is then changed as little as
possible so that, averaged over each acquired slice, it gives back the input exactly.
<br><br>
What it can and cannot do: super-resolution restores detail that is consistent with what the network
learned from training scans and, with a reference, with the other contrast. It cannot recover structures
smaller than the slice thickness that left no trace in the input: fine details in the result are a
plausible estimate, not a measurement. Do not base a diagnosis on detail that only the super-resolved
volume shows; compare with the input. The reference must be of the same patient and session, or be
registered (Advanced: Register reference).
<br><br>
See the <a href="https://github.com/mrisuperres/SlicerMRISuperRes">documentation</a>.
"""
        self.parent.acknowledgementText = """
The shipped models follow: SRCNN (Dong et al., 2014), VDSR (Kim et al., 2016), EDSR (Lim et al., 2017),
RFDN (Liu et al., 2020) and RCAN (Zhang et al., 2018) as slice networks; reference-based MRI super-resolution
by texture transfer with wavelet scattering features (rfdn-tt, edsr-tt); a progressive multi-contrast
encoder-decoder network (progressive-mixed); DAASR, channel-wise and spatial alignment transformers
with index and confidence maps (daasr-mixed); TransMRSR, a Swin transformer U-shape with a GAN-pretrained
StyleSwin decoder (transmrsr); and a CNN + ViT network trained with structure / texture disentanglement
losses (cnn-vit).
Models were trained on public data: spinalcordtoolbox sample data (MIT), open_ms_data (CC-BY), BraTS 2023
and BRATS 2013 cases, ProstateX (TCIA, CC-BY).
"""
        # The demo phantom in Sample Data, once the application (and so the Sample Data module) is up.
        icon = os.path.join(os.path.dirname(__file__), "Resources", "Icons", "MRISuperRes.png")
        slicer.app.connect("startupCompleted()", lambda: sample_data.register(icon))


@parameterNodeWrapper
class MRISuperResParameterNode:
    """The GUI state, saved with the scene."""

    inputVolume: vtkMRMLScalarVolumeNode
    referenceVolume: vtkMRMLScalarVolumeNode
    outputVolume: vtkMRMLScalarVolumeNode
    model: str = ""
    targetMode: str = "isotropic"
    targetValues: str = "1,1,1"
    device: str = "auto"
    registerReference: bool = True
    referenceMode: str = ""
    confidenceMap: bool = False
    adaptToScan: bool = True
    keepAcquiredSlices: bool = True
    planes: str = ""
    batchSize: Annotated[int, WithinRange(1, 256)] = 8


class MRISuperResWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None
        self._timer = None
        self._lastCheck = ""
        self._logHandler = None
        self._previousLayout = None
        self._lastRun = None  # (input, result, confidence) of the last run, for Compare

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MRISuperRes.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MRISuperResLogic()

        for card in self.logic.registry.cards.values():
            self.ui.modelComboBox.addItem(card.title, card.name)
            self.ui.modelComboBox.setItemData(self.ui.modelComboBox.count - 1, card.description, qt.Qt.ToolTipRole)
        self.ui.progressBar.hide()
        self._logHandler = log_panel.attach(self.ui.logTextEdit.appendPlainText)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onManualWidgetChanged)
        self.ui.targetModeComboBox.connect("currentIndexChanged(int)", self.onManualWidgetChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onManualWidgetChanged)
        self.ui.referenceModeComboBox.connect("currentIndexChanged(int)", self.onManualWidgetChanged)
        self.ui.targetValuesWidget.connect("coordinatesChanged(double*)", self.onManualWidgetChanged)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.sampleDataButton.connect("clicked(bool)", self.onSampleDataButton)
        self.ui.compareButton.connect("toggled(bool)", self.onCompareToggled)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.updateSampleDataButton)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self.updateSampleDataButton)
        self.updateSampleDataButton()
        self.initializeParameterNode()

    def cleanup(self):
        self.removeObservers()
        if self._logHandler is not None:
            log_panel.detach(self._logHandler)
        if self._run is not None:
            self._run.cancel()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

    def onSceneStartClose(self, caller, event):
        # A run still going would add its result to the next scene: stop it (its files are removed).
        if self._run is not None:
            self._run.cancel()
            self.stopPolling()
            self.ui.statusLabel.text = "Cancelled: the scene was closed."
        self._lastRun = None
        self._previousLayout = None
        self.ui.compareButton.blockSignals(True)
        self.ui.compareButton.checked = False
        self.ui.compareButton.blockSignals(False)
        self.ui.compareButton.enabled = False
        self.setParameterNode(None)

    def updateSampleDataButton(self, caller=None, event=None):
        # Offered only to an empty scene: the first-time user's two clicks.
        empty = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode") is None
        self.ui.sampleDataButton.visible = empty

    def onSampleDataButton(self, *unused):
        nodes = sample_data.load_after_install()
        if not nodes:
            return
        self._parameterNode.inputVolume, self._parameterNode.referenceVolume = nodes
        self.ui.statusLabel.text = ("Sample data loaded: a T2 in 4 mm slices and its 1 mm T1 as reference. "
                                    "Click Apply.")

    def onCompareToggled(self, checked):
        if checked and self._lastRun is not None:
            previous = views.show_comparison(slicer.mrmlScene, *self._lastRun)
            if self._previousLayout is None:  # a second run while comparing keeps the layout to return to
                self._previousLayout = previous
        else:
            views.restore_layout(slicer.mrmlScene, self._previousLayout)
            self._previousLayout = None
            if self._lastRun is not None:
                self.logic.showResult(self._lastRun[1])

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode
        if not self._parameterNode.model:
            self._parameterNode.model = self.logic.registry.default_name

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
            self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None):
        """The widgets the wrapper does not bind (combo boxes, coordinates), the plan line and Apply."""
        parameters = self._parameterNode
        if parameters is None or self.repairStaleParameters():
            return  # a repair modifies the node, which calls this again
        manual = (self.ui.modelComboBox, self.ui.targetModeComboBox, self.ui.deviceComboBox,
                  self.ui.targetValuesWidget, self.ui.referenceModeComboBox)
        for widget in manual:
            widget.blockSignals(True)
        self.ui.modelComboBox.currentIndex = max(0, self.ui.modelComboBox.findData(parameters.model))
        self.ui.targetModeComboBox.currentIndex = TARGET_MODES.index(parameters.targetMode)
        self.ui.deviceComboBox.currentIndex = DEVICES.index(parameters.device)
        self.ui.targetValuesWidget.coordinates = parameters.targetValues
        self.ui.targetValuesWidget.enabled = parameters.targetMode != "isotropic"
        self.ui.referenceModeComboBox.currentIndex = REFERENCE_MODE_CHOICES.index(parameters.referenceMode)
        for widget in manual:
            widget.blockSignals(False)

        card = self.logic.registry.get(parameters.model or None)
        hint = "Uses the reference when one is selected." if card.uses_reference else "Does not use a reference."
        if card.texture_transfer:
            hint += " Texture transfer: " + ", ".join(card.supported_reference_modes) + " reference."
        elif card.maps_confidence:
            hint += " Can also map the confidence of its reference matches."
        self.ui.modelHintLabel.text = hint
        self.ui.referenceModeComboBox.enabled = card.texture_transfer
        self.ui.confidenceMapCheckBox.enabled = card.maps_confidence
        # Texture-transfer models are checked on the scan but not fine-tuned on it.
        self.ui.adaptCheckBox.enabled = not card.texture_transfer and not card.is_interpolation
        self.ui.keepSlicesCheckBox.enabled = not card.is_interpolation
        self.ui.planLabel.text = self.planLine()
        self.ui.deviceInfoLabel.text = self.deviceLine()
        if self._run is None:
            self.ui.applyButton.enabled = parameters.inputVolume is not None
            self.ui.applyButton.text = "Apply"

    def repairStaleParameters(self):
        """Values from a scene saved by another version that this one lacks fall back to the default, with a
        message; True when something was replaced."""
        parameters = self._parameterNode
        values = {"model": parameters.model, "targetMode": parameters.targetMode, "device": parameters.device,
                  "referenceMode": parameters.referenceMode}
        choices = {"model": ("", *self.logic.registry.names()), "targetMode": TARGET_MODES, "device": DEVICES,
                   "referenceMode": REFERENCE_MODE_CHOICES}
        defaults = {"model": self.logic.registry.default_name, "targetMode": "isotropic", "device": "auto",
                    "referenceMode": ""}
        replacements = stale_parameters(values, choices, defaults)
        if not replacements:
            return False
        message = fallback_message(values, replacements)
        logging.warning(message)
        self.ui.statusLabel.text = message
        with slicer.util.NodeModify(parameters):
            for name, value in replacements.items():
                setattr(parameters, name, value)
        return True

    def onManualWidgetChanged(self, *unused):
        if self._parameterNode is None:
            return
        with slicer.util.NodeModify(self._parameterNode):
            self._parameterNode.model = self.ui.modelComboBox.currentData or ""
            self._parameterNode.targetMode = TARGET_MODES[self.ui.targetModeComboBox.currentIndex]
            self._parameterNode.device = DEVICES[self.ui.deviceComboBox.currentIndex]
            self._parameterNode.targetValues = self.ui.targetValuesWidget.coordinates
            self._parameterNode.referenceMode = REFERENCE_MODE_CHOICES[self.ui.referenceModeComboBox.currentIndex]

    def targetArguments(self):
        """{'targetSpacing': …, 'scale': …} as `MRISuperResLogic.process` takes them (None: not chosen)."""
        values = [float(v) for v in self._parameterNode.targetValues.split(",")]
        mode = self._parameterNode.targetMode
        return {"targetSpacing": values if mode == "spacing" else None, "scale": values if mode == "scale" else None}

    def textureArguments(self):
        """{'referenceMode': …, 'confidenceMap': …} for texture-transfer models, {'confidenceMap': …} for the
        other models that map their matches (DAASR); nothing for the others."""
        parameters = self._parameterNode
        card = self.logic.registry.get(parameters.model or None)
        arguments = {"confidenceMap": parameters.confidenceMap} if card.maps_confidence else {}
        if card.texture_transfer:
            arguments["referenceMode"] = parameters.referenceMode or None
        return arguments

    def planLine(self):
        parameters = self._parameterNode
        try:
            target = self.targetArguments()
            grid = grid_from_node(parameters.inputVolume, "input")
            card = self.logic.registry.get(parameters.model or None)
            hasReference = parameters.referenceVolume is not None
            mode = resolve_reference_mode(card, hasReference, parameters.referenceMode or None)
            plan = make_plan(grid, card, planes=parameters.planes.split() or None, has_reference=hasReference,
                             reference_mode=mode, adapt_seconds=DEFAULT_ADAPT_SECONDS if parameters.adaptToScan else 0.0,
                             device=parameters.device if parameters.device != "auto" else installed_torch().auto_device,
                             threads=installed_torch().cpu_threads,
                             batch_size=parameters.batchSize, target_spacing=target["targetSpacing"],
                             scale=target["scale"],
                             signal_shares=signal_shares_of_node(parameters.inputVolume, parameters.batchSize))
            return plan.one_line()
        except (MRISuperResError, ValueError) as error:
            return str(error)

    def deviceLine(self):
        """The installed PyTorch and the device "auto" runs on; on a CPU, the default's and the fast model's
        time on this input, so that the user can choose before waiting."""
        parameters = self._parameterNode
        try:
            grid = grid_from_node(parameters.inputVolume, "input") if parameters.inputVolume else None
            shares = signal_shares_of_node(parameters.inputVolume, parameters.batchSize) if grid else None
            target = self.targetArguments()
        except (MRISuperResError, ValueError):
            grid, shares, target = None, None, {"targetSpacing": None, "scale": None}
        return device_advice(installed_torch(), self.logic.registry, grid,
                             has_reference=parameters.referenceVolume is not None, threads=installed_torch().cpu_threads,
                             adapt_seconds=None if parameters.adaptToScan else 0.0, signal_shares=shares,
                             target_spacing=target["targetSpacing"], scale=target["scale"])

    def onApplyButton(self, *unused):
        if self._run is not None:
            queue = self._run
            queue.cancel()
            self.stopPolling()
            if len(queue.items) > 1:
                self.showResults(queue)  # the volumes finished before Cancel keep their results
            else:
                self.ui.statusLabel.text = "Cancelled; the scene is unchanged."
            return
        self.startRun()

    def reportFailure(self, error):
        """The error in the GUI's words; a memory refusal asks whether to try anyway, and does if told to."""
        text, memory = in_gui_words(str(error))
        if memory and slicer.util.confirmYesNoDisplay(text + " Try anyway?", windowTitle="MRISuperRes: memory"):
            self.startRun(force=True)
            return
        slicer.util.errorDisplay(text + " The Log panel below Apply shows every line of the run.")
        self.ui.logTextEdit.appendPlainText("Error: " + text)
        self.ui.logCollapsibleButton.collapsed = False

    def selectedInputs(self):
        """The input volume, then the volumes checked in "Also process" (the input itself once)."""
        parameters = self._parameterNode
        more = [node for node in self.ui.moreInputsSelector.checkedNodes() if node is not parameters.inputVolume]
        return [parameters.inputVolume, *more]

    def startRun(self, force=False):
        parameters = self._parameterNode
        inputs = self.selectedInputs()
        try:
            settings = dict(model=parameters.model or None, device=parameters.device,
                            registerReference=parameters.registerReference, planes=parameters.planes.split() or None,
                            batchSize=parameters.batchSize, **self.targetArguments(),
                            adapt=None if parameters.adaptToScan else 0,
                            consistency=parameters.keepAcquiredSlices, force=force, **self.textureArguments())
            outputs = [parameters.outputVolume] + [None] * (len(inputs) - 1)
            self._run = self.logic.processVolumes(inputs, parameters.referenceVolume, outputVolumes=outputs,
                                                  waitForCompletion=False, **settings)
        except Exception as error:  # a bad input (MRISuperResError) or a failed dependency install
            self.reportFailure(error)
            return
        self.ui.applyButton.text = "Cancel"
        self.ui.progressBar.show()
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = "Starting…" if len(inputs) == 1 else f"Starting 1 of {len(inputs)} volumes…"
        self._lastCheck = ""
        self._timer = qt.QTimer()
        self._timer.timeout.connect(self.poll)
        self._timer.start(POLL_MILLISECONDS)

    def poll(self):
        for event in self._run.poll():
            self.showProgress(event)
        if self._run.running:
            return
        queue = self._run
        self.stopPolling()
        if len(queue.items) > 1:
            self.showResults(queue)
            return
        if queue.cancelled:
            self.ui.statusLabel.text = "Cancelled; the scene is unchanged."
            return
        if queue.failures:
            self.ui.statusLabel.text = "Failed; the scene is unchanged."
            self.reportFailure(queue.failures[0].error)
            return
        finished = queue.results[0]
        self.showComparison(finished)
        self.ui.statusLabel.text = f"Done: {finished.output_node.GetName()}" + (
            f" and {finished.confidence_node.GetName()}." if finished.confidence_node else ".") + (
            f" Self-check: {self._lastCheck}" if self._lastCheck else "")

    def showResults(self, queue):
        """After several volumes: each result shown, the first compared with its input, one summary line."""
        for finished in queue.results:
            self.logic.showResult(finished.output_node)
        if queue.results:
            self.showComparison(queue.results[0])
        summary = queue.summary()
        self.ui.statusLabel.text = summary
        self.ui.logTextEdit.appendPlainText(summary)
        if queue.failures:
            slicer.util.errorDisplay(summary + " The Log panel below Apply shows every line of the runs.")
            self.ui.logCollapsibleButton.collapsed = False

    def showComparison(self, finished):
        self.logic.showResult(finished.output_node)
        self._lastRun = (finished.item.input_node, finished.output_node, finished.confidence_node)
        self.ui.compareButton.enabled = True
        if self.ui.compareButton.checked:
            self.onCompareToggled(True)
        else:
            self.ui.compareButton.checked = True  # the side-by-side view after every run; one click swaps back

    def showProgress(self, event):
        if event.total:
            self.ui.progressBar.maximum = event.total
            self.ui.progressBar.value = event.done
        eta = f", about {event.eta:.0f} s left" if event.eta else ""
        if event.stage == "check" and event.message:
            self._lastCheck = event.message  # the estimated gain on this scan: kept for the final status line
        text = event.message or f"{event.stage}: {event.done}/{event.total}{eta}"
        if event.message and event.message != self.ui.statusLabel.text:
            self.ui.logTextEdit.appendPlainText(event.message)  # each message once, not each progress tick
        self.ui.statusLabel.text = text

    def stopPolling(self):
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        self._run = None
        self.ui.progressBar.hide()
        self.updateGUIFromParameterNode()


class MRISuperResLogic(ScriptedLoadableModuleLogic):
    """Super-resolution of volume nodes, usable without the GUI (Python console, batch).

    Example, one call per volume::

        logic = slicer.util.getModuleLogic("MRISuperRes")
        outputNode = logic.process(getNode("T2"), referenceVolume=getNode("T1"))
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.registry = ModelRegistry()
        self.lastConfidenceNode = None

    def getParameterNode(self):
        return MRISuperResParameterNode(super().getParameterNode())

    @staticmethod
    def pythonExecutable():
        """Slicer's own Python interpreter, which runs the core in a child process."""
        name = "PythonSlicer.exe" if sys.platform == "win32" else "PythonSlicer"
        found = shutil.which(name) or os.path.join(os.path.dirname(sys.executable), name)
        if not os.path.exists(found):
            raise MRISuperResError(f"Slicer's Python interpreter ({name}) was not found; reinstall Slicer.")
        return found

    def process(self, inputVolume, referenceVolume=None, outputVolume=None, model=None, targetSpacing=None,
                device="auto", registerReference=True, waitForCompletion=True, progressCallback=None, scale=None,
                planes=None, batchSize=None, installDependencies=True, referenceMode=None, confidenceMap=False,
                adapt=None, consistency=True, force=False):
        """Super-resolve `inputVolume` and return the output node (a new `<input>_SR` unless given).

        Texture-transfer models take `referenceMode` (paired, unpaired or self; None: paired with a
        reference, self without) and, with `confidenceMap=True`, also create `<input>_SR_confidence`,
        which is then `self.lastConfidenceNode`. `registerReference`: the reference is registered rigidly
        first and moved only when its edges then match the input's better; False uses it as it lies.

        Every run scores the model against interpolation on the scan's own sharp planes (the estimate shows
        in the progress messages) and fine-tunes it there first: `adapt` seconds of work (None: the default
        budget, 0: never); the fine-tuned model is used only when it does better on held-out slices.
        `consistency` (default True): the output is made to agree with the input's thick slices when their
        profile is clear (False: the network's output as it is, like `--no-consistency`).
        `force=True` runs even when the memory estimate exceeds what is free.

        With `waitForCompletion=False` it returns the running job at once (poll `pending_events()`, then
        `finish()` or `cancel()`); the scene changes only when a run succeeds. Raises `MRISuperResError`
        with one sentence naming the problem and the fix: bad inputs first, then (after asking to install
        the Python packages the core needs, if any are missing) a declined or incomplete installation.
        """
        self.lastConfidenceNode = None
        runner = self._readyRunner([QueuedVolume(inputVolume, referenceVolume, outputVolume)], installDependencies)
        options = self._runOptions(model=model, targetSpacing=targetSpacing, scale=scale, planes=planes, device=device,
                                   batchSize=batchSize, registerReference=registerReference,
                                   referenceMode=referenceMode, adapt=adapt, consistency=consistency, force=force)
        run = runner.start(slicer.mrmlScene, inputVolume, referenceVolume, outputVolume, options, confidenceMap)
        if not waitForCompletion:
            return run

        def onProgress(event):
            if progressCallback:
                progressCallback(event)
            slicer.app.processEvents()

        node = run.wait(onProgress)
        self.lastConfidenceNode = run.confidence_node
        self.showResult(node)
        return node

    def processVolumes(self, inputVolumes, referenceVolumes=None, waitForCompletion=True, progressCallback=None,
                       installDependencies=True, confidenceMap=False, outputVolumes=None, **settings):
        """Super-resolve several volumes in turn, one child process at a time; returns their output nodes.

        `referenceVolumes`: None, one node for every input, or a list with one node (or None) per input;
        `settings`: the keywords of `process` (model, targetSpacing, device, adapt, ...). Every input is checked
        before the first starts. A volume that fails does not stop the others; at the end an `MRISuperResError`
        names each failed volume and why (the others' results are then in the scene). With
        `waitForCompletion=False` it returns the running `RunQueue` (`poll()`, `running`, `cancel()`,
        `finished`, `summary()`)."""
        self.lastConfidenceNode = None
        items = queued_volumes(inputVolumes, referenceVolumes, outputVolumes)
        runner = self._readyRunner(items, installDependencies)
        options = self._runOptions(**settings)
        queue = RunQueue(items, lambda item: runner.start(slicer.mrmlScene, item.input_node, item.reference_node,
                                                          item.output_node, options, confidenceMap)).begin()
        if not waitForCompletion:
            return queue
        try:
            while queue.running:
                for event in queue.poll():
                    if progressCallback:
                        progressCallback(event)
                slicer.app.processEvents()
                time.sleep(0.05)
        except BaseException:
            queue.cancel()
            raise
        if queue.failures:
            raise MRISuperResError(queue.summary())
        for finished in queue.results:
            self.showResult(finished.output_node)
        return [finished.output_node for finished in queue.results]

    def _readyRunner(self, items, installDependencies):
        """A runner for Slicer's Python, after checking every item's nodes and then (when asked) installing the
        Python packages the core needs."""
        runner = SuperResolutionRunner(self.pythonExecutable(), slicer.util.startupEnvironment())
        for item in items:
            runner.check_inputs(item.input_node, item.reference_node, item.output_node)
        if installDependencies and dependencies.needed_packages():
            missing = dependencies.describe_needed()
            if not dependencies.install_missing(True):
                raise MRISuperResError(f"MRISuperRes needs Python packages that are not installed or too old ({missing}) "
                                       "and nothing was run; click Apply again and accept the installation.")
            still = dependencies.needed_packages()
            if still:
                raise MRISuperResError(f"The installation left {', '.join(still)} missing or too old; see the Python "
                                       "console for pip's messages, then restart Slicer and try again.")
        return runner

    @staticmethod
    def _runOptions(model=None, targetSpacing=None, scale=None, planes=None, device="auto", batchSize=None,
                    registerReference=True, referenceMode=None, adapt=None, consistency=True, force=False):
        # The run gets the thread count its plan line was computed with (torch's default in a fresh process).
        return RunOptions(model=model, target_spacing=tuple(targetSpacing) if targetSpacing else None,
                          scale=tuple(scale) if scale else None, planes=tuple(planes) if planes else None,
                          device=device, threads=installed_torch().cpu_threads, batch_size=batchSize,
                          register_reference=registerReference,
                          reference_mode=referenceMode, adapt=adapt, consistency=consistency, force=force)

    @staticmethod
    def showResult(node):
        slicer.util.setSliceViewerLayers(background=node, fit=True)


class MRISuperResTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: Developer mode → Reload and Test, or ctest."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_bad_input_is_refused_before_anything_is_installed()
        missing = dependencies.needed_packages()
        if missing:
            # Tests never install packages (on Slicer's build machines confirmations answer yes by themselves).
            logging.warning("MRISuperRes self-test: %s not installed, and tests never install packages; the "
                            "super-resolution runs were not tested", ", ".join(missing))
            self.delayDisplay("Runs not tested: " + ", ".join(missing) + " not installed")
            return
        self.setUp()
        self.test_cubic_and_trained_model_keep_the_planned_grid()
        self.setUp()
        self.test_cancel_leaves_the_scene_unchanged()
        self.setUp()
        self.test_texture_transfer_self_mode_adds_a_confidence_node()
        self.setUp()
        self.test_several_volumes_in_one_call()

    def _obliqueThickVolume(self):
        import numpy as np

        array = np.random.default_rng(0).random((10, 48, 40)).astype("float32") * 100
        node = slicer.util.addVolumeFromArray(array, name="thick")
        node.SetSpacing(0.9, 0.9, 4.0)
        node.SetOrigin(12.0, -30.0, 7.0)
        angle, tilt = np.radians(10.0), np.radians(5.0)
        rotation = (np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
                    @ np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]]))
        node.SetIJKToRASDirections(*rotation.ravel())  # an exact rotation: oblique, orthonormal
        return node

    def test_cubic_and_trained_model_keep_the_planned_grid(self):
        import numpy as np

        from MRISuperResLib.pipeline import plan_run
        from MRISuperResSlicer.nodes import grid_from_node, volume_from_node

        self.delayDisplay("Super-resolving an oblique thick-slice volume")
        inputNode = self._obliqueThickVolume()
        before = slicer.util.arrayFromVolume(inputNode).copy()
        logic = MRISuperResLogic()
        for model in ("cubic", logic.registry.default_name):
            output = logic.process(inputNode, model=model)
            planned = plan_run(volume_from_node(inputNode), model=model).target
            self.assertTrue(grid_from_node(output).same_as(planned, tolerance=1e-6))
            self.assertTrue(np.array_equal(slicer.util.arrayFromVolume(inputNode), before))
            slicer.mrmlScene.RemoveNode(output)
        self.delayDisplay("Test passed")

    def test_bad_input_is_refused_before_anything_is_installed(self):
        inputNode = self._obliqueThickVolume()
        logic = MRISuperResLogic()
        count = slicer.mrmlScene.GetNumberOfNodes()
        for arguments, message in (((None,), "No input volume is selected"),
                                   ((inputNode, inputNode), "The reference is the input itself")):
            with self.assertRaises(MRISuperResError) as raised:
                logic.process(*arguments, model="cubic", installDependencies=False)
            self.assertIn(message, str(raised.exception))
            self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        self.delayDisplay("Test passed")

    def test_cancel_leaves_the_scene_unchanged(self):
        inputNode = self._obliqueThickVolume()
        logic = MRISuperResLogic()
        count = slicer.mrmlScene.GetNumberOfNodes()
        run = logic.process(inputNode, model=logic.registry.default_name, waitForCompletion=False)
        run.cancel()
        with self.assertRaises(CancelledError):
            run.finish()
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        self.delayDisplay("Test passed")

    def test_several_volumes_in_one_call(self):
        self.delayDisplay("Two volumes in one call")
        first, second = self._obliqueThickVolume(), self._obliqueThickVolume()
        logic = MRISuperResLogic()
        outputs = logic.processVolumes([first, second], model="cubic")
        self.assertEqual(len(outputs), 2)
        self.assertTrue(all(node.GetName().startswith(first.GetName() + "_SR") for node in outputs))
        self.assertIsNot(outputs[0], outputs[1])
        with self.assertRaises(MRISuperResError):
            logic.processVolumes([first, first], model="cubic")
        self.delayDisplay("Test passed")

    def test_texture_transfer_self_mode_adds_a_confidence_node(self):
        logic = MRISuperResLogic()
        texture_models = [c.name for c in logic.registry.cards.values() if c.texture_transfer]
        self.assertTrue(texture_models, "no texture-transfer model is installed")
        self.delayDisplay(f"Texture transfer with {texture_models[0]}, self reference")
        inputNode = self._obliqueThickVolume()
        output = logic.process(inputNode, model=texture_models[0], referenceMode="self", confidenceMap=True)
        confidence = slicer.util.arrayFromVolume(logic.lastConfidenceNode)
        self.assertEqual(confidence.shape, slicer.util.arrayFromVolume(output).shape)
        self.assertTrue(0.0 <= confidence.min() and confidence.max() <= 1.0)
        self.delayDisplay("Test passed")
