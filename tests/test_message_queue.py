# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""MessageQueue: back-pressure, end of stream, the prompt ledger under concurrency, checkpoints."""

from __future__ import annotations

import asyncio
import random

import pytest
import ray

from rllm_fully_async.message_queue import MessageQueue
from rllm_fully_async.rollout.trajectory import Sample, TrajectoryGroup


def make_group(uid: str, epoch: int = 0, version: int = 0, n: int = 2) -> TrajectoryGroup:
    samples = [
        Sample(
            prompt_ids=[1, 2],
            response_ids=[3, 4, i],
            response_logprobs=[-0.5, -0.25, -1.0],
            reward=float(i),
            finish_reason="stop",
            min_version=version,
            max_version=version,
        )
        for i in range(n)
    ]
    return TrajectoryGroup(uid=uid, epoch=epoch, datum=datum(uid), samples=samples, launch_version=version)


def datum(uid: str) -> dict:
    return {
        "prompt": [{"role": "user", "content": f"q{uid}"}],
        "data_source": "t",
        "extra_info": {"uid": uid},
    }


def balanced(c: dict) -> bool:
    return c["drawn"] == c["trained"] + c["filtered"] + c["queued"] + c["in_flight"]


@pytest.fixture
def queue(ray_local):
    def make(max_queue_size: int):
        handle = MessageQueue.remote(max_queue_size)
        made.append(handle)
        return handle

    made = []
    yield make
    for handle in made:
        ray.kill(handle)


def test_full_queue_blocks_producer_and_never_drops(queue):
    q = queue(2)
    for uid in "abc":
        ray.get(q.register_drawn.remote(uid, 0, datum(uid)))
    ray.get([q.put.remote(make_group("a")), q.put.remote(make_group("b"))])
    blocked = q.put.remote(make_group("c"))
    ready, _ = ray.wait([blocked], timeout=1.0)
    assert not ready, "put on a full queue must wait for space"
    c = ray.get(q.counts.remote())
    assert (c["queued"], c["in_flight"]) == (2, 1) and balanced(c)

    groups, ended = ray.get(q.get_batch.remote(1, trainer_version=0, timeout_s=5))
    assert [g.uid for g in groups] == ["a"] and not ended
    ray.get(blocked, timeout=5)  # space freed: the producer continues
    groups, _ = ray.get(q.get_batch.remote(2, trainer_version=0, timeout_s=5))
    assert [g.uid for g in groups] == ["b", "c"]
    assert [s.reward for s in groups[1].samples] == [0.0, 1.0]
    c = ray.get(q.counts.remote())
    assert c == {**c, "drawn": 3, "trained": 3, "queued": 0, "in_flight": 0, "filtered": 0}
    m = ray.get(q.metrics.remote())
    assert m["queue/max_depth"] == 2 and m["queue/put_wait_s_total"] >= 0.9


def test_end_of_stream_and_timeouts(queue):
    q = queue(4)
    ray.get(q.register_drawn.remote("a", 0, datum("a")))
    with pytest.raises(TimeoutError, match="waited 0.3s for 1 groups"):
        ray.get(q.get_batch.remote(1, trainer_version=0, timeout_s=0.3))
    assert ray.get(q.close.remote()) is False, "must not close while a prompt is still in flight"
    ray.get(q.put.remote(make_group("a")))
    waiting = q.get_batch.remote(2, trainer_version=0, timeout_s=30)
    assert not ray.wait([waiting], timeout=0.5)[0]
    assert ray.get(q.close.remote()) is True
    groups, ended = ray.get(waiting, timeout=5)
    assert [g.uid for g in groups] == ["a"] and ended
    assert ray.get(q.get_batch.remote(2, trainer_version=0, timeout_s=5)) == ([], True)
    with pytest.raises(ValueError, match="max_queue_size=4"):
        ray.get(q.get_batch.remote(5, trainer_version=0))


def test_close_with_error_releases_both_sides(queue):
    q = queue(1)
    for uid in "ab":
        ray.get(q.register_drawn.remote(uid, 0, datum(uid)))
    ray.get(q.put.remote(make_group("a")))
    blocked_put = q.put.remote(make_group("b"))
    assert not ray.wait([blocked_put], timeout=0.3)[0]
    ray.get(q.close.remote(error="trainer crashed"))
    with pytest.raises(RuntimeError, match="trainer crashed"):
        ray.get(blocked_put, timeout=5)
    with pytest.raises(RuntimeError, match="trainer crashed"):
        ray.get(q.get_batch.remote(1, trainer_version=0, timeout_s=5))


