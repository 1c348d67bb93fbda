"""Property-based fuzzing of the Python API (hypothesis): random shapes, spacings, oblique and flipped
directions, factors, dtypes and target requests. Every run either refuses with one sentence or returns
exactly the planned grid; the same input gives the same output; the input is never changed."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from MRISuperResLib import plan_run, superresolve
from MRISuperResLib.errors import MRISuperResError
from MRISuperResLib.volume import Volume

DTYPES = [np.uint8, np.int16, np.float32, np.float64]
# What a run may refuse after its plan accepted the grid: the voxels themselves. Any other refusal of a
# planned run (a valid volume refused) fails the test.
RUN_TIME_REFUSALS = ("is constant", "NaN or infinite voxels", "is a 2D image")


@st.composite
def volumes(draw) -> Volume:
    shape = tuple(draw(st.integers(1, 20)) for _ in range(3))
    spacing = tuple(draw(st.floats(0.3, 6.0)) for _ in range(3))
    rotation = Rotation.from_quat([draw(st.floats(-1, 1)) for _ in range(3)] + [draw(st.floats(0.1, 1))])
    direction = rotation.as_matrix() @ np.diag([1.0, 1.0, draw(st.sampled_from([1.0, -1.0]))])
    origin = tuple(draw(st.floats(-200, 200)) for _ in range(3))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2 ** 16))
    kind = draw(st.sampled_from(["noise", "blobs", "blobs", "constant", "nan"]))
    rng = np.random.default_rng(seed)
    if kind == "constant":
        array = np.full(shape, 7.0)
    elif kind == "nan":  # a float volume with one NaN or infinite voxel
        array = rng.random(shape) * 300
        array.flat[draw(st.integers(0, array.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        dtype = draw(st.sampled_from([np.float32, np.float64]))
    elif kind == "noise":
        array = rng.random(shape) * 300
    else:
        grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
        array = 200 * np.exp(-sum(g ** 2 for g in grids) * 3) + rng.random(shape) * 5
    return Volume(array.astype(dtype), spacing[::-1], origin, direction)


@st.composite
def requests(draw) -> dict:
    kind = draw(st.sampled_from(["default", "spacing", "spacings", "scale", "scales"]))
    if kind == "spacing":
        return {"target_spacing": draw(st.floats(0.2, 4.0))}
    if kind == "spacings":
        return {"target_spacing": [draw(st.floats(0.2, 4.0)) for _ in range(3)]}
    if kind == "scale":
        return {"scale": draw(st.floats(0.5, 5.0))}
    if kind == "scales":
        return {"scale": [draw(st.sampled_from([1, 2, 3, 4, 2.5])) for _ in range(3)]}
    return {}


def _is_one_sentence(message: str) -> bool:
    return "\n" not in message and message.endswith((".", "?", ")")) and len(message) < 400


def _run(volume: Volume, model: str, request: dict) -> Volume:
    return superresolve(volume, model=model, threads=1, adapt=0, **request)


@pytest.mark.parametrize("model", ["cubic", "vdsr-mixed"])
@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(volume=volumes(), request=requests())
def test_every_run_refuses_in_one_sentence_or_returns_the_planned_grid(model, volume, request):
    before = (volume.array.copy(), volume.array.dtype, volume.spacing, volume.origin, volume.direction.copy())
    try:
        plan = plan_run(volume, model=model, threads=1, adapt=0, **request)
    except MRISuperResError as error:
        assert _is_one_sentence(str(error)), str(error)
        with pytest.raises(MRISuperResError):      # the run refuses what its plan refused
            _run(volume, model, request)
    else:
        try:
            first = _run(volume, model, request)
        except MRISuperResError as error:          # only refusals of the voxels, which the plan does not read
            assert _is_one_sentence(str(error)), str(error)
            assert any(reason in str(error) for reason in RUN_TIME_REFUSALS), str(error)
        else:
            assert first.grid.same_as(plan.target)
            assert np.isfinite(first.array).all()
            second = _run(volume, model, request)
            assert np.array_equal(first.array, second.array)
    array, dtype, spacing, origin, direction = before
    assert volume.array.dtype == dtype and np.array_equal(volume.array, array, equal_nan=array.dtype.kind == "f")
    assert volume.spacing == spacing and volume.origin == origin and np.array_equal(volume.direction, direction)
