"""The demo on the built-in phantom: outputs, picture, and the default model beating cubic."""

from __future__ import annotations

import json

from MRISuperResLib.models.registry import ModelRegistry


def test_demo_writes_results_and_the_default_model_beats_cubic(tmp_path, cli):
    code, out, err = cli("demo", "--output-dir", tmp_path / "demo", "--quiet")
    assert code == 0, err
    summary = json.loads(out)
    default = ModelRegistry().default_name
    names = {p.name for p in (tmp_path / "demo").iterdir()}
    assert {"input_T2_thick.nii.gz", "reference_T1.nii.gz", "truth_T2.nii.gz", f"result_T2_{default}.nii.gz",
            "before_after.png"} <= names
    assert (tmp_path / "demo" / "before_after.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scores = summary["scores"]
    assert scores[default]["psnr"] > scores["cubic"]["psnr"] + 1.0
    assert scores[default]["ssim"] > scores["cubic"]["ssim"]
