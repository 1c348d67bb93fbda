"""Plans: target grids, upsampled axes, planes, estimates, and refusals."""

from __future__ import annotations

import json

import pytest

from conftest import OBLIQUE, smooth_volume
from MRISuperResLib import MRISuperResError, plan_run
from MRISuperResLib.io import read_volume, write_volume
from MRISuperResLib.plan import format_bytes, format_seconds


def test_default_is_isotropic_at_the_finest_spacing():
    plan = plan_run(smooth_volume(shape_kji=(64, 40, 36), spacing=(0.9, 0.9, 4.0)), model="cubic")
    assert plan.target.spacing == (0.9, 0.9, 0.9)
    assert plan.target.size == (36, 40, round(64 * 4.0 / 0.9))  # 284 slices, as in the example
    assert plan.upsampled == (2,)


def test_planes_are_those_holding_an_upsampled_axis(untrained_models_dir):
    volume = smooth_volume()
    plan = plan_run(volume, model="tiny", models_dir=str(untrained_models_dir))
    assert plan.planes == ("ik", "jk")
    plan = plan_run(volume, model="tiny", scale=(2, 1, 4), models_dir=str(untrained_models_dir))
    assert plan.upsampled == (0, 2) and plan.planes == ("ij", "ik", "jk")
    plan = plan_run(volume, model="tiny", planes=["jk"], models_dir=str(untrained_models_dir))
    assert plan.planes == ("jk",)


def test_a_plane_whose_sharp_axis_is_coarse_is_left_out_unless_asked_for(untrained_models_dir):
    spine = smooth_volume(spacing=(0.9, 3.6, 5.0))  # a 0.9 x 0.9 x 5 mm scan made 4x thick along j
    run = dict(model="edsr-large", target_spacing=(0.9, 0.9, 5.0))  # a 2.5D network: the rule is measured on those
    plan = plan_run(spine, **run)
    assert plan.planes == ("ij",) and plan.upsampled == (1,)
    assert plan.notes == ["plane jk left out: its sharp axis k (5 mm) is 5.6× coarser than the finest (0.9 mm); "
                          "--planes uses it anyway"]
    assert plan_run(spine, planes=["ij", "jk"], **run).planes == ("ij", "jk")  # asked for: kept
    # 2x coarser is not left out (both planes scored better there), nor is anything when one axis is sharp.
    assert plan_run(smooth_volume(spacing=(0.9, 3.6, 1.8)), **{**run, "target_spacing": (0.9, 0.9, 1.8)}).planes == (
        "ij", "jk")
    assert plan_run(spine, model="edsr-large").planes == ("ij", "ik", "jk")
    assert plan_run(spine, **{**run, "model": "cubic"}).planes == ()
    # A thin 2D network (no 2.5D context) averages both planes: it scored better so on the spine val/ case.
    assert plan_run(spine, **{**run, "model": "tiny", "models_dir": str(untrained_models_dir)}).planes == ("ij", "jk")


def test_a_thick_slice_model_on_an_input_coarse_in_plane_says_so(untrained_models_dir):
    volume = smooth_volume()
    thick = plan_run(volume, model="tiny", models_dir=str(untrained_models_dir))
    assert not any("trained for thick slices" in note for note in thick.warnings)
    inplane = plan_run(volume, model="tiny", scale=(2, 2, 1), models_dir=str(untrained_models_dir))
    assert any("coarse along 2 axes but tiny was trained for thick slices" in note for note in inplane.warnings)
    manifest = untrained_models_dir / "models.json"
    manifest.write_text(manifest.read_text().replace('"factors"', '"inplane_factors": [2, 4], "factors"'))
    mixed = plan_run(volume, model="tiny", scale=(2, 2, 1), models_dir=str(untrained_models_dir))
    assert not any("trained for thick slices" in note for note in mixed.warnings)