def test_bad_calls_name_the_prompt(queue):
    q = queue(2)
    ray.get(q.register_drawn.remote("a", 0, datum("a")))
    with pytest.raises(ValueError, match="uid='a' epoch=0 is already in flight"):
        ray.get(q.register_drawn.remote("a", 0, datum("a")))
    with pytest.raises(KeyError, match="uid='z' epoch=0 is not in flight"):
        ray.get(q.put.remote(make_group("z")))
    with pytest.raises(ValueError, match="staleness_policy"):
        ray.get(q.get_batch.remote(1, 0, 1, "newest"))


def test_ledger_balances_under_concurrent_producers_and_consumers(queue):
    q = queue(3)
    producers, per_producer, epochs = 3, 12, 2
    rng = random.Random(0)
    fate = {f"p{p}-{i}": rng.random() < 0.25 for p in range(producers) for i in range(per_producer)}

    async def produce(p: int) -> None:
        for epoch in range(epochs):
            for i in range(per_producer):
                uid = f"p{p}-{i}"
                await q.register_drawn.remote(uid, epoch, datum(uid))
                await asyncio.sleep(rng.random() * 0.002)
                if fate[uid]:
                    await q.report_filtered.remote(uid, epoch, "rollout_failed", "boom")
                else:
                    await q.put.remote(make_group(uid, epoch))

    async def consume(trained: list) -> None:
        while True:
            groups, ended = await q.get_batch.remote(2, trainer_version=0, timeout_s=30)
            trained.extend(g.key for g in groups)
            if ended:
                return

    async def check(stop: asyncio.Event, snapshots: list) -> None:
        while not stop.is_set():
            snapshots.append(await q.counts.remote())

    async def main() -> tuple[list, list]:
        trained_a, trained_b, snapshots = [], [], []
        stop = asyncio.Event()
        checker = asyncio.create_task(check(stop, snapshots))
        consumers = [asyncio.create_task(consume(t)) for t in (trained_a, trained_b)]
        await asyncio.gather(*(produce(p) for p in range(producers)))
        assert await q.close.remote()
        await asyncio.wait_for(asyncio.gather(*consumers), 30)
        stop.set()
        await checker
        return trained_a + trained_b, snapshots

    trained, snapshots = asyncio.run(main())
    assert len(snapshots) > 10 and all(balanced(c) for c in snapshots)
    assert max(c["queued"] for c in snapshots) <= 3
    kept = sorted((e, uid) for e in range(epochs) for uid, filtered in fate.items() if not filtered)
    assert sorted(trained) == kept
    per_epoch = ray.get(q.trained_uids.remote())
    assert all(count == 1 for e in range(epochs) for count in per_epoch[e].values())
    final = ray.get(q.counts.remote())
    n_filtered = sum(fate.values()) * epochs
    assert final["filtered_by_reason"] == {"rollout_failed": n_filtered}
    assert final == {
        **final,
        "drawn": producers * per_producer * epochs,
        "trained": len(kept),
        "in_flight": 0,
    }
    assert balanced(final)


def test_state_dict_round_trip_requeues_in_flight(queue):
    q = queue(4)
    for uid in "abcde":
        ray.get(q.register_drawn.remote(uid, 1, datum(uid)))
    for uid in "abc":
        ray.get(q.put.remote(make_group(uid, epoch=1, version=1)))
    ray.get(q.get_batch.remote(1, trainer_version=1))  # "a" trained
    ray.get(q.report_filtered.remote("d", 1, "prompt_too_long", "99 > 64"))
    state = ray.get(q.state_dict.remote())  # "b", "c" queued; "e" in flight

    restored = queue(4)
    ray.get(restored.load_state_dict.remote(state))
    before, after = ray.get(q.counts.remote()), ray.get(restored.counts.remote())
    assert after == {**before, "requeued": 1} and balanced(after)
    assert ray.get(restored.trained_uids.remote()) == {1: {"a": 1}}

    (prompt,) = ray.get(restored.take_requeued.remote(5))
    assert (prompt.uid, prompt.epoch, prompt.datum) == ("e", 1, datum("e"))
    assert ray.get(restored.take_requeued.remote(5)) == []
    ray.get(restored.put.remote(make_group("e", epoch=1, version=2)))
    groups, _ = ray.get(restored.get_batch.remote(3, trainer_version=2))
    assert [g.uid for g in groups] == ["b", "c", "e"]
    assert groups[0].samples[1].response_ids == [3, 4, 1] and groups[0].launch_version == 1
    c = ray.get(restored.counts.remote())
    assert c == {**c, "drawn": 5, "trained": 4, "filtered": 1, "queued": 0, "in_flight": 0}

    with pytest.raises(RuntimeError, match="fresh MessageQueue"):
        ray.get(restored.load_state_dict.remote(state))
