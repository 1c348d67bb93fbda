"""Reading and writing every supported format keeps the array and the full geometry."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import FLIPPED, OBLIQUE, smooth_volume
from MRISuperResLib.io import read_volume, write_volume


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"])
@pytest.mark.parametrize("direction", [np.eye(3), OBLIQUE, FLIPPED], ids=["identity", "oblique", "flipped"])
def test_round_trip_keeps_geometry(tmp_path, suffix, direction):
    volume = smooth_volume(direction=direction)
    path = write_volume(volume, tmp_path / f"volume{suffix}")
    back = read_volume(path)
    assert back.grid.same_as(volume.grid, tolerance=1e-5)
    np.testing.assert_allclose(back.array, volume.array, rtol=1e-6)
    # Nothing but the result (and a detached data file for .nhdr/.mhd) is left in the folder.
    assert {p.name for p in tmp_path.iterdir()} <= {f"volume{suffix}", "volume.raw", "volume.raw.gz", "volume.zraw"}


def test_dicom_series_folder_is_read_with_its_geometry(tmp_path):
    volume = smooth_volume(shape_kji=(6, 24, 20), spacing=(0.7, 0.7, 3.0), direction=OBLIQUE)
    image = sitk.Cast(volume.to_sitk(), sitk.sitkInt16)
    direction = volume.direction
    orientation = "\\".join(f"{v:.10f}" for v in list(direction[:, 0]) + list(direction[:, 1]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        slice_image = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        for tag, value in [("0008|0060", "MR"), ("0020|000e", "1.2.826.0.1.3680043.2.1125.1"),
                           ("0020|000d", "1.2.826.0.1.3680043.2.1125.2"), ("0020|0037", orientation),
                           ("0020|0032", "\\".join(f"{p:.10f}" for p in position)), ("0020|0013", str(k + 1)),
                           ("0018|0050", "3.0"), ("0008|0018", f"1.2.826.0.1.3680043.2.1125.3.{k + 1}")]:
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(tmp_path / f"slice{k:03d}.dcm"))
        writer.Execute(slice_image)
    back = read_volume(tmp_path)
    assert back.grid.size == volume.grid.size
    np.testing.assert_allclose(back.spacing, volume.spacing, atol=1e-4)
    np.testing.assert_allclose(back.origin, volume.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, volume.direction, atol=1e-6)
    np.testing.assert_array_equal(back.array, sitk.GetArrayFromImage(image))