def test_a_factor_outside_the_models_training_is_one_warning_line_even_when_quiet(cli, tmp_path,
                                                                                  untrained_models_dir):
    path = tmp_path / "thick.nii.gz"
    write_volume(smooth_volume(spacing=(0.9, 0.9, 9.0)), path)  # 10x: tiny was trained for 2-6x
    code, _, err = cli("run", path, "-o", tmp_path / "sr.nii.gz", "--model", "tiny", "--models-dir",
                       untrained_models_dir, "--quiet", "--no-self-check")
    assert code == 0 and (tmp_path / "sr.nii.gz").exists()
    assert err.strip() == ("plan: scale 10 is outside the factors tiny was trained for (2, 3, 4, 5, 6): expect less "
                           "gain, and check the result; adapting the model to the scan (on by default, off in this "
                           "run) makes up much of the loss")
    adapted = plan_run(read_volume(path), model="tiny", models_dir=str(untrained_models_dir)).warnings
    assert adapted == ["scale 10 is outside the factors tiny was trained for (2, 3, 4, 5, 6): expect less gain from "
                       "the network itself; this run adapts it to the scan, which makes up much of that"]


def test_an_inplane_run_is_judged_against_the_inplane_factors(untrained_models_dir):
    manifest = untrained_models_dir / "models.json"
    manifest.write_text(manifest.read_text().replace('"factors"', '"inplane_factors": [2, 4], "factors"'))
    volume = smooth_volume(spacing=(0.9, 0.9, 0.9))

    def warnings(scale):
        return plan_run(volume, model="tiny", scale=scale, models_dir=str(untrained_models_dir)).warnings

    # 3x in plane sits between the trained 2x and 4x; 6x is beyond them although it is a trained thick factor.
    assert warnings((3, 3, 1)) == []
    assert warnings((6, 6, 1)) == ["scale 6 is outside the in-plane factors tiny was trained for (2, 4): expect "
                                   "less gain, and check the result"]
    assert warnings((1, 1, 6)) == []


def test_an_input_far_finer_or_coarser_than_the_training_volumes_is_one_warning_line(cli, tmp_path,
                                                                                      untrained_models_dir):
    manifest = untrained_models_dir / "models.json"
    manifest.write_text(manifest.read_text().replace('"factors"', '"spacings": [0.5, 1.0], "factors"'))
    for spacing in ((0.3, 0.3, 1.2), (0.9, 0.9, 3.6), (1.9, 1.9, 7.6)):  # within 2x of 0.5-1 mm: no line
        assert plan_run(smooth_volume(spacing=spacing), model="tiny", models_dir=str(untrained_models_dir)).warnings == []
    path = tmp_path / "fine.nii.gz"
    write_volume(smooth_volume(spacing=(0.2, 0.2, 0.8)), path)
    code, _, err = cli("run", path, "-o", tmp_path / "sr.nii.gz", "--model", "tiny", "--models-dir",
                       untrained_models_dir, "--quiet", "--no-self-check")
    assert code == 0 and (tmp_path / "sr.nii.gz").exists()
    assert err.strip() == ("plan: the input's finest spacing, 0.2 mm, is far from the 0.5-1 mm of the volumes tiny "
                           "was trained on (it sees the anatomy at another scale in voxels): expect less gain, and "
                           "check the result")
    coarse = plan_run(smooth_volume(spacing=(2.5, 2.5, 10.0)), model="tiny", models_dir=str(untrained_models_dir))
    assert [w.split(",")[1] for w in coarse.warnings] == [" 2.5 mm"]
    assert plan_run(smooth_volume(spacing=(0.2, 0.2, 0.8)), model="cubic").warnings == []


def test_every_shipped_model_records_the_spacings_it_was_trained_on():
    from MRISuperResLib.models.registry import ModelRegistry

    registry = ModelRegistry()
    assert all(registry.get(name).spacings == [0.5, 1.0] for name in registry.names() if name != "cubic")


