# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Admission budget (verl's formula and window semantics) and the max-staleness drop/keep policy."""

from __future__ import annotations

import pytest
import ray

from rllm_fully_async.message_queue import STALE_AFTER_END, MessageQueue
from rllm_fully_async.rollout.staleness import AdmissionController, staleness, window_budget
from rllm_fully_async.rollout.trajectory import Sample, TrajectoryGroup


@pytest.mark.parametrize(
    "required, threshold, trigger, budget",
    [(1, 0.0, 1, 1), (4, 0.1, 4, 17), (32, 0.5, 1, 48), (16, 1.0, 2, 64), (9, 0.2, 5, 54), (6, 0.9, 5, 57)],
)
def test_window_budget_formula(required, threshold, trigger, budget):
    assert window_budget(required, threshold, trigger) == budget
    assert AdmissionController(required, threshold, trigger).budget == budget


@pytest.mark.parametrize(
    "args, key",
    [((0, 0.1, 1), "required_samples"), ((4, -0.1, 1), "staleness_threshold"), ((4, 0.1, 0), "trigger")],
)
def test_window_budget_rejects_bad_values(args, key):
    with pytest.raises(ValueError, match=key):
        window_budget(*args)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_admission_window_carries_outstanding_not_unused_budget():
    clock = FakeClock()
    ctl = AdmissionController(
        required_samples=2, staleness_threshold=0.5, trigger_parameter_sync_step=2, clock=clock
    )
    assert ctl.budget == 6
    ctl.on_sync(0, outstanding=0)
    for _ in range(6):
        assert ctl.can_launch()
        ctl.on_launch()
    assert not ctl.can_launch()
    with pytest.raises(RuntimeError, match="budget 6"):
        ctl.on_launch()

    clock.now += 3.0  # throttled for 3 s until the sync
    ctl.on_sync(1, outstanding=4)  # 4 groups still in flight or queued count against the new window
    assert ctl.remaining == 2 and ctl.stats()["admission/throttled_s"] == pytest.approx(3.0)
    ctl.on_launch()
    ctl.on_release()  # a filtered prompt gives its slot back
    assert ctl.remaining == 2

    ctl.on_sync(2, outstanding=1)  # 1 unused slot of window 1 does not carry over
    assert ctl.remaining == 5 and ctl.version == 2
    ctl.on_sync(3, outstanding=9)  # more outstanding than the budget: nothing may launch
    assert not ctl.can_launch() and ctl.remaining == 0
    clock.now += 1.5
    assert ctl.stats()["admission/throttled_s"] == pytest.approx(4.5)
    assert ctl.stats()["admission/throttled"] == 1.0
    assert ctl.launched_total == 7


def group(uid: str, versions: list[tuple[int, int]]) -> TrajectoryGroup:
    samples = [
        Sample([1], [2], [-0.1], reward=1.0, finish_reason="stop", min_version=lo, max_version=hi)
        for lo, hi in versions
    ]
    return TrajectoryGroup(
        uid=uid, epoch=0, datum={"row": uid}, samples=samples, launch_version=versions[0][0]
    )


def test_staleness_uses_the_oldest_token():
    g = group("a", [(2, 3), (1, 3)])  # the second sample was interrupted by two syncs
    assert (g.min_version, g.max_version) == (1, 3)
    assert staleness(4, g) == 3
    assert staleness(4, g.samples[0]) == 2 and g.samples[0].version_span == 1


def fill(q, groups: list[TrajectoryGroup]) -> None:
    for g in groups:
        ray.get(q.register_drawn.remote(g.uid, g.epoch, g.datum))
        ray.get(q.put.remote(g))


def test_max_staleness_drop_requeues_and_keep_counts(ray_local):
    q = MessageQueue.remote(8)
    fill(q, [group("old", [(0, 0), (0, 1)]), group("mid", [(1, 1), (2, 2)]), group("new", [(2, 2), (2, 3)])])
    # trainer at version 3, max_staleness 1: "old" (3) and "mid" (2) are too stale
    groups, ended = ray.get(
        q.get_batch.remote(1, trainer_version=3, max_staleness=1, staleness_policy="drop")
    )
    assert [g.uid for g in groups] == ["new"] and not ended
    c = ray.get(q.counts.remote())
    assert c == {**c, "drawn": 3, "trained": 1, "queued": 0, "in_flight": 2, "requeued": 2}
    assert ray.get(q.metrics.remote())["queue/dropped_stale"] == 2
    requeued = ray.get(q.take_requeued.remote(10))
    assert [(p.uid, p.datum) for p in requeued] == [("old", {"row": "old"}), ("mid", {"row": "mid"})]

    # regenerated under fresh weights, they are accepted; a stale one under "keep" is returned and counted
    ray.get(q.put.remote(group("old", [(3, 3), (3, 3)])))
    ray.get(q.put.remote(group("mid", [(1, 1), (1, 1)])))
    groups, _ = ray.get(q.get_batch.remote(2, trainer_version=3, max_staleness=1, staleness_policy="keep"))
    assert [g.uid for g in groups] == ["old", "mid"]
    m = ray.get(q.metrics.remote())
    assert (m["queue/kept_stale"], m["queue/dropped_stale"]) == (1, 2)
    assert ray.get(q.trained_uids.remote()) == {0: {"new": 1, "old": 1, "mid": 1}}

    # after the producer finished nobody can regenerate: a too-stale group is filtered with a reason
    fill(q, [group("late", [(0, 0)])])
    assert ray.get(q.close.remote())
    groups, ended = ray.get(q.get_batch.remote(1, trainer_version=3, max_staleness=1))
    assert groups == [] and ended
    c = ray.get(q.counts.remote())
    assert c["filtered_by_reason"] == {STALE_AFTER_END: 1}
    assert c["drawn"] == c["trained"] + c["filtered"] + c["queued"] + c["in_flight"] == 4
    ray.kill(q)


def test_state_timer_counts_only_the_time_in_the_state():
    from rllm_fully_async.rollout.state_timer import StateTimer

    now = [0.0]
    timer = StateTimer(clock=lambda: now[0])
    timer.update(True)
    now[0] = 2.0
    timer.update(True)  # still in it: the stretch goes on
    assert timer.active and timer.total() == 2.0
    now[0] = 3.0
    timer.update(False)
    now[0] = 10.0
    assert not timer.active and timer.total() == 3.0
    timer.update(True)
    now[0] = 10.5
    assert timer.total() == 3.5
