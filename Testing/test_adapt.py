"""Learning from the scan itself: pairs from its acquired planes, the self-check, fallback and adaptation."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from conftest import smooth_volume
from MRISuperResLib import Volume, devices, superresolve
from MRISuperResLib.adapt import MIN_HELD_OUT, _error, fine_tune, scan_pairs
from MRISuperResLib.adapt import score as score_on_pairs
from MRISuperResLib.errors import CancelledError
from MRISuperResLib.intensity import IntensityScale
from MRISuperResLib.models.architectures import build_architecture
from MRISuperResLib.models.registry import ModelRegistry
from MRISuperResLib.pipeline import plan_run
from MRISuperResLib.plan import DEFAULT_ADAPT_SECONDS, adaptation_step_seconds


def _textured(shape_kji=(12, 48, 44), seed=0):
    volume = smooth_volume(shape_kji=shape_kji, seed=seed)
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape_kji), indexing="ij")
    volume.array = (volume.array + 30 * (np.sin(1.3 * i) * np.cos(0.9 * j) > 0)).astype(np.float32)
    return volume


def test_pairs_come_from_the_acquired_planes_with_the_coarsened_axis_along_rows():
    volume = _textured()
    scan = IntensityScale.fit(volume.array).normalise(volume.array)
    pairs, why = scan_pairs(scan, volume, upsampled=(2,), factor=4.0, reference=None, context=1, count=64)
    assert pairs is not None, why
    n, channels, height, width = pairs.lr.shape
    assert channels == 3 and pairs.truth.shape == (n, 1, height, width) and 0 < pairs.holdout.sum() < n
    assert not pairs.mask.any()  # no reference: blank channel, mask 0
    # Only rows are coarsened: the input differs from the truth along rows far more than along columns.
    lr, truth = pairs.lr[:, 0].numpy(), pairs.truth[:, 0].numpy()
    row_error = np.abs(np.diff(lr, axis=1) - np.diff(truth, axis=1)).mean()
    column_error = np.abs(np.diff(lr, axis=2) - np.diff(truth, axis=2)).mean()
    assert row_error > column_error


def test_the_first_patches_of_a_larger_draw_are_a_smaller_draw():
    volume = _textured()
    scan = IntensityScale.fit(volume.array).normalise(volume.array)
    arguments = dict(upsampled=(2,), factor=4.0, reference=None, context=1)
    small, why = scan_pairs(scan, volume, **arguments, count=32)
    large, _ = scan_pairs(scan, volume, **arguments, count=128)
    assert small is not None and len(large) == 128, why
    for name in ("lr", "truth", "reference", "mask", "holdout", "like_inference"):
        assert torch.equal(getattr(large, name)[:32], getattr(small, name)), name
    # Too few held out among the first 16 to score (with this seed): as many more as it takes.
    large, _ = scan_pairs(scan, volume, **arguments, count=128, seed=4)
    assert int(large.holdout[:16].sum()) < MIN_HELD_OUT
    few, _ = scan_pairs(scan, volume, **arguments, count=16, seed=4)
    assert int(few.holdout.sum()) == MIN_HELD_OUT and bool(few.holdout[-1]) and len(few) > 16
    assert torch.equal(few.lr, large.lr[:len(few)])


def test_projected_pairs_know_which_rows_each_of_their_coarse_slices_covers():
    # A scan constant over each 4-voxel slab of i and j: whatever a pair's rows, the slabs its coarse slices
    # averaged hold one value, so the projection onto what they see leaves its truth unchanged there.
    volume = _textured(shape_kji=(12, 48, 44))
    rng = np.random.default_rng(0)
    k, j, i = np.meshgrid(*(np.arange(n) for n in volume.array.shape), indexing="ij")
    volume.array = rng.uniform(0.2, 1.0, (12, 12, 11))[k, j // 4, i // 4].astype(np.float32)
    pairs, why = scan_pairs(volume.array, volume, upsampled=(2,), factor=4.0, reference=None, count=32,
                            projected=True)
    assert pairs is not None and pairs.projection.shape == (32, pairs.truth.shape[2], pairs.truth.shape[2]), why
    truth = pairs.truth[:, 0]
    seen = torch.diagonal(pairs.projection, dim1=1, dim2=2) > 0  # rows inside a whole slice of the patch
    assert seen.float().mean() > 0.5
    projected = torch.einsum("nij,njw->niw", pairs.projection, truth)
    assert torch.allclose(projected[seen], truth[seen], atol=1e-5)
    # The error counted is what the run's projection leaves: none, for an output that differs only there.
    offset = torch.einsum("nij,njw->niw", pairs.projection, torch.randn_like(truth))[:, None]
    assert _error(pairs.truth + offset, pairs.truth, pairs.projection).abs().max() < 1e-5
    assert pairs.subset(pairs.holdout).projection is not None and pairs.without_reference().projection is not None


def _spine_like():
    """0.9 mm along i, 4x thick (3.6 mm) along j, 5 mm along k: its only pairs (i coarsened) have j along columns."""
    volume = _textured(shape_kji=(10, 32, 64))
    return Volume(volume.array, (0.9, 3.6, 5.0), volume.origin, volume.direction)


def test_fine_tuning_learns_only_from_pairs_shaped_like_the_runs_slices():
    volume = _spine_like()
    scan = IntensityScale.fit(volume.array).normalise(volume.array)

    def pairs_for(upsampled, run_planes):
        pairs, why = scan_pairs(scan, volume, upsampled=upsampled, factor=4.0, reference=None, count=32,
                                run_planes=run_planes)
        assert pairs is not None, why
        return pairs

    # The run's planes have the sharp i or k along their columns; these pairs have the thick j there.
    for run_planes in (("ij",), ("ij", "jk")):
        pairs = pairs_for((1,), run_planes)
        assert not pairs.like_inference.any() and not pairs.for_fine_tuning.any()
    # An isotropic target also upsamples k, and plane jk then has an upsampled axis along its columns too.
    pairs = pairs_for((1, 2), ("ij", "ik", "jk"))
    assert pairs.like_inference.all() and bool((pairs.for_fine_tuning == ~pairs.holdout).all())
    assert pairs_for((1,), ()).like_inference.all()  # no planes given: every pair counts


# Pairs that would teach what inference does not ask (`pipeline._adaptation_mismatch`): a scan whose only pairs
# have its thick axis along their columns, and an input coarse in-plane (as the profile estimate finds one:
# `ProfileEstimate.k_space_truncated`) whose pairs are coarsened through its slices with a slice profile.
# Adapted on anyway, the unlike pairs are all fine-tuning has; an input coarse in-plane keeps to those of its
# pairs that are shaped like its slices (`like_inference` kept).
MISMATCHES = {
    "unlike slices": (_spine_like, {"target_spacing": (0.9, 0.9, 5.0)}, None,
                      "pairs shaped unlike its inference slices", "the scan's own planes give no pairs shaped like",
                      "this scan's own planes", False),
    "in-plane": (lambda: _textured(shape_kji=(40, 24, 22)), {"scale": (2, 2, 1)}, ("box", False, True),
                 "pairs coarsened unlike its input, which looks coarse in-plane", "the input looks coarse in-plane",
                 "the input looks coarse in-plane", True),
}


@pytest.mark.parametrize("mismatch", list(MISMATCHES))
def test_pairs_unlike_the_input_are_adapted_on_only_when_the_model_loses_to_cubic(
        untrained_models_dir, monkeypatch, mismatch):
    import MRISuperResLib.adapt as scan_adaptation
    from MRISuperResLib import pipeline

    make_volume, grid, profile, adapted_on, skipped, why, keeps_like_inference = MISMATCHES[mismatch]
    if profile:
        monkeypatch.setattr(pipeline, "_profile_of_the_scan", lambda *args: profile)
    volume = make_volume()
    real_fine_tune, tuned_on = scan_adaptation.fine_tune, []

    def recording_fine_tune(network, pairs, *args, **kwargs):
        tuned_on.append(pairs)
        return real_fine_tune(network, pairs, *args, **kwargs)

    monkeypatch.setattr(scan_adaptation, "fine_tune", recording_fine_tune)

    def run():
        report, events = {}, []
        superresolve(volume, model="tiny", models_dir=str(untrained_models_dir), adapt=5, fallback=False,
                     report=report, progress=events.append, **grid)
        return report, [e.message for e in events]

    # The untrained network loses to cubic on the scan's own planes: those pairs are its only rescue.
    report, messages = run()
    assert report["self_check"] == "done" and report["estimated_gain_db"] < 0
    assert report["adaptation_steps"] >= 5 and "adapted" in report
    assert report["adaptation"].startswith(f"on {adapted_on}")
    assert any(m.startswith("adapting on this scan's own planes although") for m in messages)
    assert len(tuned_on) == 1 and (tuned_on[0].like_inference is not None) == keeps_like_inference
    # A model that beats cubic there keeps its pretrained weights: fine-tuning on such pairs costs it.
    monkeypatch.setattr(scan_adaptation, "score", _one_db_above_cubic)
    report, messages = run()
    assert report["estimated_gain_db"] == pytest.approx(1.0) and "adapted" not in report and len(tuned_on) == 1
    assert report["adaptation"].startswith(f"skipped: {skipped}")
    assert any(m.startswith(f"not adapted: {why}") for m in messages)


def _one_db_above_cubic(network, pairs, device):
    """`adapt.score` for a model 1 dB better than cubic on the pairs."""
    cubic = score_on_pairs(network, pairs, device)[1]
    return cubic + 1.0, cubic


@pytest.mark.parametrize("shape_kji, scale, in_plane", [((40, 24, 22), (2, 2, 1), True), ((12, 48, 44), (1, 1, 2), False)],
                         ids=["in-plane", "thick"])
def test_only_an_input_with_several_upsampled_axes_counts_as_coarse_in_plane(untrained_models_dir, monkeypatch,
                                                                             shape_kji, scale, in_plane):
    import MRISuperResLib.adapt as scan_adaptation
    from MRISuperResLib import pipeline
    from MRISuperResLib.consistency import ProfileEstimate

    # Whatever the block, the estimate says k-space truncation fits clearly best.
    sinc_fits = ProfileEstimate(None, {"box": 0.1155, "gaussian": 0.1578, "point": 0.0681, "sinc": 0.0642})
    monkeypatch.setattr(pipeline, "estimate_profile", lambda *args: sinc_fits)
    monkeypatch.setattr(scan_adaptation, "score", _one_db_above_cubic)
    report: dict = {}
    superresolve(_textured(shape_kji=shape_kji), model="tiny", models_dir=str(untrained_models_dir), scale=scale,
                 adapt=5, consistency=False, report=report)
    assert report["self_check"] == "done" and report["pairs_profile"] == "box"
    if in_plane:
        assert report["adaptation"].startswith("skipped: the input looks coarse in-plane") and "adapted" not in report
    else:
        assert "adaptation" not in report and report["adaptation_steps"] >= 5


def test_the_profile_estimate_tells_an_input_coarse_in_plane_from_thick_slices():
    from MRISuperResLib.consistency import ProfileEstimate

    # Measured on the lumbar spine (real_lr/) made 2x coarse in-plane, and on box slices of the benchmark volume.
    assert ProfileEstimate(None, {"box": 0.1155, "gaussian": 0.1578, "point": 0.0681, "sinc": 0.0642}).k_space_truncated
    assert not ProfileEstimate("box", {"box": 0.0185, "gaussian": 0.0589, "point": 0.07, "sinc": 0.0562}).k_space_truncated
    # A close call is not clear: such an input keeps its adaptation.
    assert not ProfileEstimate(None, {"box": 0.0283, "gaussian": 0.0706, "sinc": 0.0273}).k_space_truncated


def test_no_pairs_when_every_axis_is_upsampled():
    volume = _textured()
    scan = IntensityScale.fit(volume.array).normalise(volume.array)
    pairs, why = scan_pairs(scan, volume, upsampled=(0, 1, 2), factor=2.0, reference=None)
    assert pairs is None and "no sharp axis" in why


def test_a_model_worse_than_cubic_on_the_scan_falls_back_to_cubic_and_says_so(untrained_models_dir):
    volume = _textured()
    cubic = superresolve(volume, model="cubic")
    events, report = [], {}
    result = superresolve(volume, model="tiny", models_dir=str(untrained_models_dir), adapt=0, report=report,
                          progress=events.append)
    assert report["estimated_gain_db"] < 0 and report["fell_back_to_cubic"] is True
    np.testing.assert_array_equal(result.array, cubic.array)
    assert any("does worse than cubic interpolation" in e.message for e in events)
    kept = superresolve(volume, model="tiny", models_dir=str(untrained_models_dir), adapt=0, fallback=False)
    assert not np.allclose(kept.array, cubic.array)


def test_adaptation_is_deterministic_and_only_kept_when_it_helps_on_held_out_pairs(untrained_models_dir):
    volume = _textured()
    reports = [{}, {}]
    first, second = (superresolve(volume, model="tiny", models_dir=str(untrained_models_dir), adapt=2.0,
                                  fallback=False, report=r, threads=1) for r in reports)
    np.testing.assert_array_equal(first.array, second.array)
    assert reports[0] == reports[1] and reports[0]["adaptation_steps"] >= 5
    # An untrained network learns a great deal from the scan's own pairs in a few steps.
    assert reports[0]["adapted"] is True and reports[0]["adapted_gain_db"] > reports[0]["estimated_gain_db"]


def test_without_a_reference_adaptation_leaves_edsrs_head_and_first_blocks_as_trained():
    volume = _textured()
    scan = IntensityScale.fit(volume.array).normalise(volume.array)
    network = build_architecture("edsr", {"features": 8, "blocks": 4, "context": 1, "use_reference": True}).eval()
    for reference, early_layers_change in ((None, False), (scan, True)):
        pairs, why = scan_pairs(scan, volume, upsampled=(2,), factor=4.0, reference=reference, context=1, count=64)
        assert pairs is not None and pairs.has_reference == (reference is not None), why
        adapted = fine_tune(network, pairs, steps=3, device=torch.device("cpu"))
        changed = {name: not torch.equal(before, after) for (name, before), after in
                   zip(network.state_dict().items(), adapted.state_dict().values())}
        early = [name for name in changed if name.startswith(("head.", "body.0.", "body.1."))]
        assert early and all(changed[name] == early_layers_change for name in early)
        assert all(changed[name] for name in changed if name not in early)
    assert all(p.requires_grad for p in network.parameters())  # the pretrained network is left as it was


def test_without_a_reference_edsr_plans_more_adaptation_steps_in_the_same_seconds(monkeypatch):
    volume = _textured()
    inverted = Volume(volume.array.max() - volume.array, volume.spacing, volume.origin, volume.direction)
    plans = {}
    card = ModelRegistry().get("edsr-large")
    for bfloat16 in (False, True):
        monkeypatch.setattr(devices, "cpu_computes_bfloat16", lambda bfloat16=bfloat16: bfloat16)
        alone = plan_run(volume, model="edsr-large", threads=2)
        guided = plan_run(volume, inverted, model="edsr-large", threads=2)
        assert guided.uses_reference and alone.adapt_steps == alone.adapt_steps_without_reference
        assert alone.adapt_steps == guided.adapt_steps_without_reference
        assert guided.adapt_steps < alone.adapt_steps
        # The later half's cheaper steps fill the same seconds, unless the card's ceiling stops them sooner.
        for plan, with_reference in ((alone, False), (guided, True)):
            seconds = plan.adapt_steps * adaptation_step_seconds(card.architecture, card.macs_per_pixel, "cpu", 2,
                                                                 with_reference)
            if plan.adapt_steps < card.adapt_step_ceiling(with_reference):
                assert seconds == pytest.approx(DEFAULT_ADAPT_SECONDS, rel=0.05)
            else:
                assert seconds <= DEFAULT_ADAPT_SECONDS
        plans[bfloat16] = alone, guided
    # Never more steps than the card's, where adaptation stopped gaining on val/; bfloat16 only gets there sooner.
    card = card.adapt_steps
    for alone, guided in plans.values():
        assert alone.adapt_steps <= card["alone"] and guided.adapt_steps <= card["reference"]
    assert plans[True][1].check_seconds <= plans[False][1].check_seconds


def test_adapt_from_the_command_line_reports_the_estimate(tmp_path, cli, untrained_models_dir):
    from MRISuperResLib.io import write_volume

    source = write_volume(_textured(), tmp_path / "in.nii.gz")
    code, out, err = cli("run", source, "-o", tmp_path / "out.nii.gz", "--progress-json", "--adapt", "1",
                         "--model", "tiny", "--models-dir", untrained_models_dir, "--threads", "1")
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert {"check", "adapt", "done"} <= {e["stage"] for e in events}
    assert any("estimated gain over cubic" in e.get("message", "") for e in events)
    assert "estimated_gain_db" in events[-1]["report"] and "adapted" in events[-1]["report"]


def test_cancel_during_adaptation(untrained_models_dir):
    cancel = threading.Event()

    def on_progress(event):
        if event.stage == "adapt" and event.done >= 2:
            cancel.set()

    with pytest.raises(CancelledError):
        superresolve(_textured(), model="tiny", models_dir=str(untrained_models_dir), adapt=30.0,
                     progress=on_progress, cancel=cancel)



def test_slicer_and_job_options_pass_adaptation_to_the_child():
    from MRISuperResLib.job import RunOptions

    assert RunOptions().arguments() == ["--device", "auto"]
    assert RunOptions(adapt=60.0).arguments()[-2:] == ["--adapt", "60.0"]
    assert RunOptions(adapt=0).arguments()[-1] == "--no-adapt"


def test_slab_average_matches_thick_slices_of_the_same_volume():
    from MRISuperResLib.degrade import thick_slices
    from MRISuperResLib.resample import slab_average

    fine = smooth_volume(shape_kji=(40, 24, 20), spacing=(1.0, 1.0, 1.0))
    thick = thick_slices(fine, 2, 4, "box")
    averaged = slab_average(fine, thick.grid)
    assert averaged.grid.same_as(thick.grid, tolerance=1e-6)
    inner = slice(1, -1)  # the end slabs lean on the extended border
    np.testing.assert_allclose(averaged.array[inner], thick.array[inner], rtol=0, atol=0.02 * np.ptp(fine.array))
    k = np.arange(40, dtype=np.float32)
    ramp = fine.with_array(np.broadcast_to(k[:, None, None], (40, 24, 20)).copy())
    np.testing.assert_allclose(slab_average(ramp, thick.grid).array[inner], thick_slices(ramp, 2, 4).array[inner],
                               atol=1e-4)


def test_the_self_check_drops_a_reference_that_does_not_help_on_the_scan_and_keeps_one_that_does():
    from MRISuperResLib.degrade import thick_slices
    from MRISuperResLib.phantom import make_phantom

    phantom = make_phantom((96, 96, 96))
    low = thick_slices(phantom["T2"], axis=2, factor=4, profile="box")
    t1 = phantom["T1"]
    misplaced = t1.with_array(t1.array)
    misplaced.origin = tuple(np.asarray(t1.origin) + np.array([6.0, -6.0, 5.0]))  # about 10 mm off
    options = dict(model="edsr-large", adapt=0, threads=2, register_reference=False, gate_reference=False)
    aligned_report, misplaced_report, without_report, events = {}, {}, {}, []
    superresolve(low, t1, report=aligned_report, **options)
    result = superresolve(low, misplaced, report=misplaced_report, progress=events.append, **options)
    without = superresolve(low, None, report=without_report, **options)

    assert aligned_report["reference"] == "used" and aligned_report["reference_gain_db"] > 0.5
    assert misplaced_report["reference"] == "dropped by the self-check"
    assert misplaced_report["reference_gain_db"] <= 0
    assert any("reference not used: on this scan's own planes" in e.message and e.warning for e in events)
    np.testing.assert_array_equal(result.array, without.array)
    # A run with a reference scores the first `PAIRS_WITH_REFERENCE` patches; once it drops the reference it is
    # a run without one, on every patch drawn.
    assert aligned_report["self_check_pairs"] < without_report["self_check_pairs"]
    assert misplaced_report["self_check_pairs"] == without_report["self_check_pairs"]
    assert misplaced_report["estimated_gain_db"] == without_report["estimated_gain_db"]


def test_texture_models_are_checked_too_and_an_inverted_reference_is_dropped_for_self_texture():
    from MRISuperResLib.degrade import thick_slices
    from MRISuperResLib.phantom import make_phantom

    phantom = make_phantom((96, 96, 96))
    low = thick_slices(phantom["T2"], axis=2, factor=4, profile="box")
    t1 = phantom["T1"]
    inverted = t1.with_array((t1.array.max() - t1.array).astype(np.float32))
    options = dict(model="rfdn-tt", threads=1, register_reference=False, gate_reference=False)
    aligned_report, inverted_report, events = {}, {}, []
    superresolve(low, t1, report=aligned_report, **options)
    result = superresolve(low, inverted, report=inverted_report, progress=events.append, **options)
    without = superresolve(low, None, **options)

    assert aligned_report["reference"] == "used" and aligned_report["reference_gain_db"] > 0
    assert aligned_report["adaptation"] == "not available for texture-transfer models"
    assert "adapted" not in aligned_report and aligned_report["estimated_gain_db"] > 0
    assert any("checked on this scan, not adapted" in n for n in plan_run(low, t1, "rfdn-tt").notes)
    assert inverted_report["reference"] == "dropped by the self-check"
    assert inverted_report["reference_gain_db"] < 0
    assert any(e.message == "texture transfer: self reference" for e in events)
    np.testing.assert_array_equal(result.array, without.array)


def test_a_texture_model_that_falls_back_to_cubic_maps_zero_confidence(texture_models_dir):
    from MRISuperResLib.pipeline import superresolve_with_confidence

    volume = _textured()
    report = {}
    result, confidence = superresolve_with_confidence(volume, models_dir=str(texture_models_dir), threads=1,
                                                      adapt=0, report=report)
    assert report["fell_back_to_cubic"] is True
    assert np.array_equal(result.array, superresolve(volume, model="cubic").array)
    assert confidence.grid.same_as(result.grid) and not confidence.array.any()


def test_paired_texture_for_the_checks_pairs_is_the_networks_projection_and_changes_its_score():
    from MRISuperResLib.adapt import score

    volume = _textured()
    scan = IntensityScale.fit(volume.array).normalise(volume.array)
    reference = np.ascontiguousarray(1.0 - scan)  # another contrast on the same grid
    pairs, why = scan_pairs(scan, volume, upsampled=(2,), factor=4.0, reference=reference, count=48)
    assert pairs is not None, why
    torch.manual_seed(0)
    network = build_architecture("srcnn", {"features": 8, "mapped": 4, "reference_features": 4, "use_reference": True,
                                           "texture_transfer": True}).eval()
    torch.nn.init.normal_(network.texture.expand.weight, std=0.1)
    textured = pairs.with_paired_texture(network.texture.project, torch.device("cpu"))
    n, _, height, width = pairs.lr.shape
    assert textured.texture.shape == (n, network.texture.hidden, height, width)
    held_out = textured.subset(textured.holdout)
    assert held_out.texture.shape[0] == int(textured.holdout.sum())
    assert held_out.without_reference().texture is None
    with_texture, cubic = score(network, held_out, torch.device("cpu"))
    without_texture, same_cubic = score(network, pairs.subset(pairs.holdout), torch.device("cpu"))
    assert cubic == same_cubic and with_texture != without_texture
