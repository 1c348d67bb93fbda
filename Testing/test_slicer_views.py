"""Sample data, the side-by-side comparison and the log panel, against a real MRML scene (slicer-core)."""

from __future__ import annotations

import logging
import sys
import types

import numpy as np
import pytest
import slicer

from MRISuperResLib.phantom import demo_volumes
from MRISuperResSlicer import log_panel, sample_data, views
from MRISuperResSlicer.nodes import update_node_from_volume, volume_from_node


def scene_with_views():
    """A scene as Slicer's application sets it up: a layout node and the Red and Yellow slice views."""
    scene = slicer.vtkMRMLScene()
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    layout = scene.AddNewNodeByClass("vtkMRMLLayoutNode")
    layout.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
    for name, orientation in (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal")):
        view = scene.AddNewNodeByClass("vtkMRMLSliceNode")
        view.SetLayoutName(name)
        view.SetOrientation(orientation)
        composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
        composite.SetLayoutName(name)
    return scene


def test_sample_data_adds_the_phantom_with_its_geometry():
    scene = slicer.vtkMRMLScene()
    inputNode, referenceNode = sample_data.load_phantom(scene)
    expected = demo_volumes()
    for node, role in ((inputNode, "input"), (referenceNode, "reference")):
        volume = volume_from_node(node)
        assert volume.grid.same_as(expected[role].grid, tolerance=1e-6)
        np.testing.assert_array_equal(volume.array, expected[role].array)
        assert node.GetName() == sample_data.NODE_NAMES[role]
        display = node.GetDisplayNode()
        assert display is not None and not display.GetAutoWindowLevel()
    assert volume_from_node(inputNode).spacing == pytest.approx((1.0, 1.0, 4.0))
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 2


def test_sample_data_registers_one_source_without_a_download(monkeypatch):
    registered = []

    def register(**arguments):
        # Sample Data refuses a source whose file lists differ in length (SampleDataSource.__init__).
        assert len(arguments["uris"]) == len(arguments["fileNames"]) == len(arguments["nodeNames"])
        registered.append(arguments)

    fake = types.SimpleNamespace(SampleDataLogic=types.SimpleNamespace(registerCustomSampleDataSource=register))
    monkeypatch.setitem(sys.modules, "SampleData", fake)
    sample_data.register("icon.png")
    assert len(registered) == 1
    source = registered[0]
    assert source["sampleName"] == sample_data.SAMPLE_NAME and source["category"] == sample_data.CATEGORY
    assert source["uris"] == [] and callable(source["customDownloader"]) and source["thumbnailFileName"] == "icon.png"


def test_sample_data_without_the_sample_data_module_is_a_log_line(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "SampleData", None)  # import SampleData raises ImportError
    with caplog.at_level(logging.INFO):
        sample_data.register()
    assert "Sample Data module not found" in caplog.text


def test_comparison_shows_input_and_result_side_by_side_and_swaps_back():
    scene = scene_with_views()
    volumes = demo_volumes()
    inputNode, referenceNode = sample_data.load_phantom(scene)
    result = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "result")
    update_node_from_volume(result, volumes["truth"])
    confidence = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "confidence")
    update_node_from_volume(confidence, volumes["truth"].with_array(np.full(volumes["truth"].array.shape, 0.5,
                                                                          dtype=np.float32)))
    previous = views.show_comparison(scene, inputNode, result, confidence)

    layout = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    assert previous == slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView
    assert layout.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView
    composites = views._by_layout_name(scene, "vtkMRMLSliceCompositeNode")
    slices = views._by_layout_name(scene, "vtkMRMLSliceNode")
    assert composites["Red"].GetBackgroundVolumeID() == inputNode.GetID()
    assert composites["Yellow"].GetBackgroundVolumeID() == result.GetID()
    assert composites["Yellow"].GetForegroundVolumeID() == confidence.GetID()
    assert composites["Yellow"].GetForegroundOpacity() == pytest.approx(views.CONFIDENCE_OPACITY)
    assert composites["Red"].GetForegroundVolumeID() is None
    assert composites["Red"].GetLinkedControl() and composites["Yellow"].GetLinkedControl()
    # The phantom's thick axis is k (superior): both views show it running within the slice.
    assert slices["Red"].GetOrientationString() == slices["Yellow"].GetOrientationString() == "Coronal"
    display = confidence.GetDisplayNode()
    assert (display.GetWindow(), display.GetLevel()) == pytest.approx((1.0, 0.5))

    views.restore_layout(scene, previous)
    assert layout.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView


def test_comparison_plane_holds_the_thick_axis():
    scene = slicer.vtkMRMLScene()
    volume = demo_volumes()["truth"]
    for spacing, expected in (((1.0, 1.0, 4.0), "Coronal"), ((1.0, 4.0, 1.0), "Axial"), ((4.0, 1.0, 1.0), "Axial")):
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        update_node_from_volume(node, type(volume)(volume.array, spacing, volume.origin, volume.direction))
        assert views.comparison_orientation(node) == expected, spacing


def test_log_panel_gets_every_module_line_until_detached():
    lines = []
    handler = log_panel.attach(lines.append)
    try:
        logging.getLogger("MRISuperResLib.job").info("mrisuperres: %s", "reference registered")
        logging.getLogger("MRISuperResSlicer.runner").warning("something to see")
        logging.getLogger("elsewhere").warning("not ours")
    finally:
        log_panel.detach(handler)
    logging.getLogger("MRISuperResLib.job").info("after detach")
    assert len(lines) == 2
    assert lines[0].endswith("INFO mrisuperres: reference registered") and "WARNING something to see" in lines[1]
