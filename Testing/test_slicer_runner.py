"""The module's node-level logic against a real MRML scene, with the core in a real child process."""

from __future__ import annotations

import logging
import sys
import tempfile
import threading
import time

import numpy as np
import pytest
import slicer

from conftest import OBLIQUE, smooth_volume
from MRISuperResLib import CancelledError, MRISuperResError, plan_run
from MRISuperResLib.job import RunOptions
from MRISuperResSlicer.nodes import update_node_from_volume, volume_from_node
from MRISuperResSlicer.runner import SuperResolutionRunner


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture(autouse=True)
def run_folders(tmp_path, monkeypatch):
    """The system temp folder of these tests, where every run's folder (with a copy of the patient's input)
    lives: after each test, none may remain, whether the run succeeded, failed, crashed or was cancelled."""
    folder = tmp_path / "system-temp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder
    assert not list(folder.glob("MRISuperRes-*")), "a run left its folder (with a copy of the input) behind"


def add_volume(scene, volume, name):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    update_node_from_volume(node, volume)
    node.CreateDefaultDisplayNodes()
    node.GetDisplayNode().SetAutoWindowLevel(False)
    node.GetDisplayNode().SetWindowLevel(80.0, 110.0)
    return node


def node_ids(scene):
    return sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))


@pytest.mark.parametrize("model", ["cubic", "tiny"])
def test_process_creates_the_output_node_on_the_planned_grid(scene, model, untrained_models_dir):
    volume = smooth_volume(direction=OBLIQUE)
    reference = smooth_volume(shape_kji=(48, 40, 36), spacing=(0.9, 0.9, 1.0), direction=OBLIQUE, seed=5)
    input_node = add_volume(scene, volume, "T2 thick")
    reference_node = add_volume(scene, reference, "T1")
    before = slicer.util.arrayFromVolume(input_node).copy()
    events = []
    # An untrained network would adapt and then fall back to cubic: keep this glue test on the network path.
    options = RunOptions(model=model, models_dir=str(untrained_models_dir), self_check=False)
    output = SuperResolutionRunner().process(scene, input_node, reference_node, options=options, progress=events.append)
    assert output.GetName() == "T2 thick_SR"
    planned = plan_run(volume, reference, model=model, models_dir=str(untrained_models_dir)).target
    assert volume_from_node(output).grid.same_as(planned, tolerance=1e-6)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(input_node), before)
    assert output.GetDisplayNode().GetWindow() == pytest.approx(80.0)
    assert events[-1].stage == "done" and "interpolate" in {e.stage for e in events}


@pytest.mark.parametrize("mode", ["self", "unpaired"])
def test_texture_transfer_adds_a_confidence_node(scene, texture_models_dir, mode):
    volume = smooth_volume(shape_kji=(10, 48, 44), direction=OBLIQUE)
    input_node = add_volume(scene, volume, "T2 thick")
    reference_node = None
    if mode == "unpaired":
        reference_node = add_volume(scene, smooth_volume(shape_kji=(40, 48, 44), spacing=(0.9, 0.9, 1.0), seed=3,
                                                         origin=(300.0, 200.0, -100.0)), "other T1")
    # Untrained networks: without the self-check, which would fall back to cubic interpolation (below).
    options = RunOptions(models_dir=str(texture_models_dir), reference_mode=mode, threads=1, self_check=False)
    run = SuperResolutionRunner().start(scene, input_node, reference_node, options=options, confidence=True)
    output = run.wait()
    confidence = volume_from_node(run.confidence_node)
    assert run.confidence_node.GetName() == "T2 thick_SR_confidence"
    assert confidence.grid.same_as(volume_from_node(output).grid, tolerance=1e-6)
    assert 0.0 <= confidence.array.min() and confidence.array.max() <= 1.0


