"""Damaged or unusual files (issue 11): truncated or corrupt data, NaN/inf in NIfTI, values beyond float32,
sheared or degenerate directions. Each is refused with one sentence, exit code 2, no output, input untouched;
normal NIfTI files read exactly as ITK reads them."""

from __future__ import annotations

import gzip
import re

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import FLIPPED, OBLIQUE, smooth_volume
from conftest import assert_refused as refused
from MRISuperResLib import MRISuperResError, Volume, superresolve
from MRISuperResLib.io import read_volume, write_volume
from MRISuperResLib.volume import check_direction, check_float32_range

SHEAR = np.array([[1.0, 0.2, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # i and j axes 11.3° off square
SHEARED = "has a direction matrix that is not orthonormal (its i and j axes are sheared by 11.3 degrees); " \
          "resample it onto an orthogonal grid first"
DEGENERATE = "has a degenerate direction matrix (its j and k axes are parallel), so its voxels have no position " \
             "in space; fix its header or re-export it."
NON_FINITE = "has 1 NaN or infinite voxels; replace them (for example with 0) first."
TOO_LARGE = "has voxel values as large as 1e+300, beyond the ±3.4e38 that super-resolution can compute with; " \
            "rescale the image (for example divide it by a constant) first."


def assert_refused(cli, tmp_path, path, expected):
    """`mrisuperres run PATH -o out.nii.gz --model cubic` refuses with `expected`, writes nothing, keeps PATH."""
    refused(cli, tmp_path, [path, "--model", "cubic"], expected, [path])


def save_nifti(path, array_kji, affine, **header_fields):
    """A NIfTI file written by nibabel (not ITK), with the array given in our [k, j, i] order."""
    image = nib.Nifti1Image(array_kji.transpose(2, 1, 0), affine)
    for name, value in header_fields.items():
        image.header[name] = value
    nib.save(image, str(path))
    return path


def ras_affine(direction_lps, spacing=(0.9, 0.9, 4.0), origin=(1.0, 2.0, 3.0)):
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ direction_lps @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def sitk_volume(path):
    """What ITK alone reads: the behaviour every normal file must keep."""
    return Volume.from_sitk(sitk.ReadImage(str(path)))


# --- 2. truncated or corrupt files -------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_truncated_nifti(tmp_path, cli, suffix):
    path = write_volume(smooth_volume(), tmp_path / f"half{suffix}")
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(path))).size  # ITK alone "succeeds" with zero-filled slices
    assert_refused(cli, tmp_path, path, f"The input '{path}' is truncated (")
    with pytest.raises(MRISuperResError, match=r"is truncated \([\d,]+ of 69,120 bytes of image data\); "
                                               r"copy it again or re-export it\.$"):
        read_volume(path)


def test_gzip_stream_cut_after_the_image_data(tmp_path, cli):
    path = write_volume(smooth_volume(), tmp_path / "cut.nii.gz")
    path.write_bytes(path.read_bytes()[:-4])  # every voxel is there, the stream's length trailer is not
    assert_refused(cli, tmp_path, path, "is truncated (its gzip stream stops before its end marker); "
                                        "copy it again or re-export it.")


def test_gzip_with_a_wrong_checksum(tmp_path, cli):
    path = write_volume(smooth_volume(), tmp_path / "crc.nii.gz")
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # the CRC-32 of the decompressed data
    path.write_bytes(bytes(data))
    assert_refused(cli, tmp_path, path, "is corrupt (its compressed data fails to decompress: incorrect data check); "
                                        "copy it again or re-export it.")


def test_gzip_members_and_trailing_bytes_read_as_itk_reads_them(tmp_path):
    """Concatenated gzip members are one stream, and bytes after the last are ignored (zlib's gzread)."""
    original = write_volume(smooth_volume(), tmp_path / "one.nii.gz")
    raw = gzip.decompress(original.read_bytes())
    split = tmp_path / "two.nii.gz"
    split.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]) + b"\0\0\0\0junk")
    np.testing.assert_array_equal(read_volume(split).array, read_volume(original).array)


def test_truncated_header_is_unreadable(tmp_path, cli):
    path = write_volume(smooth_volume(), tmp_path / "stub.nii")
    path.write_bytes(path.read_bytes()[:200])
    assert_refused(cli, tmp_path, path, "could not be read as a volume; give NIfTI")


# --- 3. NaN and inf in NIfTI -------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_voxels_in_every_format(tmp_path, cli, suffix, bad):
    volume = smooth_volume()
    volume.array[2, 3, 4] = bad
    path = write_volume(volume, tmp_path / f"bad{suffix}")
    assert_refused(cli, tmp_path, path, f"The input '{path}' {NON_FINITE}")


