"""The slice networks run only over the boxes that hold signal; the air around keeps the interpolated input."""

import functools

import numpy as np
import pytest
from conftest import OBLIQUE

from MRISuperResLib import pipeline, superresolve
from MRISuperResLib.foreground import MARGIN, background_level, box_share, group_boxes, signal_mask
from MRISuperResLib.inference import predict_planes
from MRISuperResLib.models.registry import ModelRegistry
from MRISuperResLib.plan import make_plan
from MRISuperResLib.volume import Volume


def head_in_air(shape_kji=(12, 150, 140), seed: int = 0) -> Volume:
    """A textured blob in the middle of a field of view that is mostly noisy air (Rayleigh noise)."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape_kji), indexing="ij")
    inside = (i / 0.3) ** 2 + (j / 0.3) ** 2 + (k / 0.6) ** 2 < 1
    array = np.hypot(*rng.normal(0, 2.0, (2,) + shape_kji))
    array += inside * (100 + 30 * np.sin(9 * i) * np.cos(7 * j))
    return Volume(array.astype(np.float32), (0.9, 0.9, 4.0), (3.0, -20.0, 5.0), OBLIQUE)


def test_the_background_is_the_dark_or_constant_border_and_never_tissue():
    air = np.zeros((10, 20, 20), np.float32)
    air[3:7, 5:15, 5:15] = 1.0
    assert background_level(air) == 0.0
    assert background_level(air + 0.37) == pytest.approx(0.37)  # a constant fill (a masked, z-scored volume)
    tissue = np.random.default_rng(0).uniform(0.3, 1.0, (10, 20, 20)).astype(np.float32)
    assert background_level(tissue) is None and signal_mask(tissue) is None
    # A volume two voxels thick along every axis (the fuzz test found it) is all border: nothing is cropped.
    assert background_level(tissue[:2, :2, :2]) is None and signal_mask(tissue[:2, :2, :2]) is None


def test_noise_does_not_widen_a_box_and_a_group_without_signal_has_none():
    rng = np.random.default_rng(1)
    volume = np.hypot(*rng.normal(0, 0.02, (2, 16, 120, 120))).astype(np.float32)
    volume[10:, 50:60, 40:70] = 1.0  # slices 10-15: the local mean reaches slices 8 and 9, not group 1 (4-7)
    volume[2, 5, 5] = volume[3, 110, 100] = 3.0  # single bright voxels in the air
    boxes = group_boxes(signal_mask(volume), 120, 120, 16, group=4)
    assert boxes[:2] == [None, None]
    r0, r1, c0, c1 = boxes[2]
    assert r0 <= 50 - MARGIN + 2 and r1 >= 60 + MARGIN - 2 and c0 <= 40 - MARGIN + 2 and c1 >= 70 + MARGIN - 2
    assert r1 - r0 < 10 + 2 * MARGIN + 6 and c1 - c0 < 30 + 2 * MARGIN + 6
    assert 0 < box_share(boxes, 120, 120, 16, 4) < 0.5
    assert group_boxes(None, 120, 120, 16, 4) == [(0, 120, 0, 120)] * 4


def test_cropping_to_the_signal_keeps_the_network_there_and_the_interpolation_in_the_air(untrained_models_dir,
                                                                                         monkeypatch):
    volume = head_in_air()
    options = dict(model="tiny", models_dir=str(untrained_models_dir), self_check=False)
    cropped = superresolve(volume, **options).array
    cubic = superresolve(volume, model="cubic").array
    monkeypatch.setattr(pipeline, "predict_planes", functools.partial(predict_planes, crop_to_signal=False))
    whole = superresolve(volume, **options).array

    # In the blob and its edge (the network sees MARGIN voxels beyond the signal of its slices), the result is
    # the network's, exactly.
    tissue = cubic > 20
    assert tissue.mean() > 0.02
    np.testing.assert_allclose(cropped[tissue], whole[tissue], atol=1e-4)
    corner = (slice(None), slice(0, 10), slice(0, 10))  # far from the blob: outside every box
    np.testing.assert_allclose(cropped[corner], cubic[corner], atol=1e-3)
    assert np.abs(whole[corner] - cubic[corner]).max() > 1e-2  # there the network would have changed the air


def test_the_plan_counts_only_the_boxes_that_hold_signal():
    volume = head_in_air()
    registry = ModelRegistry()
    plan = pipeline.plan_run(volume, model=registry.default_name, threads=2, self_check=False)
    everywhere = make_plan(volume.grid, registry.default, threads=2, self_check=False)
    assert plan.seconds < 0.8 * everywhere.seconds