def test_a_texture_run_that_falls_back_to_cubic_adds_a_confidence_node_of_zeros(scene, texture_models_dir):
    input_node = add_volume(scene, smooth_volume(shape_kji=(10, 48, 44)), "T2 thick")
    options = RunOptions(models_dir=str(texture_models_dir), threads=1, adapt=0)
    run = SuperResolutionRunner().start(scene, input_node, None, options=options, confidence=True)
    output = run.wait()
    confidence = slicer.util.arrayFromVolume(run.confidence_node)
    assert confidence.shape == slicer.util.arrayFromVolume(output).shape and not confidence.any()


def test_process_fills_a_given_output_node(scene):
    input_node = add_volume(scene, smooth_volume(), "in")
    output = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "mine")
    result = SuperResolutionRunner().process(scene, input_node, output_node=output, options=RunOptions(model="cubic"))
    assert result is output and slicer.util.arrayFromVolume(output).shape == (53, 40, 36)


def test_bad_input_leaves_the_scene_unchanged(scene):
    runner = SuperResolutionRunner()
    input_node = add_volume(scene, smooth_volume(), "in")
    label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    slicer.util.updateVolumeFromArray(label, np.ones((3, 4, 5), np.uint8))
    unchanged = node_ids(scene)
    cases = [((None,), "No input volume is selected"),
             ((label,), "is a label map, not a scalar volume"),
             ((input_node, input_node), "The reference is the input itself"),
             ((input_node, None, input_node), "The output volume is one of the inputs")]
    for args, message in cases:
        with pytest.raises(MRISuperResError, match=message):
            runner.process(scene, *args, options=RunOptions(model="cubic"))
        assert node_ids(scene) == unchanged


def test_failing_child_reports_its_sentence_and_creates_nothing(scene, caplog):
    input_node = add_volume(scene, smooth_volume(), "in")
    unchanged = node_ids(scene)
    with caplog.at_level(logging.INFO, logger="MRISuperResLib.job"):
        with pytest.raises(MRISuperResError, match="^Unknown model 'magic'; choose one of: cubic"):
            SuperResolutionRunner().process(scene, input_node, options=RunOptions(model="magic"))
    assert node_ids(scene) == unchanged
    # The child's stderr reaches the log (Slicer's Python log), where the error messages point.
    assert any("mrisuperres: error: Unknown model 'magic'" in record.getMessage() for record in caplog.records)


def test_crashing_child_is_reported_and_creates_nothing(scene):
    input_node = add_volume(scene, smooth_volume(), "in")
    unchanged = node_ids(scene)
    runner = SuperResolutionRunner(python=sys.executable, environment={"PYTHONPATH": "/nonexistent", "PATH": ""})
    runner.environment["PYTHONHOME"] = "/nonexistent"  # the child's Python cannot even start
    with pytest.raises(MRISuperResError, match="The super-resolution process failed"):
        runner.process(scene, input_node, options=RunOptions(model="cubic"))
    assert node_ids(scene) == unchanged


def test_cancel_kills_the_child_and_leaves_the_scene_unchanged(scene, untrained_models_dir):
    big = smooth_volume(shape_kji=(30, 200, 200), spacing=(0.9, 0.9, 4.0))
    input_node = add_volume(scene, big, "in")
    unchanged = node_ids(scene)
    run = SuperResolutionRunner().start(scene, input_node, options=RunOptions(
        model="tiny", models_dir=str(untrained_models_dir), batch_size=1, threads=1, self_check=False))
    deadline = time.monotonic() + 60
    while not any(e.stage == "model" for e in run.pending_events()) and time.monotonic() < deadline:
        time.sleep(0.05)
    run.cancel()
    assert not run.running and not run.folder.exists()
    with pytest.raises(CancelledError):
        run.finish()
    assert node_ids(scene) == unchanged


def test_wait_can_be_cancelled_from_another_thread(scene):
    input_node = add_volume(scene, smooth_volume(), "in")
    run = SuperResolutionRunner().start(scene, input_node, options=RunOptions(model="cubic"))
    threading.Thread(target=run.job.cancel).start()
    try:
        run.wait()
    except CancelledError:
        assert scene.GetFirstNodeByName("in_SR") is None
