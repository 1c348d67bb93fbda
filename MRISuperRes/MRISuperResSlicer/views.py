"""After a run: the input and the result side by side (linked, on a plane that holds the thick-slice axis), the
confidence map as a colour overlay on the result, and the previous layout one call away. MRML only, so that a
scene without an application (slicer-core) can be checked."""

from __future__ import annotations

import numpy as np
import slicer

from MRISuperResSlicer.nodes import world_ijk_to_ras

SIDE_BY_SIDE = slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView
CONFIDENCE_OPACITY = 0.4
CONFIDENCE_COLOURS = ("vtkMRMLColorTableNodeFileViridis.txt", "vtkMRMLColorTableNodeRainbow")


def _by_layout_name(scene, class_name: str) -> dict:
    nodes = scene.GetNodesByClass(class_name)
    return {nodes.GetItemAsObject(i).GetLayoutName(): nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())}


def comparison_orientation(node) -> str:
    """The slice orientation in which the node's thickest voxel axis runs within the view: the input's blur
    and the result's detail show there, not in the acquired plane."""
    axes = world_ijk_to_ras(node)[:3, :3]
    thick = axes[:, int(np.argmax(np.linalg.norm(axes, axis=0)))]
    return "Coronal" if int(np.argmax(np.abs(thick))) == 2 else "Axial"  # S runs in coronal; R and A in axial


def show_comparison(scene, input_node, result_node, confidence_node=None) -> int | None:
    """Input left (Red), result right (Yellow), both on the same plane and linked; the confidence map over the
    result. Returns the layout that was shown before (None when the scene has no layout node)."""
    layout = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    previous = None
    if layout is not None:
        previous = layout.GetViewArrangement()
        layout.SetViewArrangement(SIDE_BY_SIDE)
    composites = _by_layout_name(scene, "vtkMRMLSliceCompositeNode")
    slices = _by_layout_name(scene, "vtkMRMLSliceNode")
    orientation = comparison_orientation(input_node)
    for view, background in (("Red", input_node), ("Yellow", result_node)):
        if view in slices:
            slices[view].SetOrientation(orientation)
        composite = composites.get(view)
        if composite is None:
            continue
        overlay = confidence_node if view == "Yellow" else None
        composite.SetBackgroundVolumeID(background.GetID())
        composite.SetForegroundVolumeID(overlay.GetID() if overlay is not None else None)
        composite.SetForegroundOpacity(CONFIDENCE_OPACITY if overlay is not None else 0.0)
        composite.SetLinkedControl(True)
    if confidence_node is not None:
        colour_confidence(scene, confidence_node)
    return previous


def colour_confidence(scene, confidence_node) -> None:
    """0–1 on a perceptual colour table, fixed window (so maps from two runs compare), with a legend when the
    application's Colors module is there to draw it."""
    confidence_node.CreateDefaultDisplayNodes()
    display = confidence_node.GetDisplayNode()
    if display is None:
        return
    for colour in CONFIDENCE_COLOURS:
        if scene.GetNodeByID(colour) is not None:
            display.SetAndObserveColorNodeID(colour)
            break
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(0.0, 1.0)
    colors = getattr(getattr(slicer, "modules", None), "colors", None)
    if colors is not None:
        colors.logic().AddDefaultColorLegendDisplayNode(confidence_node)


def restore_layout(scene, previous: int | None) -> None:
    layout = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    if layout is not None and previous is not None:
        layout.SetViewArrangement(previous)