@pytest.mark.parametrize("endianness", ["<", ">"])
def test_non_finite_voxels_counted_in_the_raw_nifti_data(tmp_path, monkeypatch, endianness):
    """Scaled, either byte order, float64 voxels straddling the read chunks: every NaN and inf is counted."""
    import MRISuperResLib.io as io

    monkeypatch.setattr(io, "CHUNK_BYTES", 1001)  # not a multiple of 8: voxels straddle chunk boundaries
    array = smooth_volume().array.astype(np.float64)
    array.flat[::97] = np.nan
    array.flat[5::131] = -np.inf
    expected = int(np.count_nonzero(~np.isfinite(array)))
    image = nib.Nifti1Image(array.transpose(2, 1, 0), ras_affine(OBLIQUE), nib.Nifti1Header(endianness=endianness))
    nib.save(image, str(tmp_path / "plain.nii"))
    raw = bytearray((tmp_path / "plain.nii").read_bytes())
    raw[112:120] = np.array([2.0, 10.0], endianness + "f4").tobytes()  # scl_slope, scl_inter (nibabel resets them)
    (tmp_path / "scaled.nii.gz").write_bytes(gzip.compress(bytes(raw)))
    assert nib.load(str(tmp_path / "scaled.nii.gz")).dataobj.slope == 2.0
    with pytest.raises(MRISuperResError, match=f"has {expected} NaN or infinite voxels"):
        read_volume(tmp_path / "scaled.nii.gz")


# --- 4. values beyond float32 ------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_values_beyond_float32_in_a_file(tmp_path, cli, suffix):
    array = smooth_volume().array.astype(np.float64)
    array[1, 2, 3] = 1e300
    path = tmp_path / f"huge{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path), True)  # Volume() itself would refuse the array
    assert_refused(cli, tmp_path, path, f"The input '{path}' {TOO_LARGE}")


def test_values_beyond_float32_through_the_python_api():
    array = smooth_volume().array.astype(np.float64)
    array[0, 0, 0] = -1e300
    with pytest.raises(MRISuperResError, match="The volume has voxel values as large as -1e\\+300, beyond the ±3.4e38"):
        Volume(array, (1, 1, 4))
    array[0, 0, 0] = 3e38  # large, but float32 holds it
    Volume(array, (1, 1, 4))
    array[0, 0, 0] = np.inf  # inf is check_scalar_volume's to name ("NaN or infinite voxels")
    check_float32_range(array)
    # A volume changed in place after it was made is checked again by the run, which leaves it as it was.
    volume = Volume(smooth_volume().array.astype(np.float64), (1, 1, 4))
    volume.array[1, 2, 3] = 1e300
    before = volume.array.copy()
    with pytest.raises(MRISuperResError, match="^The input has voxel values as large as 1e\\+300, beyond the ±3.4e38"):
        superresolve(volume, model="cubic")
    assert np.array_equal(volume.array, before)


# --- 5. sheared and degenerate directions ------------------------------------------------------------------------

def write_with_direction_line(path, direction_lps):
    """A NRRD or MetaImage whose header declares `direction_lps`, which ITK itself would refuse to write."""
    sitk.WriteImage(smooth_volume(direction=np.eye(3), spacing=(1.0, 1.0, 1.0)).to_sitk(), str(path), False)
    text = path.read_bytes()
    if path.suffix == ".nrrd":
        columns = " ".join("(" + ",".join(repr(float(v)) for v in direction_lps[:, c]) + ")" for c in range(3))
        text = re.sub(rb"space directions: [^\n]*", b"space directions: " + columns.encode(), text)
    else:
        values = " ".join(repr(float(v)) for v in direction_lps.T.ravel())
        text = re.sub(rb"TransformMatrix = [^\n]*", b"TransformMatrix = " + values.encode(), text)
    path.write_bytes(text)
    return path


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_sheared_direction(tmp_path, cli, suffix):
    path = write_volume(smooth_volume(direction=SHEAR), tmp_path / f"sheared{suffix}")
    assert sitk.ReadImage(str(path))  # ITK accepts it
    assert_refused(cli, tmp_path, path, f"The input '{path}' {SHEARED}")


def test_sheared_nifti_sform(tmp_path, cli):
    path = save_nifti(tmp_path / "sheared.nii.gz", smooth_volume().array, ras_affine(SHEAR), qform_code=0)
    assert_refused(cli, tmp_path, path, f"The input '{path}' {SHEARED}")


