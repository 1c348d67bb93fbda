"""Several volumes in one Apply: the module's run queue against a real MRML scene and real child processes."""

from __future__ import annotations

import time

import pytest

from conftest import smooth_volume
from MRISuperResLib import MRISuperResError
from MRISuperResLib.job import RunOptions
from MRISuperResSlicer.run_queue import UNITS_PER_VOLUME, QueuedVolume, RunQueue, queued_volumes
from MRISuperResSlicer.runner import SuperResolutionRunner
from test_slicer_runner import add_volume, node_ids, run_folders, scene  # noqa: F401 (fixtures)


def run_to_the_end(queue: RunQueue, events: list, timeout: float = 120.0, stop=None) -> None:
    deadline = time.monotonic() + timeout
    while queue.running and time.monotonic() < deadline:
        events.extend(queue.poll())
        if stop is not None and stop(queue):
            queue.cancel()
        time.sleep(0.05)
    assert not queue.running, "the queue did not end in time"


def three_volumes(scene):
    return [add_volume(scene, smooth_volume(seed=seed), name) for seed, name in ((1, "a"), (2, "b"), (3, "c"))]


def cubic_start(scene, failing=()):
    runner = SuperResolutionRunner()
    return lambda item: runner.start(scene, item.input_node, item.reference_node, item.output_node, RunOptions(
        model="magic" if item.input_node.GetName() in failing else "cubic"))


def test_every_volume_is_done_in_turn_on_one_progress_bar(scene):
    inputs = three_volumes(scene)
    reference = add_volume(scene, smooth_volume(shape_kji=(48, 40, 36), spacing=(0.9, 0.9, 1.0), seed=5), "T1")
    queue = RunQueue(queued_volumes(inputs, reference), cubic_start(scene)).begin()
    events = []
    run_to_the_end(queue, events)
    assert [f.output_node.GetName() for f in queue.results] == ["a_SR", "b_SR", "c_SR"] and not queue.failures
    assert {e.total for e in events} == {3 * UNITS_PER_VOLUME}
    assert events[-1].done == 3 * UNITS_PER_VOLUME
    # Each volume's progress lies in its own third of the bar, in order.
    firsts = [next(e.done for e in events if e.message.startswith(f"{name} ({i + 1}/3)"))
              for i, name in enumerate("abc")]
    assert firsts == sorted(firsts) and firsts[1] >= UNITS_PER_VOLUME and firsts[2] >= 2 * UNITS_PER_VOLUME
    assert queue.summary() == "Done: a_SR, b_SR, c_SR."


def test_a_failing_volume_is_reported_and_the_others_still_run(scene):
    inputs = three_volumes(scene)
    queue = RunQueue(queued_volumes(inputs), cubic_start(scene, failing={"b"})).begin()
    run_to_the_end(queue, [])
    assert [f.output_node.GetName() for f in queue.results] == ["a_SR", "c_SR"]
    assert [f.item.input_node.GetName() for f in queue.failures] == ["b"]
    assert queue.summary().startswith("Done: a_SR, c_SR. b failed: Unknown model 'magic'")
    assert scene.GetFirstNodeByName("b_SR") is None


def test_cancel_keeps_the_finished_volumes_and_leaves_the_rest_unchanged(scene):
    inputs = three_volumes(scene)
    queue = RunQueue(queued_volumes(inputs), cubic_start(scene)).begin()
    run_to_the_end(queue, [], stop=lambda q: len(q.finished) == 1)
    assert queue.cancelled and [f.output_node.GetName() for f in queue.results] == ["a_SR"]
    assert scene.GetFirstNodeByName("b_SR") is None and scene.GetFirstNodeByName("c_SR") is None
    assert queue.summary() == "Done: a_SR. Cancelled; 2 volumes left unchanged."


def test_one_volume_passes_its_progress_on_unchanged(scene):
    (node,) = three_volumes(scene)[:1]
    direct = SuperResolutionRunner().start(scene, node, options=RunOptions(model="cubic"))
    queue = RunQueue([QueuedVolume(node)], lambda item: direct).begin()
    events = []
    run_to_the_end(queue, events)
    assert queue.results[0].output_node.GetName() == "a_SR"
    assert events and not any("(1/1)" in e.message for e in events)
    assert all(e.total < UNITS_PER_VOLUME for e in events if e.total)


def test_the_volumes_and_their_references_must_pair_up(scene):
    a, b, c = three_volumes(scene)
    pairs = queued_volumes([a, b], [c, None])
    assert [(p.input_node, p.reference_node) for p in pairs] == [(a, c), (b, None)]
    assert all(p.reference_node is c for p in queued_volumes([a, b], c))
    with pytest.raises(MRISuperResError, match="2 input volumes but 3 references; give one per input"):
        queued_volumes([a, b], [c, c, c])
    with pytest.raises(MRISuperResError, match="listed twice"):
        queued_volumes([a, a])
    with pytest.raises(MRISuperResError, match="No input volume is selected"):
        queued_volumes([])
