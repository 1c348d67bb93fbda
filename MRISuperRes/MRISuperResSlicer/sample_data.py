"""The demo phantom in Slicer's Sample Data module: a 4 mm-slice T2 and its 1 mm T1, made on the spot by the
core's phantom (no download), so that a first-time user tries the module in two clicks."""

from __future__ import annotations

import logging

import slicer

from MRISuperResSlicer.nodes import update_node_from_volume

CATEGORY = "MRI Super-Resolution"
SAMPLE_NAME = "MRISuperResPhantom"
NODE_NAMES = {"input": "PhantomT2_4mm", "reference": "PhantomT1"}


def load_phantom(scene=None) -> tuple:
    """Add the phantom's thick T2 and its T1 to `scene` (default: Slicer's); returns (input, reference)."""
    from MRISuperResLib.phantom import demo_volumes

    scene = scene or slicer.mrmlScene
    volumes = demo_volumes()
    nodes = []
    for role in ("input", "reference"):
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", NODE_NAMES[role])
        update_node_from_volume(node, volumes[role])
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        if display is not None:
            low, high = float(volumes[role].array.min()), float(volumes[role].array.max())
            display.SetAutoWindowLevel(False)
            display.SetWindowLevel(high - low, (high + low) / 2)
        nodes.append(node)
    return tuple(nodes)


def load_after_install(source=None) -> list:
    """Sample Data's button (with its source) and the module's button: install what the phantom needs if
    asked, then the nodes, with the input shown; [] when the user declines."""
    from MRISuperResSlicer import dependencies

    if dependencies.needed_packages() and not dependencies.install_missing(True):
        slicer.util.errorDisplay("The phantom is made by MRISuperRes's Python packages, which are not installed; "
                                 "accept the installation to load it.")
        return []
    nodes = load_phantom()
    slicer.util.setSliceViewerLayers(background=nodes[0], fit=True)
    return list(nodes)


def register(thumbnail: str | None = None) -> None:
    """Add the phantom to Sample Data (once per session; Sample Data ignores a repeated registration)."""
    try:
        import SampleData
    except ImportError:  # Slicer without the Sample Data module
        logging.info("MRISuperRes: Sample Data module not found; the phantom is not offered there")
        return
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=CATEGORY, sampleName=SAMPLE_NAME, uris=[], fileNames=[], nodeNames=[],
        thumbnailFileName=thumbnail, customDownloader=load_after_install)