def test_sheared_volumes_through_the_python_api():
    sheared = smooth_volume(direction=SHEAR)
    before = sheared.array.copy()
    with pytest.raises(MRISuperResError, match=re.escape(f"The input {SHEARED}")):
        superresolve(sheared, model="cubic")
    assert np.array_equal(sheared.array, before) and np.array_equal(sheared.direction, SHEAR)
    reference = smooth_volume(direction=SHEAR, spacing=(0.9, 0.9, 0.9), shape_kji=(40, 40, 36))
    with pytest.raises(MRISuperResError, match=re.escape(f"The reference {SHEARED}")):
        superresolve(smooth_volume(), reference, model="cubic")


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".nii.gz"])
def test_degenerate_direction(tmp_path, cli, suffix):
    singular = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 0.0]])  # j and k point the same way
    if suffix == ".nii.gz":
        path = save_nifti(tmp_path / "flat.nii.gz", smooth_volume().array, ras_affine(singular), qform_code=0)
    else:
        path = write_with_direction_line(tmp_path / f"flat{suffix}", singular)
    with pytest.raises(RuntimeError):
        sitk.ReadImage(str(path))  # what used to end as "could not be read ... check that the file is complete"
    assert_refused(cli, tmp_path, path, f"The input '{path}' {DEGENERATE}")


@pytest.mark.parametrize("direction, expected", [
    (np.diag([1.0, 0.0, 1.0]), "a degenerate direction matrix (its j axis has zero length)"),
    (np.array([[1.0, 0, 1], [0, 1, 1], [0, 0, 0]]), "a degenerate direction matrix (its three axes lie in one plane)"),
    (np.diag([1.0, 1.0, np.nan]), "a degenerate direction matrix (it holds NaN or infinite entries)"),
    (np.diag([1.0, 1.0, 1.01]), "a direction matrix that is not orthonormal (its k axis has length 1.01 instead of 1)"),
    (SHEAR.T, "a direction matrix that is not orthonormal (its i and j axes are sheared by 11.3 degrees)"),
])
def test_direction_problems_are_named(direction, expected):
    with pytest.raises(MRISuperResError, match=re.escape(f"The input has {expected}")):
        check_direction(direction, "input")


@pytest.mark.parametrize("direction", [np.eye(3), OBLIQUE, FLIPPED, OBLIQUE + 1e-6], ids=["identity", "oblique",
                                                                                          "flipped", "round-off"])
def test_orthonormal_directions_pass(direction):
    check_direction(direction, "input")


# --- NIfTI reads as ITK reads it ---------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("direction", [np.eye(3), OBLIQUE, FLIPPED], ids=["identity", "oblique", "flipped"])
def test_nifti_grid_and_voxels_are_itks(tmp_path, suffix, direction):
    path = write_volume(smooth_volume(direction=direction), tmp_path / f"volume{suffix}")
    volume, itk = read_volume(path), sitk_volume(path)
    assert volume.grid.same_as(itk.grid, tolerance=0)
    assert volume.array.dtype == itk.array.dtype
    np.testing.assert_array_equal(volume.array, itk.array)


@pytest.mark.parametrize("endianness", ["<", ">"])
def test_foreign_nifti_grid_and_voxels_are_itks(tmp_path, endianness):
    """Written by nibabel: int16 with a scale, an oblique sform and qform, either byte order."""
    image = nib.Nifti1Image(smooth_volume().array.transpose(2, 1, 0), ras_affine(OBLIQUE),
                            nib.Nifti1Header(endianness=endianness))
    image.set_data_dtype(np.int16)  # nibabel picks a scale and offset for the float values
    path = tmp_path / "foreign.nii.gz"
    nib.save(image, str(path))
    assert nib.load(str(path)).dataobj.slope != 1.0
    volume, itk = read_volume(path), sitk_volume(path)
    assert volume.grid.same_as(itk.grid, tolerance=0)
    assert volume.array.dtype == itk.array.dtype
    np.testing.assert_array_equal(volume.array, itk.array)
    np.testing.assert_allclose(volume.direction, OBLIQUE, atol=1e-6)


def test_truncated_nifti2(tmp_path):
    """The NIfTI-2 header (which this ITK build cannot read at all) is understood well enough to say why."""
    path = tmp_path / "two.nii"
    nib.save(nib.Nifti2Image(smooth_volume().array.transpose(2, 1, 0), ras_affine(OBLIQUE)), str(path))
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(MRISuperResError, match=r"is truncated \(68,120 of 69,120 bytes of image data\)"):
        read_volume(path)


def test_nifti_with_sheared_sform_but_valid_qform_keeps_itks_choice(tmp_path):
    """ITK falls back to the (orthonormal) qform here; that reading is kept, not refused."""
    image = nib.Nifti1Image(smooth_volume().array.transpose(2, 1, 0), None)
    image.set_qform(ras_affine(OBLIQUE), code=1)
    image.set_sform(ras_affine(SHEAR), code=2)
    path = tmp_path / "qform.nii"
    nib.save(image, str(path))
    assert read_volume(path).grid.same_as(sitk_volume(path).grid, tolerance=0)
