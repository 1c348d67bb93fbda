"""Every bad input: one sentence naming the problem and the fix, a non-zero exit, no output, input untouched."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import assert_refused, digest, smooth_volume
from MRISuperResLib import MRISuperResError, Volume
from MRISuperResLib.io import write_volume
from MRISuperResLib.plan import check_memory, make_plan
from MRISuperResLib.models.registry import CUBIC_CARD


def test_missing_input(tmp_path, cli):
    assert_refused(cli, tmp_path, [tmp_path / "nope.nii.gz"], "does not exist; check the path")


@pytest.mark.parametrize("name, content", [("broken.nii.gz", b"not a volume"), ("notes.txt", b"hello")])
def test_unreadable_or_unsupported_file(tmp_path, cli, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    assert_refused(cli, tmp_path, [path], "could not be read as a volume; give NIfTI", [path])


def test_2d_image(tmp_path, cli):
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(20, 20).astype(np.float32)), str(path))
    assert_refused(cli, tmp_path, [path], "is a 2D image", [path])


def test_single_slice_volume_counts_as_2d(tmp_path, cli):
    path = write_volume(Volume(np.random.rand(1, 20, 20).astype(np.float32), (1, 1, 4)), tmp_path / "one.nii.gz")
    assert_refused(cli, tmp_path, [path], "is a 2D image (20 × 20 × 1 voxels)", [path])


def test_4d_volume(tmp_path, cli):
    path = tmp_path / "series.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(3, 6, 10, 10).astype(np.float32), isVector=False), str(path))
    assert_refused(cli, tmp_path, [path], "has 4 dimensions (10 × 10 × 6 × 3); extract one 3D volume", [path])


def test_vector_volume(tmp_path, cli):
    path = tmp_path / "rgb.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(6, 10, 10, 3).astype(np.float32), isVector=True), str(path))
    assert_refused(cli, tmp_path, [path], "is a vector or colour image with 3 components", [path])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_voxels(tmp_path, cli, bad):
    volume = smooth_volume()
    volume.array[2, 3, 4] = bad
    path = write_volume(volume, tmp_path / "bad.nrrd")  # ITK's NIfTI reader turns NaN into 0 itself
    assert_refused(cli, tmp_path, [path], "has 1 NaN or infinite voxels; replace them", [path])


def test_constant_volume(tmp_path, cli):
    path = write_volume(Volume(np.full((6, 10, 10), 7, np.float32), (1, 1, 4)), tmp_path / "flat.nii.gz")
    assert_refused(cli, tmp_path, [path], "is constant (every voxel is 7.0)", [path])


def test_reference_that_does_not_overlap(tmp_path, cli, thick_file):
    far = smooth_volume(origin=(500.0, 500.0, 500.0), spacing=(0.9, 0.9, 0.9), shape_kji=(40, 40, 36))
    reference = write_volume(far, tmp_path / "far.nii.gz")
    assert_refused(cli, tmp_path, [thick_file, "--reference", reference], "does not overlap the input",
                   [thick_file, reference])


def test_reference_identical_to_input(tmp_path, cli, thick_file):
    copy = tmp_path / "copy.nii.gz"
    shutil.copy(thick_file, copy)
    assert_refused(cli, tmp_path, [thick_file, "--reference", copy], "The reference is the input itself")


def test_target_coarser_on_every_axis(tmp_path, cli, thick_file):
    assert_refused(cli, tmp_path, [thick_file, "--target-spacing", "1", "1", "5"],
                   "is not finer than the input's 0.9 × 0.9 × 4 mm on any axis")


def test_output_that_would_not_fit_in_memory(tmp_path, cli, thick_file):
    assert_refused(cli, tmp_path, [thick_file, "--target-spacing", "0.005"], "pass --force to try anyway")
    code, out, err = cli("plan", thick_file, "--target-spacing", "0.005", "--json")
    assert json.loads(out)["memory_bytes"] > 1e12  # the plan still prints the estimate


def test_force_skips_the_memory_check():
    plan = make_plan(smooth_volume().grid, CUBIC_CARD, target_spacing=0.005)
    with pytest.raises(MRISuperResError, match=r"needs about .* TB but only .* is available"):
        check_memory(plan)
    check_memory(plan, force=True)


def test_unknown_model(tmp_path, cli, thick_file):
    assert_refused(cli, tmp_path, [thick_file, "--model", "magic"], "Unknown model 'magic'; choose one of: cubic")


def test_missing_weights(tmp_path, cli, thick_file, untrained_models_dir):
    (untrained_models_dir / "tiny.pt").unlink()
    assert_refused(cli, tmp_path, [thick_file, "--models-dir", untrained_models_dir, "--model", "tiny"],
                   "The weights of model 'tiny' are missing")


def test_corrupted_weights(tmp_path, cli, thick_file, untrained_models_dir):
    with open(untrained_models_dir / "tiny.pt", "ab") as weights:
        weights.write(b"\0")
    assert_refused(cli, tmp_path, [thick_file, "--models-dir", untrained_models_dir, "--model", "tiny"],
                   "The weights of model 'tiny' are corrupted")


@pytest.mark.parametrize("output, expected", [("missing/out.nii.gz", "does not exist; create it"),
                                              ("out.png", "has an unsupported extension"),
                                              ("folder.nii", "is a folder; give a file name")])
def test_output_path_not_writable(tmp_path, cli, thick_file, output, expected):
    (tmp_path / "folder.nii").mkdir()
    assert_refused(cli, tmp_path, [thick_file], expected, [thick_file], output=tmp_path / output)


def test_cuda_requested_without_gpu(tmp_path, cli, thick_file):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")  # the GPU path is exercised by the other tests there
    assert_refused(cli, tmp_path, [thick_file, "--device", "cuda"], "no GPU is available to PyTorch")


def test_python_api_refuses_bad_volumes_with_the_same_sentences():
    from MRISuperResLib import superresolve

    volume = smooth_volume()
    volume.array[0, 0, 0] = np.nan
    with pytest.raises(MRISuperResError, match="The input has 1 NaN or infinite voxels"):
        superresolve(volume, model="cubic")
    with pytest.raises(MRISuperResError, match="The reference is constant .*; it has no anatomy to guide the result"):
        superresolve(smooth_volume(), Volume(np.zeros((8, 8, 8), np.float32), (1, 1, 1)), model="cubic")


def test_output_that_would_overwrite_the_input(tmp_path, cli, thick_file):
    assert_refused(cli, tmp_path, [thick_file, "--model", "cubic"], "The output would overwrite the input",
                   [thick_file], output=thick_file)


def test_an_output_never_replaces_the_data_file_an_input_is_read_from(tmp_path, cli):
    # A .mhd input keeps its voxels in in.raw; an .nhdr output named like it would write in.raw too.
    header = write_volume(smooth_volume(), tmp_path / "in.mhd", compress=False)
    data = tmp_path / "in.raw"
    assert data.exists()
    for command, args in (("run", [header, "--model", "cubic"]), ("degrade", [header, "--factor", "2"])):
        for overwrite in ([], ["--overwrite"]):
            assert_refused(cli, tmp_path, args + overwrite, "The output would overwrite the input "
                           f"'{header}' ('in.raw' holds its voxels); choose another path.", [header, data],
                           output=tmp_path / "in.nhdr", command=command)


def test_an_existing_data_file_of_the_output_is_kept_unless_overwrite_is_given(tmp_path, cli, thick_file):
    earlier = tmp_path / "result.raw"
    earlier.write_bytes(b"an earlier result's voxels")
    assert_refused(cli, tmp_path, [thick_file, "--model", "cubic"], f"The output's data file '{earlier}' already "
                   "exists; choose another name or pass --overwrite.", [thick_file, earlier],
                   output=tmp_path / "result.nhdr")
    code, _, err = cli("run", thick_file, "-o", tmp_path / "result.nhdr", "--quiet", "--model", "cubic", "--overwrite")
    assert code == 0 and earlier.read_bytes() != b"an earlier result's voxels", err


def test_an_output_folder_where_nothing_can_be_created_is_refused_before_the_run(tmp_path, cli, thick_file,
                                                                                 monkeypatch):
    import tempfile

    # Root passes os.access everywhere; what the write will do first is the test (as /proc or /sys refuse).
    def refused_folder(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(tempfile, "mkdtemp", refused_folder)
    assert_refused(cli, tmp_path, [thick_file, "--model", "cubic"], "cannot be written (Permission denied); choose "
                   "a folder you can write to.", [thick_file])


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd"])
def test_a_write_that_comes_out_short_is_refused_and_leaves_nothing(tmp_path, cli, thick_file, monkeypatch, suffix):
    import os

    from MRISuperResLib import io

    real_write = io.sitk.WriteImage

    def short_write(image, path, *args):  # a full disk: ITK's NIfTI writer prints an error and returns
        real_write(image, path, *args)
        with open(path, "r+b") as file:
            file.truncate(os.path.getsize(path) // 2)
        if not path.endswith((".nii", ".nii.gz")):
            raise RuntimeError("Exception thrown in SimpleITK ImageFileWriter_Execute: No space left on device")
    monkeypatch.setattr(io.sitk, "WriteImage", short_write)
    output = tmp_path / ("result" + suffix)
    message = assert_refused(cli, tmp_path, [thick_file, "--model", "cubic"], f"The output '{output}' could not be "
                             "written (", [thick_file], output=output)
    assert message.endswith("); free some space or choose another folder, then run again.")


def test_output_folder_without_write_permission(tmp_path, cli, thick_file, monkeypatch):
    import os

    # Tests may run as root, for whom every folder is writable: make the permission check answer "no".
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if mode == os.W_OK else real_access(path, mode))
    assert_refused(cli, tmp_path, [thick_file], "is not writable; choose a folder you can write to", [thick_file])


def test_an_existing_output_is_kept_unless_overwrite_is_given(tmp_path, cli, thick_file):
    existing = tmp_path / "result.nii.gz"
    existing.write_bytes(b"an earlier result")
    expected = "already exists; choose another name or pass --overwrite"
    assert_refused(cli, tmp_path, [thick_file, "--model", "cubic"], expected, [thick_file, existing], output=existing)
    assert_refused(cli, tmp_path, [thick_file, "--factor", "2"], expected, [thick_file, existing], output=existing,
                   command="degrade")
    input_before = digest(thick_file)
    code, _, _ = cli("run", thick_file, "-o", existing, "--quiet", "--model", "cubic", "--overwrite")
    assert code == 0 and existing.read_bytes() != b"an earlier result" and digest(thick_file) == input_before


def test_an_existing_confidence_map_is_kept_unless_overwrite_is_given(tmp_path, cli, thick_file, texture_models_dir):
    existing = tmp_path / "confidence.nii.gz"
    existing.write_bytes(b"an earlier map")
    before = sorted(tmp_path.rglob("*"))
    input_bytes = thick_file.read_bytes()
    run = ("run", thick_file, "-o", tmp_path / "sr.nii.gz", "--confidence", existing, "--quiet", "--models-dir",
           texture_models_dir, "--model", "tiny-tt", "--no-self-check")
    code, _, err = cli(*run)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "confidence output" in err and "already exists; choose another name or pass --overwrite" in err
    assert sorted(tmp_path.rglob("*")) == before  # no output either: nothing ran
    assert existing.read_bytes() == b"an earlier map" and thick_file.read_bytes() == input_bytes
    code, _, err = cli(*run, "--overwrite")
    assert code == 0 and existing.read_bytes() != b"an earlier map" and (tmp_path / "sr.nii.gz").exists(), err


def test_an_output_that_is_a_folder_is_named_a_folder(tmp_path, cli, thick_file):
    folder = tmp_path / "results"
    folder.mkdir()
    assert_refused(cli, tmp_path, [thick_file, "--model", "cubic"], "is a folder; give a file name", [thick_file],
                   output=folder)


def test_constant_reference(tmp_path, cli, thick_file):
    flat = Volume(np.full((40, 40, 36), 3, np.float32), (0.9, 0.9, 0.9), origin=(12.5, -30.0, 7.25))
    reference = write_volume(flat, tmp_path / "flat_t1.nii.gz")
    message = assert_refused(cli, tmp_path, [thick_file, "--reference", reference],
                             "it has no anatomy to guide the result", [thick_file, reference])
    assert "nothing to super-resolve" not in message


@pytest.mark.parametrize("args, expected", [
    (("run", "in.nii.gz", "out.nii.gz", "--bogus"), "mrisuperres: error: unrecognized arguments: --bogus; "
                                                    "see `mrisuperres --help`."),
    (("run",), "mrisuperres run: error: the following arguments are required: input; see `mrisuperres run --help`."),
    (("run", "in.nii.gz", "out.nii.gz", "--planes", "xy"), "mrisuperres run: error: argument --planes: invalid "
                                                           "choice: 'xy'"),
    (("frobnicate",), "mrisuperres: error: argument command: invalid choice: 'frobnicate'"),
])
def test_a_usage_mistake_is_one_sentence_without_the_usage_block(tmp_path, capsys, args, expected):
    from MRISuperResLib.cli import main

    with pytest.raises(SystemExit) as stopped:
        main([*args])
    message = capsys.readouterr().err.strip()
    assert stopped.value.code == 2
    assert message.startswith(expected) and message.endswith("--help`.") and "\n" not in message, message
    assert list(tmp_path.iterdir()) == []


def test_a_negative_adaptation_time(tmp_path, cli, thick_file):
    assert_refused(cli, tmp_path, [thick_file, "--adapt", "-5"], "The adaptation time must be 0 seconds or more, "
                   "not -5; give --adapt SECONDS or --no-adapt.", [thick_file])


def test_a_plane_without_an_upsampled_axis_is_refused_whatever_the_model(tmp_path, cli, thick_file):
    # Interpolation runs no plane, but a wrong request is a mistake all the same (a manifest's planes column).
    assert_refused(cli, tmp_path, [thick_file, "--model", "cubic", "--planes", "ij"],
                   "Plane ij holds no upsampled axis", [thick_file])
