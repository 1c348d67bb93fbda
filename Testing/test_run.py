"""`mrisuperres run` and `superresolve`: exact planned geometry, units, determinism, progress, cancel."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from conftest import FLIPPED, OBLIQUE, rotation, smooth_volume
from MRISuperResLib import CancelledError, Volume, plan_run, read_volume, superresolve, write_volume
from MRISuperResLib.models.registry import ModelRegistry

ORIENTATIONS = {"identity": np.eye(3), "oblique": OBLIQUE, "flipped": FLIPPED,
                "sagittal-like": rotation("y", 90) @ rotation("x", -12)}


@pytest.mark.parametrize("orientation", ORIENTATIONS)
@pytest.mark.parametrize("target", [["--scale", "1", "1", "4"], ["--scale", "2.5"], ["--target-spacing", "0.7", "0.9", "1.3"]],
                         ids=["4x-k", "2.5x-all", "spacing"])
@pytest.mark.parametrize("model", ["cubic", "tiny"])
def test_run_returns_exactly_the_planned_grid(tmp_path, cli, untrained_models_dir, orientation, target, model):
    volume = smooth_volume(shape_kji=(6, 20, 18), direction=ORIENTATIONS[orientation])
    source = write_volume(volume, tmp_path / "in.nrrd")
    reference = write_volume(smooth_volume(shape_kji=(24, 20, 18), spacing=(0.9, 0.9, 1.0),
                                           direction=ORIENTATIONS[orientation], seed=3), tmp_path / "ref.nii.gz")
    common = ["--model", model, "--models-dir", untrained_models_dir, *target]
    code, out, _ = cli("plan", source, "--json", *common)
    common.append("--no-self-check")  # an untrained network would fall back to cubic: keep it on the network path
    assert code == 0
    planned = json.loads(out)["output"]
    code, _, err = cli("run", source, "-o", tmp_path / "out.nii.gz", "--reference", reference, "--quiet", *common)
    assert code == 0, err
    result = read_volume(tmp_path / "out.nii.gz")
    assert list(result.grid.size) == planned["size"]
    np.testing.assert_allclose(result.spacing, planned["spacing"], atol=1e-6)
    np.testing.assert_allclose(result.origin, planned["origin"], atol=1e-6)
    np.testing.assert_allclose(result.direction.ravel(), planned["direction"], atol=1e-6)


def test_output_stays_in_input_units_and_input_is_untouched(tmp_path):
    volume = smooth_volume()
    volume.array = volume.array * 37.0 + 1500.0  # units far from [0, 1]
    before = volume.array.copy()
    result = superresolve(volume, model=ModelRegistry().default_name)
    np.testing.assert_array_equal(volume.array, before)
    assert abs(float(result.array.mean()) - float(before.mean())) < 0.05 * float(before.std()) + 1.0
    assert result.array.dtype == np.float32


def test_same_input_gives_the_same_output(untrained_models_dir):
    volume, reference = smooth_volume(), smooth_volume(spacing=(0.9, 0.9, 1.0), shape_kji=(48, 40, 36), seed=2)
    first = superresolve(volume, reference, model="tiny", models_dir=str(untrained_models_dir), self_check=False)
    second = superresolve(volume, reference, model="tiny", models_dir=str(untrained_models_dir), self_check=False)
    np.testing.assert_array_equal(first.array, second.array)


def test_tiling_matches_whole_slices(untrained_models_dir):
    volume = smooth_volume(shape_kji=(5, 90, 100), spacing=(0.9, 0.9, 2.7))
    whole = superresolve(volume, model="tiny", models_dir=str(untrained_models_dir), tile=512, self_check=False)
    tiled = superresolve(volume, model="tiny", models_dir=str(untrained_models_dir), tile=64, batch_size=3,
                         self_check=False)
    np.testing.assert_allclose(tiled.array, whole.array, atol=1e-4)


def test_tiles_per_network_call_do_not_change_the_output(untrained_models_dir, monkeypatch):
    # A CPU in float32 takes a slice group's tiles a few at a time (cache); the result is the group's at once.
    from MRISuperResLib import plan as planning
    from MRISuperResLib.devices import PRECISION_VARIABLE

    monkeypatch.setenv(PRECISION_VARIABLE, "float32")
    volume = smooth_volume(shape_kji=(6, 90, 100), spacing=(0.9, 0.9, 2.7))
    outputs = []
    for tiles_per_call in (8, 1):
        monkeypatch.setattr(planning, "CPU_TILES_PER_CALL", tiles_per_call)
        outputs.append(superresolve(volume, model="tiny", models_dir=str(untrained_models_dir), tile=64,
                                    batch_size=8, self_check=False).array)
    np.testing.assert_allclose(outputs[1], outputs[0], atol=1e-4)


def test_reference_changes_the_result_of_a_reference_model(untrained_models_dir):
    volume, reference = smooth_volume(), smooth_volume(spacing=(0.9, 0.9, 1.0), shape_kji=(48, 40, 36), seed=2)
    with_reference = superresolve(volume, reference, model="tiny", models_dir=str(untrained_models_dir),
                                  self_check=False)
    without = superresolve(volume, model="tiny", models_dir=str(untrained_models_dir), self_check=False)
    assert not np.allclose(with_reference.array, without.array)


def test_progress_json_lines(tmp_path, thick_file, cli, untrained_models_dir):
    code, out, _ = cli("run", thick_file, "-o", tmp_path / "out.nii.gz", "--progress-json",
                       "--model", "tiny", "--models-dir", untrained_models_dir, "--no-self-check")
    assert code == 0
    events = [json.loads(line) for line in out.splitlines()]
    assert {"interpolate", "model", "done"} <= {e["stage"] for e in events}
    model_events = [e for e in events if e["stage"] == "model"]
    assert model_events[-1]["done"] == model_events[-1]["total"]
    assert all(set(e) >= {"stage", "done", "total", "eta"} for e in events[:-1])
    assert events[-1]["output"].endswith("out.nii.gz")


def test_cancel_stops_the_run(untrained_models_dir):
    cancel = threading.Event()
    seen = []

    def on_progress(event):
        seen.append(event.stage)
        if event.stage == "model" and event.done >= 1:
            cancel.set()

    with pytest.raises(CancelledError):
        superresolve(smooth_volume(), model="tiny", models_dir=str(untrained_models_dir), batch_size=1,
                     progress=on_progress, cancel=cancel, self_check=False)
    assert "model" in seen


def test_python_api_accepts_volumes_made_in_memory():
    array = np.random.default_rng(0).random((8, 32, 32)).astype("float32")
    result = superresolve(Volume(array, spacing=(1.0, 1.0, 4.0)), model="cubic")
    assert result.array.shape == (32, 32, 32)
    assert plan_run(Volume(array, spacing=(1.0, 1.0, 4.0)), model="cubic").target.spacing == (1.0, 1.0, 1.0)


def test_the_output_may_follow_the_input_or_come_with_o(cli, thick_file, tmp_path, capsys):
    positional, flagged = tmp_path / "positional.nii.gz", tmp_path / "flagged.nii.gz"
    assert cli("run", thick_file, positional, "--model", "cubic", "--quiet")[0] == 0
    assert cli("run", thick_file, "-o", flagged, "--model", "cubic", "--quiet")[0] == 0
    np.testing.assert_array_equal(read_volume(positional).array, read_volume(flagged).array)
    for args, expected in ((("--model", "cubic"), "no output file given; add it after the input"),
                           ((tmp_path / "a.nii.gz", "-o", tmp_path / "b.nii.gz"), "two outputs given")):
        with pytest.raises(SystemExit) as exit_info:
            cli("run", thick_file, *args)
        assert exit_info.value.code == 2 and expected in capsys.readouterr().err
    assert not (tmp_path / "a.nii.gz").exists() and not (tmp_path / "b.nii.gz").exists()
