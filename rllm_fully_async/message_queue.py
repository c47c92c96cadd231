# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The bounded queue between the rollout executor and the trainer, and the ledger of every prompt.

A full queue blocks the producer (nothing is ever dropped to make room). Every prompt drawn from the
dataset is in exactly one place at any moment, so

    drawn == trained + sum(filtered by reason) + queued + in_flight

holds between any two actor calls; ``counts()`` reports the terms. In-flight prompts keep their
dataset row, so a checkpoint (``state_dict``) can re-queue them on resume instead of losing them.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from typing import Any, NamedTuple

import ray

from rllm_fully_async.config_schema import STALENESS_POLICIES
from rllm_fully_async.rollout.staleness import staleness
from rllm_fully_async.rollout.trajectory import Prompt, TrajectoryGroup

# Filter reason used when a too-stale group is returned after the producer has finished: nobody is
# left to regenerate it.
STALE_AFTER_END = "stale_after_end_of_stream"
_RECENT_FILTER_DETAILS = 20


class QueueBatch(NamedTuple):
    groups: list[TrajectoryGroup]
    # True when the producer has finished and the queue is drained: no more groups will come.
    end_of_stream: bool


@ray.remote(num_cpus=0)
class MessageQueue:
    """Ray actor (asyncio). Groups are identified by ``(epoch, uid)``.

    Life of a prompt: ``register_drawn`` (in flight) -> ``put`` (queued) -> ``get_batch`` (trained),
    or ``report_filtered`` (filtered) from in flight, or back from queued to in flight through the
    re-queue list when ``get_batch`` drops it as too stale.
    """

    def __init__(self, max_queue_size: int):
        if max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1, got {max_queue_size}")
        self.max_queue_size = int(max_queue_size)
        self._cond = asyncio.Condition()
        self._queued: deque[TrajectoryGroup] = deque()
        self._in_flight: dict[tuple[int, str], dict[str, Any]] = {}
        self._requeue: deque[tuple[int, str]] = deque()
        self._drawn = 0
        self._trained_uids: dict[int, Counter] = {}
        self._filtered: Counter = Counter()
        self._filter_details: deque[str] = deque(maxlen=_RECENT_FILTER_DETAILS)
        self._closed = False
        self._error: str | None = None
        self._stats: Counter = Counter()
        self._max_depth = 0

    # ----- producer side -----

    async def register_drawn(self, uid: str, epoch: int, datum: dict[str, Any]) -> None:
        """The executor drew a prompt from the dataset; it is in flight from now on."""
        async with self._cond:
            self._raise_if_failed()
            key = (epoch, uid)
            if key in self._in_flight:
                raise ValueError(f"prompt uid={uid!r} epoch={epoch} is already in flight (duplicate uid?)")
            self._in_flight[key] = datum
            self._drawn += 1
            self._cond.notify_all()

    async def put(self, group: TrajectoryGroup) -> None:
        """Queue a finished group; waits while the queue is full (back-pressure on the producer)."""
        if not group.samples:
            raise ValueError(f"group uid={group.uid!r} epoch={group.epoch} has no samples")
        start = time.monotonic()
        async with self._cond:
            self._require_in_flight(group.key, "put")
            while len(self._queued) >= self.max_queue_size:
                self._raise_if_failed()
                await self._cond.wait()
            self._raise_if_failed()
            self._require_in_flight(group.key, "put")
            del self._in_flight[group.key]
            self._queued.append(group)
            self._max_depth = max(self._max_depth, len(self._queued))
            self._stats["puts"] += 1
            self._stats["put_wait_s"] += time.monotonic() - start
            self._cond.notify_all()

    async def report_filtered(self, uid: str, epoch: int, reason: str, detail: str = "") -> None:
        """An in-flight prompt will not be trained: count it under ``reason`` (e.g. "rollout_failed")."""
        async with self._cond:
            key = (epoch, uid)
            self._require_in_flight(key, "report_filtered")
            self._filter(key, reason, detail)
            self._cond.notify_all()

    async def take_requeued(self, max_n: int) -> list[Prompt]:
        """Re-queued prompts (dropped as stale, or in flight at a checkpoint); they stay in flight."""
        async with self._cond:
            out = []
            while self._requeue and len(out) < max_n:
                epoch, uid = self._requeue.popleft()
                out.append(Prompt(uid, epoch, self._in_flight[(epoch, uid)]))
            return out

    async def wait_requeued(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` until some prompt is re-queued; returns how many are waiting."""
        async with self._cond:
            try:
                await asyncio.wait_for(self._cond.wait_for(lambda: bool(self._requeue)), timeout_s)
            except asyncio.TimeoutError:
                pass
            return len(self._requeue)

    async def close(self, error: str | None = None) -> bool:
        """Signal end of stream (consumers drain what is queued, then see ``end_of_stream``).

        Without ``error`` the queue refuses to close (returns False) while prompts are still in flight
        or re-queued: the producer must finish them first. With ``error`` it closes at once and every
        waiting or later call raises, so a failed producer (or consumer) never leaves the other side
        hanging.
        """
        async with self._cond:
            if error is not None:
                self._error = error
            elif self._in_flight:
                return False
            self._closed = True
            self._cond.notify_all()
            return True

    # ----- consumer side -----

    async def get_batch(
        self,
        num_groups: int,
        trainer_version: int,
        max_staleness: int | None = None,
        staleness_policy: str = "drop",
        timeout_s: float = 600.0,
    ) -> QueueBatch:
        """Take ``num_groups`` groups for one training step; waits until that many are queued.

        Returns fewer (possibly none) only with ``end_of_stream=True``. Returned groups are counted
        as trained, so call this only when the groups will be trained on. A group staler than
        ``max_staleness`` is, with ``staleness_policy="drop"``, sent back to the producer to be
        regenerated (counted ``dropped_stale``), with ``"keep"`` returned anyway (``kept_stale``).
        Raises ``TimeoutError`` after ``timeout_s`` without enough groups (they stay queued).
        """
        if not 1 <= num_groups <= self.max_queue_size:
            raise ValueError(
                f"num_groups={num_groups} must be in [1, max_queue_size={self.max_queue_size}]; "
                "raise the queue size or lower the groups per step"
            )
        if staleness_policy not in STALENESS_POLICIES:
            raise ValueError(
                f"staleness_policy must be one of {STALENESS_POLICIES}, got {staleness_policy!r}"
            )
        start = time.monotonic()
        deadline = start + timeout_s
        async with self._cond:
            while True:
                self._raise_if_failed()
                if max_staleness is not None and staleness_policy == "drop":
                    self._drop_stale(trainer_version, max_staleness)
                if len(self._queued) >= num_groups or self._closed:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"get_batch waited {timeout_s:.1f}s for {num_groups} groups: {self._describe()}"
                    )
                try:
                    await asyncio.wait_for(self._cond.wait(), remaining)
                except asyncio.TimeoutError:
                    pass
            groups = [self._queued.popleft() for _ in range(min(num_groups, len(self._queued)))]
            for group in groups:
                self._trained_uids.setdefault(group.epoch, Counter())[group.uid] += 1
                if max_staleness is not None and staleness(trainer_version, group) > max_staleness:
                    self._stats["kept_stale"] += 1
            self._stats["gets"] += 1
            self._stats["get_wait_s"] += time.monotonic() - start
            self._cond.notify_all()
            return QueueBatch(groups, end_of_stream=self._closed and not self._queued)

    # ----- accounting, metrics, checkpoint -----

    async def counts(self) -> dict[str, Any]:
        """The ledger terms; ``drawn == trained + filtered + queued + in_flight`` always."""
        return {
            "drawn": self._drawn,
            "trained": sum(sum(c.values()) for c in self._trained_uids.values()),
            "filtered": sum(self._filtered.values()),
            "filtered_by_reason": dict(self._filtered),
            "queued": len(self._queued),
            "in_flight": len(self._in_flight),
            "requeued": len(self._requeue),
            "closed": self._closed,
        }

    async def trained_uids(self) -> dict[int, dict[str, int]]:
        """Per epoch, how many times each uid was returned for training."""
        return {epoch: dict(c) for epoch, c in self._trained_uids.items()}

    async def metrics(self) -> dict[str, float]:
        gets, puts = self._stats["gets"], self._stats["puts"]
        out = {
            "queue/depth": len(self._queued),
            "queue/max_depth": self._max_depth,
            "queue/max_size": self.max_queue_size,
            "queue/in_flight": len(self._in_flight),
            "queue/requeued": len(self._requeue),
            "queue/dropped_stale": self._stats["dropped_stale"],
            "queue/kept_stale": self._stats["kept_stale"],
            "queue/put_wait_s_total": self._stats["put_wait_s"],
            "queue/put_wait_s_mean": self._stats["put_wait_s"] / puts if puts else 0.0,
            "queue/get_wait_s_total": self._stats["get_wait_s"],
            "queue/get_wait_s_mean": self._stats["get_wait_s"] / gets if gets else 0.0,
        }
        for reason, count in self._filtered.items():
            out[f"queue/filtered/{reason}"] = count
        return out

    async def recent_filter_details(self) -> list[str]:
        """The last few filter reasons with their details (e.g. the rollout error), newest last."""
        return list(self._filter_details)

    async def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: queued groups, in-flight prompts (with rows), counters."""
        return {
            "max_queue_size": self.max_queue_size,
            "queued": list(self._queued),
            "in_flight": [Prompt(uid, epoch, datum) for (epoch, uid), datum in self._in_flight.items()],
            "requeue": list(self._requeue),
            "drawn": self._drawn,
            "trained_uids": {epoch: dict(c) for epoch, c in self._trained_uids.items()},
            "filtered": dict(self._filtered),
            "closed": self._closed,
            "stats": dict(self._stats),
        }

    async def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore into a fresh queue. In-flight prompts are all re-queued; the executor continues their
        partial generations from its own saved state."""
        async with self._cond:
            if self._drawn:
                raise RuntimeError("load_state_dict needs a fresh MessageQueue (prompts were already drawn)")
            self._queued = deque(state["queued"])
            self._in_flight = {(p.epoch, p.uid): p.datum for p in state["in_flight"]}
            requeued = [tuple(k) for k in state["requeue"]]
            seen = set(requeued)
            self._requeue = deque(requeued + [k for k in self._in_flight if k not in seen])
            self._drawn = state["drawn"]
            self._trained_uids = {epoch: Counter(c) for epoch, c in state["trained_uids"].items()}
            self._filtered = Counter(state["filtered"])
            self._closed = state["closed"]
            self._stats = Counter(state["stats"])
            self._cond.notify_all()

    # ----- internals -----

    def _drop_stale(self, trainer_version: int, max_staleness: int) -> None:
        keep: deque[TrajectoryGroup] = deque()
        for group in self._queued:
            if staleness(trainer_version, group) <= max_staleness:
                keep.append(group)
            elif self._closed:
                self._filter(group.key, STALE_AFTER_END, f"staleness {staleness(trainer_version, group)}")
            else:
                self._in_flight[group.key] = group.datum
                self._requeue.append(group.key)
                self._stats["dropped_stale"] += 1
        if len(keep) != len(self._queued):
            self._queued = keep
            self._cond.notify_all()

    def _filter(self, key: tuple[int, str], reason: str, detail: str) -> None:
        self._in_flight.pop(key, None)
        self._filtered[reason] += 1
        epoch, uid = key
        self._filter_details.append(f"{reason} (uid={uid}, epoch={epoch}){': ' + detail if detail else ''}")

    def _require_in_flight(self, key: tuple[int, str], action: str) -> None:
        if key not in self._in_flight:
            epoch, uid = key
            raise KeyError(
                f"{action}: prompt uid={uid!r} epoch={epoch} is not in flight (never drawn, or already done)"
            )

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"message queue closed with error: {self._error}")

    def _describe(self) -> str:
        return (
            f"queued={len(self._queued)} in_flight={len(self._in_flight)} requeued={len(self._requeue)} "
            f"drawn={self._drawn} closed={self._closed}"
        )
