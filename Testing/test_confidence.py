"""The reference gate: use a matching reference, drop a misleading one."""

from __future__ import annotations

import numpy as np

from MRISuperResLib import superresolve
from MRISuperResLib.confidence import CONFIDENCE_THRESHOLD, reference_agreement
from MRISuperResLib.degrade import thick_slices
from MRISuperResLib.geometry import resampled_grid
from MRISuperResLib.io import write_volume
from MRISuperResLib.metrics import psnr
from MRISuperResLib.phantom import make_phantom
from MRISuperResLib.resample import preinterpolate

SHAPE = (64, 80, 64)


def cases():
    phantom = make_phantom(SHAPE, seed=1)
    truth, paired = phantom["T2"], phantom["T1"]
    # Misleading: the right contrast and field of view, but the anatomy sits elsewhere (another patient,
    # or a reference that moved): shifted by 12 and 9 voxels in-plane.
    wrong = paired.with_array(np.roll(paired.array, (12, 9), axis=(1, 2)))
    return truth, thick_slices(truth, axis=2, factor=4), paired, wrong


def test_edges_of_a_matching_reference_agree_and_those_of_a_misplaced_one_do_not():
    truth, thick, paired, wrong = cases()
    lr = preinterpolate(thick, resampled_grid(thick.grid, truth.spacing)).array
    mask = np.ones(lr.shape, np.uint8)
    crop = slice(0, lr.shape[0])
    assert reference_agreement(lr, paired.array[crop], mask, (4.0, 1.0, 1.0)) > CONFIDENCE_THRESHOLD + 0.1
    assert reference_agreement(lr, wrong.array[crop], mask, (4.0, 1.0, 1.0)) < CONFIDENCE_THRESHOLD


def test_a_misleading_reference_costs_nothing_with_the_gate_and_a_matching_one_helps():
    truth, thick, paired, wrong = cases()
    score = lambda result: psnr(result.array, truth.array[:result.array.shape[0]])  # noqa: E731
    alone = score(superresolve(thick, None, target_spacing=truth.spacing, self_check=False))
    events = []
    with_paired = score(superresolve(thick, paired, target_spacing=truth.spacing, progress=events.append,
                                      self_check=False))
    assert any(e.message.startswith("reference used") for e in events)
    events.clear()
    # The gate alone: the shifted reference is not registered (that is tested below).
    gated_wrong = score(superresolve(thick, wrong, target_spacing=truth.spacing, progress=events.append,
                                      self_check=False, register_reference=False))
    assert any(e.message.startswith("reference ignored: its edges do not match") for e in events)
    ungated_wrong = score(superresolve(thick, wrong, target_spacing=truth.spacing, gate_reference=False,
                                        self_check=False, register_reference=False))
    assert with_paired > alone + 0.3
    assert gated_wrong == alone
    assert ungated_wrong < alone


def test_a_reference_as_thick_as_the_input_along_its_thick_axis_is_ignored_and_one_thick_elsewhere_is_used():
    truth, thick, paired, _ = cases()
    run = lambda reference, **options: superresolve(thick, reference, target_spacing=truth.spacing,  # noqa: E731
                                                    self_check=False, register_reference=False, **options)
    alone = run(None).array
    events, report = [], {}
    same_axis = thick_slices(paired, axis=2, factor=4)  # 4 mm slices where the input has 4 mm slices
    result = run(same_axis, progress=events.append, report=report).array
    np.testing.assert_array_equal(result, alone)
    assert report["reference"].startswith("ignored: no sharper than the input")
    warning = next(e.message for e in events if e.message.startswith("reference ignored"))
    assert "k: 4.00 mm against the input's 4.00 mm" in warning and "3D scan" in warning
    assert not np.array_equal(run(same_axis, gate_reference=False).array, alone)  # the gate off: used
    events.clear()
    other_axis = thick_slices(paired, axis=0, factor=4)  # sharp along k, where the input is thick
    run(other_axis, progress=events.append)
    assert any(e.message.startswith("reference used") for e in events)


def test_unregistered_the_self_check_drops_a_reference_that_registration_would_move_and_keeps_an_aligned_one(
        monkeypatch):
    import MRISuperResLib.pipeline as pipeline

    truth, thick, paired, _ = cases()
    # The phantom's sharp edges make the gate refuse shifts of 2 voxels or more, so the limit (1.5 voxels,
    # set on val/) is lowered to half a voxel for a 1-voxel shift that the gate lets through.
    monkeypatch.setattr(pipeline, "MISPLACED_REFERENCE_VOXELS", 0.5)
    moved = paired.with_array(np.roll(paired.array, 1, axis=1))

    def run(reference, **options):
        events, report = [], {}
        result = superresolve(thick, reference, target_spacing=truth.spacing, register_reference=False, adapt=0,
                              progress=events.append, report=report, **options)
        return result.array, report, [e.message for e in events]

    alone = superresolve(thick, None, target_spacing=truth.spacing, adapt=0).array
    result, report, messages = run(moved)
    assert report["reference"] == "dropped: misplaced and not registered", report
    assert 0.7 < report["placement_error_mm"] < 1.5
    assert any(m.startswith("reference not used: registration, measured but not applied, would move it by up to")
               and "without --no-register-reference" in m for m in messages)
    np.testing.assert_array_equal(result, alone)
    _, report, _ = run(paired)
    assert report["reference"] == "used" and report["placement_error_mm"] < 0.5
    # Without the self-check (the network alone) or without the gate, nothing is measured.
    for options in ({"self_check": False}, {"gate_reference": False}):
        _, report, _ = run(moved, **options)
        assert "placement_error_mm" not in report


