"""Reading and writing volumes through SimpleITK: NIfTI, NRRD, MetaImage and DICOM series folders.

ITK's NIfTI reader fills missing data with zeros and reads NaN and inf as 0, so a NIfTI file's raw bytes are
checked here first (numpy and zlib only: Slicer's Python, which reads results through this module, has no nibabel).

Writing is atomic: the file appears under its final name only once it is complete, so a failed or
cancelled run never leaves a partial output behind.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import MRISuperResError
from .validation import check_scalar_volume, refuse_non_finite
from .volume import Volume, check_direction, check_float32_range

FILE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
SUPPORTED = "NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd) or a DICOM series folder"

GZIP_MAGIC = b"\x1f\x8b"
CHUNK_BYTES = 1 << 22
# NIfTI datatype code → bytes per voxel, and the numpy type of those that can hold NaN or inf.
NIFTI_VOXEL_BYTES = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8,
                     1536: 16, 1792: 16, 2048: 32, 2304: 4}
NIFTI_FLOAT_TYPES = {16: "f4", 32: "c8", 64: "f8", 1792: "c16"}
# Where the fields the checks need sit in each header version: name → (byte offset, numpy type, count).
NIFTI_FIELDS = {
    348: {"magic": (344, "S4", 1), "datatype": (70, "i2", 1), "dim": (40, "i2", 8), "vox_offset": (108, "f4", 1),
          "sform_code": (254, "i2", 1), "srow": (280, "f4", 12)},
    540: {"magic": (4, "S4", 1), "datatype": (12, "i2", 1), "dim": (16, "i8", 8), "vox_offset": (168, "i8", 1),
          "sform_code": (348, "i4", 1), "srow": (400, "f8", 12)},
}


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


@dataclass(frozen=True)
class NiftiHeader:
    """What the raw-data checks need from a single-file NIfTI-1 or NIfTI-2 header."""

    voxel_offset: int
    data_bytes: int
    float_type: np.dtype | None  # the voxel type, when it can hold NaN or inf
    sform: np.ndarray | None     # the 3×3 of srow_x/y/z (RAS, spacing included) when sform_code > 0


def _gunzip_chunks(file) -> Iterator[bytes]:
    """The decompressed bytes of a gzip file, as zlib's gzread (ITK's reader) sees them.

    Further gzip members continue the data and anything else after a member is ignored, as gzread does.
    Raises EOFError after the last bytes when the stream stops before its end marker, zlib.error when the
    data is corrupt (including a wrong checksum).
    """
    inflater = zlib.decompressobj(wbits=31)
    data = file.read(CHUNK_BYTES)
    while data:
        while data:  # bounded output: a highly compressed chunk must not expand to gigabytes at once
            yield inflater.decompress(data, CHUNK_BYTES)
            data = inflater.unconsumed_tail
        if inflater.eof:
            data = inflater.unused_data
            if len(data) < len(GZIP_MAGIC):
                data += file.read(CHUNK_BYTES)
            if not data.startswith(GZIP_MAGIC):
                return
            inflater = zlib.decompressobj(wbits=31)
        else:
            data = file.read(CHUNK_BYTES)
    if not inflater.eof:
        yield inflater.flush()  # output still held back by the bounded calls above
        if not inflater.eof:
            raise EOFError


def _file_chunks(path: Path) -> Iterator[bytes]:
    """The bytes of a NIfTI file as its reader sees them: decompressed when it is gzip (whatever its name)."""
    with open(path, "rb") as file:
        if file.read(len(GZIP_MAGIC)) == GZIP_MAGIC:
            file.seek(0)
            yield from _gunzip_chunks(file)
        else:
            file.seek(0)
            yield from iter(lambda: file.read(CHUNK_BYTES), b"")


def _parse_nifti_header(head: bytes) -> NiftiHeader | None:
    """The header at the start of `head`, or None when it is no single-file NIfTI header we can check."""
    for endian in "<>":
        size = int(np.frombuffer(head[:4].ljust(4, b"\0"), endian + "i4")[0])
        if size in NIFTI_FIELDS and len(head) >= size:
            break
    else:
        return None
    fields = {name: np.frombuffer(head, endian + kind if kind[0] != "S" else kind, count, offset)
              for name, (offset, kind, count) in NIFTI_FIELDS[size].items()}
    dim = [int(n) for n in fields["dim"]]
    datatype = int(fields["datatype"][0])
    if (fields["magic"][0] not in (b"n+1", b"n+2") or not 1 <= dim[0] <= 7 or min(dim[1:dim[0] + 1]) < 1
            or datatype not in NIFTI_VOXEL_BYTES or not np.isfinite(fields["vox_offset"][0])):
        return None
    voxel_offset = int(fields["vox_offset"][0])
    if voxel_offset < size:
        return None
    float_type = np.dtype(endian + NIFTI_FLOAT_TYPES[datatype]) if datatype in NIFTI_FLOAT_TYPES else None
    sform = fields["srow"].astype(np.float64).reshape(3, 4)[:, :3] if fields["sform_code"][0] > 0 else None
    return NiftiHeader(voxel_offset, int(np.prod(dim[1:dim[0] + 1], dtype=object)) * NIFTI_VOXEL_BYTES[datatype],
                       float_type, sform)


def _read_nifti_header(path: Path) -> NiftiHeader | None:
    """The NIfTI header of a .nii or .nii.gz file; None for other files and for headers ITK should judge."""
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return None
    with open(path, "rb") as file:
        head = file.read(1 << 16)  # ample for the compressed header
    if head.startswith(GZIP_MAGIC):
        try:  # only the header's bytes: damage further on is _scan_nifti_data's to name
            head = zlib.decompressobj(wbits=31).decompress(head, max(NIFTI_FIELDS))
        except zlib.error:
            return None
    return _parse_nifti_header(head)


def _count_non_finite(data: bytes, float_type: np.dtype) -> int:
    values = np.frombuffer(data, float_type)
    return int(values.size - np.count_nonzero(np.isfinite(values)))


def _scan_nifti_data(path: Path, header: NiftiHeader, role: str) -> int:
    """Refuse a truncated or corrupt NIfTI file; return how many of its voxels hold NaN or inf."""
    start, end = header.voxel_offset, header.voxel_offset + header.data_bytes
    position, carry, non_finite = 0, b"", 0
    stream_complete = True
    try:
        # The whole gzip stream is read, to its end marker and checksum, even past the image data.
        for chunk in _file_chunks(path):
            data = chunk[max(0, start - position):max(0, end - position)]
            position += len(chunk)
            if header.float_type is not None and data:
                data = carry + data  # a voxel may straddle two chunks
                whole = len(data) - len(data) % header.float_type.itemsize
                non_finite += _count_non_finite(data[:whole], header.float_type)
                carry = data[whole:]
    except EOFError:
        stream_complete = False
    except zlib.error as error:
        raise MRISuperResError(
            f"The {role} '{path}' is corrupt (its compressed data fails to decompress: "
            f"{str(error).rsplit(': ', 1)[-1]}); copy it again or re-export it.") from None
    present = min(max(position - start, 0), header.data_bytes)
    if present < header.data_bytes:
        raise MRISuperResError(
            f"The {role} '{path}' is truncated ({present:,} of {header.data_bytes:,} bytes of image data); "
            "copy it again or re-export it.")
    if not stream_complete:
        raise MRISuperResError(
            f"The {role} '{path}' is truncated (its gzip stream stops before its end marker); "
            "copy it again or re-export it.")
    return non_finite


def _header_direction(path: Path, nifti: NiftiHeader | None) -> np.ndarray | None:
    """The direction a file's header declares, read without building an image (which ITK refuses for some)."""
    if nifti is not None and nifti.sform is not None:
        # ITK refuses a sheared or singular sform (without a usable qform); name its flaw in ITK's LPS terms.
        matrix = np.diag([-1.0, -1.0, 1.0]) @ nifti.sform
        lengths = np.linalg.norm(matrix, axis=0)
        return matrix / np.where(lengths > 0, lengths, 1.0)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    dimension = reader.GetDimension()
    return np.reshape(reader.GetDirection(), (dimension, dimension))[:3, :3] if dimension >= 3 else None


