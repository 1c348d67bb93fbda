"""`mrisuperres degrade` and `mrisuperres evaluate`: simulation geometry and the scoring rules."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import OBLIQUE, smooth_volume
from MRISuperResLib import Volume
from MRISuperResLib.io import read_volume, write_volume
from MRISuperResLib.metrics import psnr, ssim


def test_psnr_and_ssim_follow_their_stated_rules():
    rng = np.random.default_rng(0)
    truth = rng.uniform(10, 110, (12, 12, 12))
    assert psnr(truth, truth) == float("inf") and ssim(truth, truth) == pytest.approx(1.0)
    noisy = truth + 1.0
    data_range = truth.max() - truth.min()
    assert psnr(noisy, truth) == pytest.approx(20 * np.log10(data_range), rel=1e-9)
    mild, strong = (ssim(truth + rng.normal(0, sigma, truth.shape), truth) for sigma in (3, 30))
    assert 0 < strong < mild < 1


def test_degrade_then_evaluate_from_the_command_line(tmp_path, cli):
    truth = smooth_volume(shape_kji=(24, 20, 18), spacing=(1.0, 1.0, 1.0), direction=OBLIQUE)
    truth_path = write_volume(truth, tmp_path / "truth.nii.gz")
    code, out, _ = cli("degrade", truth_path, "-o", tmp_path / "thick.nii.gz", "--factor", "4", "--axes", "2")
    assert code == 0 and "left out" not in out  # 24 slices: six whole slabs
    thick = read_volume(tmp_path / "thick.nii.gz")
    assert thick.grid.size == (18, 20, 6) and thick.spacing == pytest.approx((1.0, 1.0, 4.0))
    code, _, _ = cli("run", tmp_path / "thick.nii.gz", "-o", tmp_path / "sr.nii.gz", "--model", "cubic",
                     "--target-spacing", "1", "--quiet")
    assert code == 0
    code, out, _ = cli("evaluate", tmp_path / "sr.nii.gz", truth_path)
    scores = json.loads(out)
    assert 20 < scores["psnr"] < 80 and 0 < scores["ssim"] <= 1
    assert "99th percentile" in scores["mask"]


def test_kspace_degradation_from_the_command_line(tmp_path, cli):
    path = write_volume(smooth_volume(shape_kji=(6, 20, 18)), tmp_path / "in.nii.gz")
    code, _, _ = cli("degrade", path, "-o", tmp_path / "low.nii.gz", "--kspace", "--factor", "2", "--axes", "0", "1")
    assert code == 0
    assert read_volume(tmp_path / "low.nii.gz").grid.size == (9, 10, 6)
    code, _, _ = cli("degrade", path, "-o", tmp_path / "bicubic.nii.gz", "--bicubic", "--factor", "2", "--axes", "0", "1")
    assert code == 0
    assert read_volume(tmp_path / "bicubic.nii.gz").grid.same_as(read_volume(tmp_path / "low.nii.gz").grid)
    code, _, err = cli("degrade", path, "-o", tmp_path / "both.nii.gz", "--kspace", "--bicubic", "--axes", "0", "1")
    assert code == 2 and "give one of them" in err and not (tmp_path / "both.nii.gz").exists()


def test_the_readme_round_trip_works_when_the_slices_are_not_a_multiple_of_the_factor(tmp_path, cli):
    truth = smooth_volume(shape_kji=(26, 20, 18), spacing=(1.0, 1.0, 1.0), direction=OBLIQUE)
    truth_path = write_volume(truth, tmp_path / "t2_1mm.nii.gz")
    mask_path = write_volume(truth.with_array((truth.array > np.percentile(truth.array, 30)).astype(np.uint8)),
                             tmp_path / "mask.nii.gz")
    code, out, _ = cli("degrade", truth_path, "-o", tmp_path / "t2_4mm.nii.gz", "--factor", "4", "--axes", "2",
                       "--profile", "box")
    assert code == 0
    assert read_volume(tmp_path / "t2_4mm.nii.gz").grid.size == (18, 20, 6)  # 26 slices: the last 2 dropped
    assert ("the last 2 of 26 slices along axis 2 do not fill a 4-slice slab and are left out, so the output "
            "covers 2 mm less") in out
    assert cli("run", tmp_path / "t2_4mm.nii.gz", "-o", tmp_path / "t2_sr.nii.gz", "--model", "cubic", "--quiet")[0] == 0
    code, out, err = cli("evaluate", tmp_path / "t2_sr.nii.gz", truth_path, "--mask", mask_path)
    assert code == 0, err
    assert "the result covers 18×20×24 of the truth's 18×20×26 voxels" in err
    scores = json.loads(out)
    assert scores["compared_voxels"] == [18, 20, 24] and 20 < scores["psnr"] < 80
    # The same scores as scoring the truth's first 24 slices by hand.
    sr = read_volume(tmp_path / "t2_sr.nii.gz").array
    assert scores["psnr"] == pytest.approx(psnr(sr, truth.array[:24], read_volume(mask_path).array[:24]), abs=1e-3)
    # The two files the other way round: the "result" reaches beyond the "truth", which no result does.
    code, out, err = cli("evaluate", truth_path, tmp_path / "t2_sr.nii.gz")
    assert code == 0 and "reaches beyond the truth; scored on the 18×20×24 they share (the order is RESULT TRUTH" in err


def test_evaluate_refuses_different_lattices_with_the_spacing_to_use(tmp_path, cli):
    a = write_volume(smooth_volume(shape_kji=(6, 20, 18), spacing=(0.9, 0.9, 2.0)), tmp_path / "a.nii.gz")
    b = write_volume(smooth_volume(shape_kji=(6, 20, 16), spacing=(1.0, 1.0, 2.0)), tmp_path / "b.nii.gz")
    code, _, err = cli("evaluate", a, b)
    assert code == 2 and "have different voxel sizes; super-resolve with --target-spacing 1 1 2" in err
    # The same size and origin on another spacing is another lattice too, not a voxel-for-voxel match.
    c = write_volume(smooth_volume(shape_kji=(6, 20, 18), spacing=(1.0, 1.0, 2.0)), tmp_path / "c.nii.gz")
    code, out, err = cli("evaluate", a, c)
    assert code == 2 and out == "" and "have different voxel sizes; super-resolve with --target-spacing 1 1 2" in err
    # The same lattice shifted by part of a voxel: another scan, whatever the spacing.
    shifted = smooth_volume(shape_kji=(6, 20, 18), spacing=(0.9, 0.9, 2.0))
    d = write_volume(Volume(shifted.array, shifted.spacing, tuple(np.add(shifted.origin, (0.3, 0, 0))),
                            shifted.direction), tmp_path / "d.nii.gz")
    code, _, err = cli("evaluate", a, d)
    assert code == 2 and "are offset by -0.3 +0 +0 mm, not a whole number of voxels; check that the result" in err
