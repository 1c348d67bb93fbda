"""`mrisuperres degrade` and `mrisuperres evaluate`: simulation geometry and the scoring rules."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import OBLIQUE, smooth_volume
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
    assert code == 0
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


def test_evaluate_refuses_different_grids(tmp_path, cli):
    a = write_volume(smooth_volume(shape_kji=(6, 20, 18)), tmp_path / "a.nii.gz")
    b = write_volume(smooth_volume(shape_kji=(6, 20, 16)), tmp_path / "b.nii.gz")
    code, _, err = cli("evaluate", a, b)
    assert code == 2 and "are on different grids" in err