def test_non_integer_scale_and_explicit_spacing():
    volume = smooth_volume(spacing=(0.9, 0.9, 4.0))
    plan = plan_run(volume, model="cubic", scale=[2.5])
    assert plan.target.spacing == pytest.approx((0.36, 0.36, 1.6))
    assert plan.target.size == (90, 100, 30)
    plan = plan_run(volume, model="cubic", target_spacing=[0.9, 0.9, 1.3])
    assert plan.target.size == (36, 40, round(12 * 4 / 1.3))
    assert plan.target.direction.tolist() == OBLIQUE.tolist()


def test_plan_refuses_a_target_that_upsamples_nothing():
    with pytest.raises(MRISuperResError, match="not finer than the input's"):
        plan_run(smooth_volume(spacing=(0.9, 0.9, 4.0)), model="cubic", target_spacing=[1.0, 1.0, 5.0])


def test_plan_refuses_a_plane_without_upsampled_axis(untrained_models_dir):
    with pytest.raises(MRISuperResError, match="Plane ij holds no upsampled axis; choose among ik, jk"):
        plan_run(smooth_volume(), model="tiny", planes=["ij"], models_dir=str(untrained_models_dir))


def test_plan_command_prints_summary_and_json(thick_file, cli):
    code, out, _ = cli("plan", thick_file)
    assert code == 0
    assert "36 × 40 × 12 voxels at 0.9 × 0.9 × 4 mm" in out and "memory  about" in out
    code, out, _ = cli("plan", thick_file, "--model", "cubic", "--json", "--target-spacing", "1.0")
    plan = json.loads(out)
    assert plan["output"]["size"] == [32, 36, 48] and plan["upsampled_axes"] == ["k"]


def test_memory_estimate_grows_with_the_output():
    volume = smooth_volume()
    small = plan_run(volume, model="cubic", scale=[1, 1, 2]).memory_bytes
    large = plan_run(volume, model="cubic", scale=[1, 1, 8]).memory_bytes
    assert large > 3 * small
    assert format_bytes(1.5 * 1024 ** 3) == "1.5 GB"


def test_the_time_estimate_counts_the_self_check_and_adaptation(cli, tmp_path):
    from MRISuperResLib.io import write_volume
    from MRISuperResLib.plan import DEFAULT_ADAPT_SECONDS, SELF_CHECK_SECONDS

    # Large enough in-plane that a whole run costs more than scoring the held-out patches.
    volume = smooth_volume(shape_kji=(24, 256, 256), spacing=(1.0, 1.0, 4.0))
    adapted = plan_run(volume, model="edsr-mixed", threads=2)
    unadapted = plan_run(volume, model="edsr-mixed", threads=2, adapt=0.0)
    unchecked = plan_run(volume, model="edsr-mixed", threads=2, self_check=False)
    assert unchecked.check_seconds == 0
    # the self-check, and the model on a central block to estimate the slice profile: part of a whole run
    assert SELF_CHECK_SECONDS < unadapted.check_seconds < SELF_CHECK_SECONDS + unchecked.seconds
    # Adapting adds its steps (at most the budget) and one more scoring of the held-out patches, which costs
    # less than the whole check without adaptation (on a CPU without bfloat16 that scoring is 3 s or more).
    extra = adapted.check_seconds - unadapted.check_seconds
    assert DEFAULT_ADAPT_SECONDS / 2 < extra <= DEFAULT_ADAPT_SECONDS + unadapted.check_seconds - SELF_CHECK_SECONDS
    assert adapted.seconds - unchecked.seconds == pytest.approx(adapted.check_seconds)
    assert "self-check and adaptation" in adapted.summary()
    assert plan_run(volume, model="cubic").check_seconds == 0
    write_volume(volume, tmp_path / "thick.nii.gz")
    for options, expected in (((), adapted.check_seconds), (("--no-adapt",), unadapted.check_seconds),
                              (("--no-self-check",), 0.0)):
        code, out, _ = cli("plan", tmp_path / "thick.nii.gz", "--json", "--threads", "2", "--model", "edsr-mixed",
                           *options)
        assert code == 0 and json.loads(out)["check_seconds"] == pytest.approx(expected, abs=0.1)


