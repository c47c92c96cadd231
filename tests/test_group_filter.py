# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Dynamic sampling's group filter, and user code called off the executor's event loop."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from rllm_fully_async.rollout.group_filter import NO_SIGNAL, USER_FILTER, GroupFilter
from rllm_fully_async.rollout.offload import call
from rllm_fully_async.rollout.trajectory import Sample, TrajectoryGroup


def group(rewards: list[float], uid: str = "7", **extra) -> TrajectoryGroup:
    samples = [Sample([1], [2], [-0.1], r, "stop", 0, 0, extra={k: v[i] for k, v in extra.items()})
               for i, r in enumerate(rewards)]  # fmt: skip
    return TrajectoryGroup(uid=uid, epoch=0, datum={}, samples=samples, launch_version=0)


def verdict(f: GroupFilter, g: TrajectoryGroup):
    return asyncio.run(f.reason(g))


def test_groups_without_learning_signal_are_filtered():
    f = GroupFilter(filter_groups=True)
    assert verdict(f, group([1.0, 1.0, 1.0]))[0] == NO_SIGNAL
    assert verdict(f, group([0.0, 0.0]))[0] == NO_SIGNAL
    assert verdict(f, group([0.0, 1.0])) is None
    # verl's DAPO metric names: a reward-function output, or the reward itself
    f = GroupFilter(filter_groups=True, metric="acc")
    assert verdict(f, group([0.3, 0.7], acc=[1.0, 1.0]))[0] == NO_SIGNAL
    assert verdict(f, group([0.5, 0.5], acc=[0.0, 1.0])) is None
    with pytest.raises(KeyError, match="algorithm.filter_groups.metric='acc'.*'other'"):
        verdict(f, group([0.0, 1.0], other=[1, 2]))
    assert not GroupFilter().active and verdict(GroupFilter(), group([1.0, 1.0])) is None


def test_user_filter_reasons_sync_and_async():
    def odd(g):
        return "odd_uid" if int(g.uid) % 2 else None

    async def flag(g):
        return int(g.uid) > 10

    assert verdict(GroupFilter(filter_fn=odd), group([0.0, 1.0], uid="3"))[0] == "odd_uid"
    assert verdict(GroupFilter(filter_fn=odd), group([0.0, 1.0], uid="4")) is None
    assert verdict(GroupFilter(filter_fn=flag), group([0.0, 1.0], uid="11"))[0] == USER_FILTER
    assert verdict(GroupFilter(filter_fn=flag), group([0.0, 1.0], uid="2")) is None
    with pytest.raises(TypeError, match="return None or False to keep"):
        verdict(GroupFilter(filter_fn=lambda g: 3), group([0.0, 1.0]))


def test_group_filter_loads_from_a_file(tmp_path):
    path = tmp_path / "filters.py"
    path.write_text("def drop_all(group):\n    return 'dropped'\n")
    assert verdict(GroupFilter(filter_fn=f"{path}:drop_all"), group([0.0, 1.0]))[0] == "dropped"
    with pytest.raises(AttributeError, match="async_training.group_filter: .* has no function 'nope'"):
        GroupFilter(filter_fn=f"{path}:nope")


def test_a_slow_sync_function_does_not_stall_the_event_loop():
    """A blocking call runs in a worker thread: the loop keeps ticking meanwhile."""
    release = threading.Event()

    def slow() -> str:
        release.wait(10)
        return threading.current_thread().name

    async def main() -> tuple[int, str]:
        task = asyncio.ensure_future(call(slow))
        ticks = 0
        deadline = time.monotonic() + 5
        while ticks < 20 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            ticks += 1
        release.set()
        return ticks, await task

    ticks, thread = asyncio.run(main())
    assert ticks == 20 and thread != threading.main_thread().name

    async def coro(x):
        return x + 1

    assert asyncio.run(call(coro, 1)) == 2
