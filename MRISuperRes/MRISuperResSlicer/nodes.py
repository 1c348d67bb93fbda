"""The one place where Slicer volume nodes and core `Volume`s meet.

Slicer keeps voxels as KJI arrays with an IJKToRAS matrix (RAS); the core keeps KJI arrays with spacing,
origin and direction in LPS (SimpleITK's conventions). A parent transform is hardened into the geometry
when it is linear (the node itself is not touched), and refused when it is not.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk

from MRISuperResLib.errors import MRISuperResError
from MRISuperResLib.validation import check_scalar_volume
from MRISuperResLib.volume import Grid, Volume

RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])
NOT_SCALAR = ("vtkMRMLLabelMapVolumeNode", "vtkMRMLVectorVolumeNode", "vtkMRMLTensorVolumeNode",
              "vtkMRMLDiffusionWeightedVolumeNode")


def check_volume_node(node, role: str = "input") -> None:
    """Refuse what is not a scalar intensity volume, in the user's words."""
    if node is None:
        raise MRISuperResError(f"No {role} volume is selected; select a scalar MRI volume as {role}.")
    if not node.IsA("vtkMRMLScalarVolumeNode") or any(node.IsA(kind) for kind in NOT_SCALAR):
        kind = "label map" if node.IsA("vtkMRMLLabelMapVolumeNode") else node.GetClassName()
        raise MRISuperResError(f"The {role} '{node.GetName()}' is a {kind}, not a scalar volume; "
                               "select a scalar MRI volume.")
    image = node.GetImageData()
    if image is None:
        raise MRISuperResError(f"The {role} '{node.GetName()}' holds no image data; load a volume into it first.")
    if image.GetNumberOfScalarComponents() != 1:
        raise MRISuperResError(f"The {role} '{node.GetName()}' has {image.GetNumberOfScalarComponents()} components "
                               "per voxel; extract one scalar channel first.")


def world_ijk_to_ras(node, role: str = "input") -> np.ndarray:
    """The node's IJK → world RAS matrix (4 × 4), its linear parent transforms included."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    ijk_to_ras = slicer.util.arrayFromVTKMatrix(matrix)
    parent = node.GetParentTransformNode()
    if parent is not None:
        if not parent.IsTransformToWorldLinear():
            raise MRISuperResError(
                f"The {role} '{node.GetName()}' is under a non-linear transform; harden it first "
                "(Data module: right-click the volume, Harden transform).")
        to_world = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(to_world)
        ijk_to_ras = slicer.util.arrayFromVTKMatrix(to_world) @ ijk_to_ras
    return ijk_to_ras


def grid_from_ijk_to_ras(ijk_to_ras: np.ndarray, size_ijk) -> Grid:
    axes = np.asarray(ijk_to_ras, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    direction_lps = RAS_FROM_LPS @ (axes / spacing)
    origin_lps = RAS_FROM_LPS @ np.asarray(ijk_to_ras, dtype=np.float64)[:3, 3]
    return Grid(tuple(size_ijk), tuple(spacing), tuple(origin_lps), direction_lps)


def ijk_to_ras_from_grid(grid: Grid) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = RAS_FROM_LPS @ grid.direction @ np.diag(grid.spacing)
    matrix[:3, 3] = RAS_FROM_LPS @ np.asarray(grid.origin)
    return matrix


def grid_from_node(node, role: str = "input") -> Grid:
    """The node's grid in world LPS, without copying its voxels (for plans and live estimates)."""
    check_volume_node(node, role)
    return grid_from_ijk_to_ras(world_ijk_to_ras(node, role), node.GetImageData().GetDimensions())


_SHARES_CACHE: dict = {}


def signal_shares_of_node(node, batch_size: int) -> dict[int, float] | None:
    """`foreground.scan_signal_shares` of the node's voxels, as `mrisuperres plan` counts them, so that the
    module's plan and device lines give the time the run's own plan gives. Cached per node and modification
    (the lines are redrawn on every parameter change; 0.05 s on 240 x 240 x 38 voxels, more on large scans).
    None before scipy is installed (the module's dependencies): the plan then counts every pixel."""
    try:
        from MRISuperResLib.foreground import scan_signal_shares
    except ImportError:
        return None
    key = (node.GetID(), node.GetImageData().GetMTime(), node.GetMTime(), batch_size)
    if key not in _SHARES_CACHE:
        _SHARES_CACHE.clear()  # one node at a time is planned: keep only its latest
        _SHARES_CACHE[key] = scan_signal_shares(slicer.util.arrayFromVolume(node), batch_size)
    return _SHARES_CACHE[key]


def volume_from_node(node, role: str = "input") -> Volume:
    """A copy of the node's voxels with its world geometry, checked as the core checks files."""
    grid = grid_from_node(node, role)
    volume = Volume.on_grid(np.array(slicer.util.arrayFromVolume(node), copy=True), grid)
    check_scalar_volume(volume, f"{role} '{node.GetName()}'")
    return volume


def update_node_from_volume(node, volume: Volume) -> None:
    """Fill `node` with the voxels and geometry of `volume`; the node gets no parent transform."""
    slicer.util.updateVolumeFromArray(node, volume.array)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras_from_grid(volume.grid)))
    node.SetAndObserveTransformNodeID(None)
    node.Modified()


def copy_window_level(source, target) -> None:
    """Show `target` with `source`'s window/level, so that before and after compare at a glance."""
    source_display = source.GetDisplayNode()
    if source_display is None:
        return
    if target.GetDisplayNode() is None:
        target.CreateDefaultDisplayNodes()
    target_display = target.GetDisplayNode()
    if target_display is None:
        return
    target_display.SetAutoWindowLevel(False)
    target_display.SetWindowLevel(source_display.GetWindow(), source_display.GetLevel())
