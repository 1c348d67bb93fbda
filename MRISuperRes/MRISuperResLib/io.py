"""Reading and writing volumes through SimpleITK: NIfTI, NRRD, MetaImage and DICOM series folders.

Writing is atomic: the file appears under its final name only once it is complete, so a failed or
cancelled run never leaves a partial output behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import SimpleITK as sitk

from .errors import MRISuperResError
from .validation import check_scalar_volume
from .volume import Volume

FILE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
SUPPORTED = "NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd) or a DICOM series folder"


def _has_supported_suffix(path: Path) -> bool:
    return path.name.lower().endswith(FILE_SUFFIXES)


def _read_dicom_folder(folder: Path) -> sitk.Image:
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise MRISuperResError(f"The folder '{folder}' holds no DICOM series; give a volume file or a DICOM folder.")
    # A folder may hold several series (localisers, other contrasts): take the one with most slices.
    files = max((sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids), key=len)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    return reader.Execute()


def _image_to_volume(image: sitk.Image, path: Path, role: str) -> Volume:
    if image.GetNumberOfComponentsPerPixel() > 1:
        raise MRISuperResError(
            f"The {role} '{path}' is a vector or colour image with {image.GetNumberOfComponentsPerPixel()} "
            "components per voxel; extract one scalar channel first.")
    dimension = image.GetDimension()
    if dimension == 2:
        raise MRISuperResError(f"The {role} '{path}' is a 2D image; super-resolution needs a 3D volume.")
    if dimension == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    elif dimension != 3:
        raise MRISuperResError(
            f"The {role} '{path}' has {dimension} dimensions ({' × '.join(map(str, image.GetSize()))}); "
            "extract one 3D volume (for example one time point) first.")
    volume = Volume.from_sitk(image)
    check_scalar_volume(volume, f"{role} '{path}'")
    return volume


def read_volume(path: str | os.PathLike, role: str = "input") -> Volume:
    """Read a scalar 3D volume from a file or a DICOM series folder, refusing what cannot be super-resolved.

    >>> volume = read_volume("t2_thick.nii.gz")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.exists():
        raise MRISuperResError(f"The {role} '{path}' does not exist; check the path.")
    if path.is_dir():
        try:
            image = _read_dicom_folder(path)
        except RuntimeError as error:
            raise MRISuperResError(
                f"The DICOM folder '{path}' could not be read ({str(error).strip().splitlines()[-1]}); "
                "check that it holds one complete series.") from None
    else:
        if not os.access(path, os.R_OK):
            raise MRISuperResError(f"The {role} '{path}' is not readable; check its permissions.")
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError:
            raise MRISuperResError(
                f"The {role} '{path}' could not be read as a volume; give {SUPPORTED}, "
                "and check that the file is complete.") from None
    return _image_to_volume(image, path, role)


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early, before any work, when the output cannot be written where asked."""
    path = Path(path)
    if not _has_supported_suffix(path):
        raise MRISuperResError(f"The output '{path}' has an unsupported extension; name it with one of {', '.join(FILE_SUFFIXES)}.")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise MRISuperResError(f"The output folder '{parent}' does not exist; create it or choose another output path.")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise MRISuperResError(f"The output '{path}' is not writable; choose a folder you can write to.")
    if path.is_dir():
        raise MRISuperResError(f"The output '{path}' is a folder; give a file name such as result.nii.gz.")
    return path


def write_volume(volume: Volume, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write `volume` so that `path` appears only when complete (header and data files alike)."""
    path = check_writable(path)
    staging = Path(tempfile.mkdtemp(prefix=".mrisuperres-", dir=path.parent))
    try:
        sitk.WriteImage(volume.to_sitk(), str(staging / path.name), compress and not path.name.lower().endswith(".nhdr"))
        # .nhdr/.mhd write a header beside a data file; move the data first so the header never dangles.
        for written in sorted(staging.iterdir(), key=lambda p: p.name == path.name):
            os.replace(written, path.parent / written.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
