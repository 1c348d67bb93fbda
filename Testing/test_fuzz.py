"""Property-based fuzzing of the Python API (hypothesis): random shapes, spacings, oblique, flipped and
sometimes sheared or scaled directions, factors, dtypes (and values beyond float32), target requests, and
sometimes a reference (overlapping, far away or constant). Every run either refuses with one sentence or
returns exactly the planned grid; the same input gives the same output; neither input is ever changed."""

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
RUN_TIME_REFUSALS = ("is constant", "NaN or infinite voxels", "is a 2D image", "beyond the ±3.4e38")
# What a plan or a run must say of a direction matrix that is not a rotation (or a flip).
NOT_ORTHONORMAL = "a direction matrix that is not orthonormal"


@st.composite
def volumes(draw) -> Volume:
    # Everything comes from one drawn seed with set odds (hypothesis' own choices favour the first and the
    # extreme values, so most examples would be refused early): most volumes are ones a run accepts, so
    # that they reach the networks and registration. The price: a failure is not shrunk to a smaller example.
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    shape = [int(n) for n in rng.integers(2, 21, 3)]
    if rng.random() < 0.1:
        shape[int(rng.integers(3))] = 1
    spacing = tuple(float(s) for s in rng.uniform(0.3, 6.0, 3))
    direction = Rotation.random(random_state=rng).as_matrix() @ np.diag([1.0, 1.0, rng.choice([1.0, -1.0])])
    distortion = rng.choice(["none", "sheared", "scaled"], p=[0.8, 0.1, 0.1])
    if distortion == "sheared":
        direction = direction @ np.array([[1.0, rng.uniform(0.05, 0.5), 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    elif distortion == "scaled":
        direction = direction @ np.diag([1.0, 1.0, rng.uniform(1.05, 2.0)])
    origin = tuple(float(o) for o in rng.uniform(-200, 200, 3))
    dtype = DTYPES[int(rng.integers(len(DTYPES)))]
    kind = rng.choice(["noise", "blobs", "constant", "nan", "huge"], p=[0.25, 0.51, 0.08, 0.08, 0.08])
    if kind == "huge":  # float64 beyond float32's range, set after the Volume was made (which would refuse it)
        volume = Volume(rng.random(shape) * 300, spacing[::-1], origin, direction)
        volume.array.flat[int(rng.integers(volume.array.size))] = rng.choice([1e300, -1e60])
        return volume
    if kind == "constant":
        array = np.full(shape, 7.0)
    elif kind == "nan":  # a float volume with one NaN or infinite voxel
        array = rng.random(shape) * 300
        array.flat[int(rng.integers(array.size))] = rng.choice([np.nan, np.inf, -np.inf])
        dtype = rng.choice([np.float32, np.float64])
    elif kind == "noise":
        array = rng.random(shape) * 300
    else:
        grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
        array = 200 * np.exp(-sum(g ** 2 for g in grids) * 3) + rng.random(shape) * 5
    return Volume(array.astype(dtype), spacing[::-1], origin, direction)


@st.composite
def references(draw, volume: Volume) -> Volume | None:
    """None, or a volume of another contrast at 0.5-2 mm: over the input's centre, far from it, or constant."""
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    kind = rng.choice(["none", "overlapping", "far", "constant"], p=[0.4, 0.4, 0.1, 0.1])
    if kind == "none":
        return None
    spacing = float(rng.uniform(0.5, 2.0))
    shape = tuple(int(n) for n in rng.integers(4, 17, 3))
    centre = volume.grid.index_to_physical((np.array(volume.array.shape[::-1]) - 1) / 2.0)
    direction = volume.direction if rng.random() < 0.5 else np.eye(3)
    origin = centre - direction @ ((np.array(shape[::-1]) - 1) / 2.0 * spacing)
    if kind == "far":
        origin = origin + 1000.0
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    array = np.full(shape, 5.0) if kind == "constant" else 100 - 80 * np.exp(-sum(g ** 2 for g in grids) * 3)
    return Volume(array.astype(np.float32), (spacing,) * 3, tuple(origin), direction)


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


def _run(volume: Volume, reference: Volume | None, model: str, request: dict) -> Volume:
    return superresolve(volume, reference, model=model, threads=1, adapt=0, **request)


def _state(volume: Volume | None):
    return None if volume is None else (volume.array.copy(), volume.array.dtype, volume.spacing, volume.origin,
                                        volume.direction.copy())


def _unchanged(volume: Volume | None, before) -> bool:
    if volume is None:
        return before is None
    array, dtype, spacing, origin, direction = before
    return (volume.array.dtype == dtype and np.array_equal(volume.array, array, equal_nan=array.dtype.kind == "f")
            and volume.spacing == spacing and volume.origin == origin and np.array_equal(volume.direction, direction))


@pytest.mark.parametrize("model", ["cubic", "vdsr-mixed"])
@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), volume=volumes(), request=requests())
def test_every_run_refuses_in_one_sentence_or_returns_the_planned_grid(model, data, volume, request):
    reference = data.draw(references(volume))
    before, reference_before = _state(volume), _state(reference)
    try:
        plan = plan_run(volume, reference, model=model, threads=1, adapt=0, **request)
    except MRISuperResError as error:
        assert _is_one_sentence(str(error)), str(error)
        orthonormal = np.allclose(volume.direction.T @ volume.direction, np.eye(3), atol=1e-4)
        if not orthonormal and min(volume.array.shape) > 1:
            assert NOT_ORTHONORMAL in str(error) or any(reason in str(error) for reason in RUN_TIME_REFUSALS), \
                str(error)
        with pytest.raises(MRISuperResError):      # the run refuses what its plan refused
            _run(volume, reference, model, request)
    else:
        # A sheared or scaled direction never gets past the plan.
        assert np.allclose(volume.direction.T @ volume.direction, np.eye(3), atol=1e-4)
        try:
            first = _run(volume, reference, model, request)
        except MRISuperResError as error:          # only refusals of the voxels, which the plan does not read
            assert _is_one_sentence(str(error)), str(error)
            assert any(reason in str(error) for reason in RUN_TIME_REFUSALS), str(error)
        else:
            assert first.grid.same_as(plan.target)
            assert np.isfinite(first.array).all()
            second = _run(volume, reference, model, request)
            assert np.array_equal(first.array, second.array)
    assert _unchanged(volume, before) and _unchanged(reference, reference_before)