def test_quiet_runs_print_only_what_changes_the_output(cli, tmp_path):
    truth, thick, paired, wrong = cases()
    paths = {name: write_volume(volume, tmp_path / f"{name}.nii.gz")
             for name, volume in (("thick", thick), ("paired", paired), ("wrong", wrong))}

    def quiet_run(*options):
        output = tmp_path / f"out{len(list(tmp_path.glob('out*')))}.nii.gz"
        code, stdout, stderr = cli("run", paths["thick"], "-o", output, "--quiet", "--no-self-check", *options)
        assert code == 0 and output.exists(), stderr
        return stderr.strip()

    assert quiet_run("--model", "vdsr-mixed", "--reference", paths["paired"]) == ""
    assert quiet_run("--model", "vdsr-mixed", "--reference", paths["wrong"], "--no-register-reference").startswith(
        "reference ignored: its edges do not match the input's")
    assert quiet_run("--model", "cubic", "--reference", paths["paired"]) == (
        "reference not used: cubic interpolation takes none; choose a model that does "
        "(see `mrisuperres models`)")


def test_a_reference_that_moved_is_registered_and_then_helps():
    truth, thick, paired, wrong = cases()
    score = lambda result: psnr(result.array, truth.array[:result.array.shape[0]])  # noqa: E731
    run = dict(target_spacing=truth.spacing, self_check=False, model="vdsr-mixed")
    alone = score(superresolve(thick, None, **run))
    events, report = [], {}
    registered = score(superresolve(thick, wrong, progress=events.append, report=report, **run))
    assert any(e.message.startswith("reference registered (edge agreement") and e.warning for e in events)
    registration = report["registration"]
    assert registration["kept"] and report["reference"] == "used"
    assert registration["agreement_before"] < CONFIDENCE_THRESHOLD < registration["agreement_after"]
    assert registered > alone + 0.3


def registration_ending_at(translation_mm: tuple[float, float, float]):
    """A stand-in for `register_rigid` that always finds this translation."""
    import SimpleITK as sitk

    def register(fixed, moving, convergence=None):
        transform = sitk.Euler3DTransform()
        transform.SetTranslation(translation_mm)
        convergence.update(metric=-0.1, iterations=3, stop="test")
        return transform
    return register


def test_a_registration_that_does_not_improve_the_match_is_not_kept(monkeypatch):
    from MRISuperResLib import pipeline

    astray = registration_ending_at((8.0, 0.0, 0.0))  # a registration that ended 8 mm off
    truth, thick, paired, wrong = cases()
    run = dict(target_spacing=truth.spacing, self_check=False, model="vdsr-mixed")
    unregistered = superresolve(thick, paired, register_reference=False, **run)
    monkeypatch.setattr(pipeline, "register_rigid", astray)
    events, report = [], {}
    result = superresolve(thick, paired, progress=events.append, report=report, **run)
    assert report["registration"]["kept"] is False
    assert report["registration"]["agreement_after"] < report["registration"]["agreement_before"]
    assert any(e.message.startswith("reference left where it was: registration did not improve the match")
               and not e.warning for e in events)
    np.testing.assert_array_equal(result.array, unregistered.array)


def test_a_registration_that_barely_moves_the_reference_leaves_it_unscored_and_in_place(monkeypatch):
    from MRISuperResLib import pipeline

    nudge = registration_ending_at((0.1, 0.0, 0.0))  # a tenth of a millimetre: "already aligned"
    truth, thick, paired, wrong = cases()
    run = dict(target_spacing=truth.spacing, self_check=False, model="vdsr-mixed")
    unregistered = superresolve(thick, paired, register_reference=False, **run)
    monkeypatch.setattr(pipeline, "register_rigid", nudge)
    monkeypatch.setattr(pipeline, "reference_agreement",
                        counted := CountingCalls(pipeline.reference_agreement))
    events, report = [], {}
    result = superresolve(thick, paired, progress=events.append, report=report, **run)
    assert report["registration"]["kept"] is False
    assert report["registration"]["moved_mm"] == 0.1
    assert "agreement_after" not in report["registration"]
    assert counted.calls == 1  # only the reference as it was is scored
    assert any(e.message.startswith("reference left where it was: registration moved it by at most 0.10 mm")
               for e in events)
    np.testing.assert_array_equal(result.array, unregistered.array)


class CountingCalls:
    def __init__(self, function):
        self.function, self.calls = function, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.function(*args, **kwargs)