def _image_to_volume(image: sitk.Image, path: Path, role: str, non_finite: int = 0,
                     allow_constant: bool = False) -> Volume:
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
    described = f"{role} '{path}'"
    if non_finite:
        refuse_non_finite(non_finite, described)  # counted in the raw NIfTI data: ITK reads them as 0
    check_float32_range(sitk.GetArrayViewFromImage(image), described)  # before Volume() refuses it without the path
    volume = Volume.from_sitk(image)
    check_scalar_volume(volume, described, allow_constant)
    return volume


def read_volume(path: str | os.PathLike, role: str = "input", allow_constant: bool = False) -> Volume:
    """Read a scalar 3D volume from a file or a DICOM series folder, refusing what cannot be super-resolved
    (`allow_constant`: except for being constant, for maps the product wrote itself).

    >>> volume = read_volume("t2_thick.nii.gz")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.exists():
        raise MRISuperResError(f"The {role} '{path}' does not exist; check the path.")
    non_finite = 0
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
        nifti = _read_nifti_header(path)
        non_finite = _scan_nifti_data(path, nifti, role) if nifti else 0
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError:
            # ITK refuses singular directions (and sheared NIfTI ones): say so rather than blame the file.
            direction = _header_direction(path, nifti)
            if direction is not None:
                check_direction(direction, f"{role} '{path}'")
            raise MRISuperResError(
                f"The {role} '{path}' could not be read as a volume; give {SUPPORTED}, "
                "and check that the file is complete.") from None
    return _image_to_volume(image, path, role, non_finite, allow_constant)


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early, before any work, when the output cannot be written where asked: `_check_output_path`, and
    the staging folder the write will make first is made and removed (os.access answers yes to root even where
    nothing can be created)."""
    path = _check_output_path(path)
    os.rmdir(_new_staging_folder(path))
    return path