def test_the_time_estimate_of_an_inplane_input_counts_no_adaptation_and_says_how_long_one_takes():
    from MRISuperResLib.plan import adaptation_step_seconds

    # Coarse along i and j: the run checks the model and fine-tunes only if it loses to cubic there, so the
    # estimate is that of a run without adaptation (it counted 50 s more); the steps stay planned for that case,
    # and the plan says how long the run takes if it comes (a user saw 17 s planned and 73 s spent).
    volume = smooth_volume(shape_kji=(96, 64, 64), spacing=(2.0, 2.0, 1.0))
    adapted = plan_run(volume, model="edsr-large", threads=2)
    unadapted = plan_run(volume, model="edsr-large", threads=2, adapt=0.0)
    assert adapted.adapt_steps > 0 and unadapted.adapt_steps == 0
    assert adapted.check_seconds == pytest.approx(unadapted.check_seconds)
    assert any("adapted to it only if it does worse than interpolation" in note for note in adapted.notes)
    assert not any("adapted to it only if" in note for note in unadapted.notes)
    fine_tuning = adapted.adapt_steps * adaptation_step_seconds("edsr", adapted.model.macs_per_pixel, "cpu", 2, False)
    # the steps, and one more scoring of the held-out patches (a fraction of the check)
    assert fine_tuning < adapted.seconds_if_adapted - adapted.seconds < fine_tuning + adapted.check_seconds
    assert unadapted.seconds_if_adapted == 0
    assert f"up to {format_seconds(adapted.seconds_if_adapted)} if the model is adapted" in adapted.summary()
    assert adapted.one_line().endswith(f"(up to {format_seconds(adapted.seconds_if_adapted)}) on CPU")
    thick = plan_run(smooth_volume(shape_kji=(24, 64, 64), spacing=(1.0, 1.0, 4.0)), model="edsr-large", threads=2)
    assert thick.adapt_steps > 0 and thick.seconds_if_adapted == 0  # counted in `seconds`


def test_the_time_estimate_counts_the_registration_of_a_paired_reference():
    from MRISuperResLib.plan import REGISTRATION_SECONDS_PER_INPUT_VOXEL_THREAD

    volume = smooth_volume(shape_kji=(24, 64, 64), spacing=(1.0, 1.0, 4.0))
    reference = smooth_volume(shape_kji=(96, 64, 64), spacing=(1.0, 1.0, 1.0))
    registered = plan_run(volume, reference, model="edsr-mixed", threads=2, self_check=False)
    unregistered = plan_run(volume, reference, model="edsr-mixed", threads=2, self_check=False,
                            register_reference=False)
    expected = volume.grid.voxel_count * REGISTRATION_SECONDS_PER_INPUT_VOXEL_THREAD / 2
    assert registered.seconds - unregistered.seconds == pytest.approx(expected)
    # Nothing to register: no reference, or a model that takes none.
    assert plan_run(volume, model="edsr-mixed", threads=2, self_check=False).seconds == pytest.approx(unregistered.seconds)
    assert plan_run(volume, reference, model="cubic").seconds == plan_run(volume, model="cubic").seconds


def test_one_scale_value_on_thick_slices_warns_that_every_axis_gets_it():
    volume = smooth_volume(shape_kji=(12, 40, 36), spacing=(1.0, 1.0, 4.0))
    warned = plan_run(volume, model="cubic", scale=[4]).warnings
    assert warned == ["one --scale value scales every axis, the sharp ones too (0.25 × 0.25 × 1 mm); for the thick "
                      "axis alone give three values (--scale 1 1 4) or --target-spacing"]
    assert plan_run(volume, model="cubic", scale=[1, 1, 4]).warnings == []
    isotropic = smooth_volume(shape_kji=(12, 40, 36), spacing=(2.0, 2.0, 2.0))
    assert plan_run(isotropic, model="cubic", scale=[2]).warnings == []
