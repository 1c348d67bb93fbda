"""Slicer volume nodes ↔ core volumes, against a real MRML scene (slicer-core from PyPI)."""

from __future__ import annotations

import numpy as np
import pytest

import slicer  # slicer-core from PyPI, installed by scripts/setup.sh with the test extra
import vtk

from conftest import FLIPPED, OBLIQUE, smooth_volume  # noqa: E402
from MRISuperResLib import MRISuperResError, Volume  # noqa: E402
from MRISuperResLib.io import read_volume, write_volume  # noqa: E402
from MRISuperResSlicer.nodes import (grid_from_node, ijk_to_ras_from_grid, update_node_from_volume,  # noqa: E402
                                     volume_from_node)


def node_with(scene, volume: Volume, name="volume"):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    update_node_from_volume(node, volume)
    return node


@pytest.mark.parametrize("direction", [np.eye(3), OBLIQUE, FLIPPED], ids=["identity", "oblique", "flipped"])
def test_volume_to_node_to_volume_keeps_geometry(direction):
    scene = slicer.vtkMRMLScene()
    volume = smooth_volume(direction=direction)
    node = node_with(scene, volume)
    back = volume_from_node(node)
    assert back.grid.same_as(volume.grid, tolerance=1e-6)
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), volume.array)  # KJI, no transposition


def test_node_geometry_is_ras_and_volume_geometry_is_lps():
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    slicer.util.updateVolumeFromArray(node, np.arange(60, dtype=np.float32).reshape(3, 4, 5))
    node.SetSpacing(0.5, 0.7, 3.0)
    node.SetOrigin(10.0, -20.0, 30.0)  # RAS
    node.SetIJKToRASDirections(-1, 0, 0, 0, -1, 0, 0, 0, 1)  # LPS axes as Slicer stores an ITK image
    grid = grid_from_node(node)
    assert grid.size == (5, 4, 3) and grid.spacing == pytest.approx((0.5, 0.7, 3.0))
    assert grid.origin == pytest.approx((-10.0, 20.0, 30.0))
    np.testing.assert_allclose(grid.direction, np.eye(3), atol=1e-12)


def test_node_and_file_agree_on_physical_positions(tmp_path):
    """A voxel's RAS position from the node equals the LPS position SimpleITK gives, with x and y negated."""
    scene = slicer.vtkMRMLScene()
    volume = smooth_volume(direction=OBLIQUE)
    back = read_volume(write_volume(volume, tmp_path / "v.nrrd"))
    node = node_with(scene, back)
    ijk = np.array([3.0, 7.0, 2.0, 1.0])
    ras = ijk_to_ras_from_grid(grid_from_node(node)) @ ijk
    lps = back.to_sitk().TransformContinuousIndexToPhysicalPoint(tuple(ijk[:3]))
    np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], lps[2]], atol=1e-6)


def test_linear_parent_transform_is_hardened_into_the_geometry():
    scene = slicer.vtkMRMLScene()
    volume = smooth_volume(direction=np.eye(3))
    node = node_with(scene, volume)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 12.0)  # 12 mm towards Right
    transform.SetMatrixTransformToParent(matrix)
    node.SetAndObserveTransformNodeID(transform.GetID())
    moved = volume_from_node(node)
    np.testing.assert_allclose(np.asarray(moved.origin) - np.asarray(volume.origin), [-12.0, 0, 0], atol=1e-9)
    assert node.GetParentTransformNode() is transform  # the node itself is untouched


def test_non_linear_parent_transform_is_refused():
    scene = slicer.vtkMRMLScene()
    node = node_with(scene, smooth_volume())
    transform = scene.AddNewNodeByClass("vtkMRMLTransformNode")
    grid = vtk.vtkImageData()
    grid.SetDimensions(3, 3, 3)
    grid.AllocateScalars(vtk.VTK_DOUBLE, 3)
    displacement = vtk.vtkGridTransform()
    displacement.SetDisplacementGridData(grid)
    transform.SetAndObserveTransformToParent(displacement)
    node.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(MRISuperResError, match="is under a non-linear transform; harden it first"):
        volume_from_node(node)


@pytest.mark.parametrize("node_class, expected", [("vtkMRMLLabelMapVolumeNode", "is a label map, not a scalar volume"),
                                                  ("vtkMRMLVectorVolumeNode", "is a vtkMRMLVectorVolumeNode, not a scalar")])
def test_non_scalar_nodes_are_refused(node_class, expected):
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass(node_class, "odd")
    slicer.util.updateVolumeFromArray(node, np.ones((3, 4, 5), np.float32))
    with pytest.raises(MRISuperResError, match=expected):
        volume_from_node(node)


def test_empty_and_missing_nodes_are_refused():
    scene = slicer.vtkMRMLScene()
    with pytest.raises(MRISuperResError, match="No input volume is selected"):
        volume_from_node(None)
    with pytest.raises(MRISuperResError, match="holds no image data"):
        volume_from_node(scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty"))


def test_the_module_plans_a_node_with_the_signal_shares_the_run_counts():
    from MRISuperResLib.foreground import scan_signal_shares
    from MRISuperResSlicer.nodes import signal_shares_of_node

    scene = slicer.vtkMRMLScene()
    volume = smooth_volume(shape_kji=(12, 64, 64))
    volume.array[:, :, :40] = 0  # a head that fills part of the field of view
    node = node_with(scene, volume)
    shares = signal_shares_of_node(node, 8)
    assert shares == scan_signal_shares(volume.array, 8) and min(shares.values()) < 1
    assert signal_shares_of_node(node, 8) is shares  # redrawn lines reuse it
    slicer.util.updateVolumeFromArray(node, np.full((12, 64, 64), 100.0, np.float32))
    assert signal_shares_of_node(node, 8) == scan_signal_shares(np.full((12, 64, 64), 100.0, np.float32), 8)