def _check_output_path(path: str | os.PathLike) -> Path:
    """Refuse an output path that is a folder, has an unsupported extension, or lies in a folder that does
    not exist or that the permissions say cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise MRISuperResError(f"The output '{path}' is a folder; give a file name such as result.nii.gz.")
    if not _has_supported_suffix(path):
        raise MRISuperResError(f"The output '{path}' has an unsupported extension; name it with one of {', '.join(FILE_SUFFIXES)}.")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise MRISuperResError(f"The output folder '{parent}' does not exist; create it or choose another output path.")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise MRISuperResError(f"The output '{path}' is not writable; choose a folder you can write to.")
    return path


def _compressed(path: Path, compress: bool = True) -> bool:
    """Whether `write_volume` compresses the data of `path` (never that of a .nhdr header's data file)."""
    return compress and not path.name.lower().endswith(".nhdr")


def _detached_data_file(path: Path, compress: bool = True) -> Path | None:
    """The data file ITK writes beside a .mhd or .nhdr header."""
    name = path.name.lower()
    if name.endswith(".mhd"):
        return path.with_suffix(".zraw" if _compressed(path, compress) else ".raw")
    if name.endswith(".nhdr"):
        return path.with_suffix(".raw")
    return None


def files_of(path: str | os.PathLike) -> list[Path]:
    """The files a volume at `path` is stored in: the file itself and, for a .mhd or .nhdr header, the data
    file it names (when the header can be read)."""
    path = Path(path)
    files = [path]
    name = path.name.lower()
    keys = ("elementdatafile",) if name.endswith(".mhd") else ("data file", "datafile") if name.endswith(".nhdr") else ()
    if keys and path.is_file():
        try:
            lines = path.read_text(errors="replace").splitlines()[:200]
        except OSError:
            lines = []
        for line in lines:
            key, separator, value = line.partition("=" if name.endswith(".mhd") else ":")
            if separator and key.strip().lower() in keys and value.strip() and value.strip() != "LOCAL":
                files.append(path.parent / value.strip())
    return files


def check_new_output(path: str | os.PathLike, overwrite: bool = False, what: str = "output",
                     inputs: dict[str, str | os.PathLike | None] | None = None) -> Path:
    """`check_writable`; refuse to replace an existing file, or the data file of a .mhd or .nhdr output, unless
    asked to (`--overwrite`), and always refuse to replace a file that one of `inputs` (role: path) is read
    from."""
    path = check_writable(path)
    data = _detached_data_file(path)
    for role, given in (inputs or {}).items():
        if not given:
            continue
        for written in [path] + ([data] if data else []):
            if any(written.resolve() == source.resolve() for source in files_of(given)):
                held = "" if written == path else f" ('{written.name}' holds its voxels)"
                raise MRISuperResError(f"The {what} would overwrite the {role} '{given}'{held}; choose another path.")
    if path.exists() and not overwrite:
        raise MRISuperResError(f"The {what} '{path}' already exists; choose another name or pass --overwrite.")
    if data is not None and data.exists() and not overwrite:
        raise MRISuperResError(f"The {what}'s data file '{data}' already exists; choose another name or pass "
                               "--overwrite.")
    return path


STAGING_PREFIX = ".mrisuperres-"
# A staging folder whose writer cannot be identified (another machine, an older version) is stale after this.
STAGING_MAX_AGE_SECONDS = 24 * 3600


def _new_staging_folder(path: Path) -> Path:
    """A new staging folder beside `path`, named after the process and host that write it."""
    owner = f"{socket.gethostname().replace('-', '_')}-{os.getpid()}-"
    try:
        return Path(tempfile.mkdtemp(prefix=STAGING_PREFIX + owner, dir=path.parent))
    except OSError as error:
        raise MRISuperResError(f"The output '{path}' cannot be written ({error.strerror or error}); "
                               "choose a folder you can write to.") from None


def _process_alive(pid: int) -> bool:
    if sys.platform == "win32":
        return True  # no cheap check: leave such folders to the age limit
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_staging(folder: Path) -> list[Path]:
    """Remove the staging folders that killed runs left in `folder` (named after their writer's host and
    process id: removed when that process is gone; unnamed or from another host: after a day)."""
    removed = []
    host = socket.gethostname()
    for candidate in folder.glob(STAGING_PREFIX + "*"):
        if not candidate.is_dir():
            continue
        parts = candidate.name[len(STAGING_PREFIX):].split("-")
        try:
            ours, pid = parts[0] == host.replace("-", "_"), int(parts[1])
        except (IndexError, ValueError):
            ours, pid = False, -1
        try:
            stale = (not _process_alive(pid)) if ours else \
                time.time() - candidate.stat().st_mtime > STAGING_MAX_AGE_SECONDS
        except OSError:
            continue
        if stale:
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


def write_volume(volume: Volume, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write `volume` so that `path` appears only when complete (header and data files alike). The staging
    folder is removed when the write ends, also by an exception (SIGTERM is one in the CLI); folders left
    by runs that were killed outright are removed by the next write into the same folder."""
    path = _check_output_path(path)
    remove_stale_staging(path.parent)
    staging = _new_staging_folder(path)
    try:
        staged = staging / path.name
        try:
            sitk.WriteImage(volume.to_sitk(), str(staged), _compressed(path, compress))
            # ITK's NIfTI writer reports a short write (a full disk) on stderr and carries on: read it back.
            header = _read_nifti_header(staged)
            if header is not None:
                _scan_nifti_data(staged, header, "output")
        except (RuntimeError, OSError, MRISuperResError) as error:
            shutil.rmtree(staging, ignore_errors=True)  # the partial file's space counts as free
            free = shutil.disk_usage(path.parent).free
            reason = (f"the disk is full: {free / 2 ** 20:.1f} MB free for about "
                      f"{volume.array.size * 4 / 2 ** 20:.0f} MB of voxels"
                      if free < volume.array.size * 4 or "space left" in str(error) else
                      "it came out incomplete" if isinstance(error, MRISuperResError) else
                      str(error).strip().splitlines()[-1])
            raise MRISuperResError(f"The output '{path}' could not be written ({reason}); free some space or "
                                   "choose another folder, then run again.") from None
        # .nhdr/.mhd write a header beside a data file; move the data first so the header never dangles.
        for written in sorted(staging.iterdir(), key=lambda p: p.name == path.name):
            os.replace(written, path.parent / written.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
