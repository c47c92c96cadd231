# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""A bound on how many weight buckets the sending rank has broadcast and the servers not yet received.

An NCCL broadcast returns to Python as soon as it is enqueued, and the tensor it sends stays allocated until
the receivers have taken it. A rollout server posts its receive only when that bucket's HTTP request reaches
it (one request per bucket, the next after the last was answered), so a sender that never waits can hold
most of the model on its GPU at once. This window makes the sender wait for the oldest bucket before it
converts and sends one more than ``max_buckets`` (slime waits for every bucket, i.e. ``max_buckets=1``):
the sender holds at most ``max_buckets`` buckets being sent plus the one being gathered.
"""

from __future__ import annotations

import datetime
from collections import deque

import torch
import torch.distributed as dist


class BroadcastStalledError(RuntimeError):
    """A bucket was not received by every rank of the group within the timeout."""


class BroadcastWindow:
    """Keeps the works and tensors of the buckets in flight; :meth:`reserve` waits while the window is full.

    ``timeout_s`` bounds each wait: a receiver that died mid-broadcast makes the wait raise instead of hang.
    ``peak`` is the most buckets ever in flight and not yet complete, as measured right after a send.
    """

    def __init__(self, max_buckets: int, timeout_s: float) -> None:
        if max_buckets < 1:
            raise ValueError(f"max_buckets={max_buckets} must be >= 1")
        self.max_buckets = max_buckets
        self._timeout_s = timeout_s
        self._timeout = datetime.timedelta(seconds=timeout_s)
        self._pending: deque[tuple[list[dist.Work], list[torch.Tensor]]] = deque()
        self.peak = 0

    def reserve(self) -> None:
        """Call before sending a bucket: waits until fewer than ``max_buckets`` are in flight."""
        while len(self._pending) >= self.max_buckets:
            self._complete_oldest()

    def push(self, works: list[dist.Work], tensors: list[torch.Tensor]) -> None:
        """Record a bucket just sent after :meth:`reserve`: its works and the tensors they read."""
        if len(self._pending) >= self.max_buckets:
            raise RuntimeError(f"a bucket was sent with {self.max_buckets} in flight; call reserve() first")
        self._pending.append((works, tensors))
        incomplete = sum(1 for ws, _ in self._pending if not all(w.is_completed() for w in ws))
        self.peak = max(self.peak, incomplete)

    def drain(self) -> None:
        """Wait for every bucket in flight."""
        while self._pending:
            self._complete_oldest()

    def _complete_oldest(self) -> None:
        works, tensors = self._pending.popleft()
        try:
            for work in works:
                # Given a timeout, NCCL's wait blocks the host and raises past it (else: orders streams).
                work.wait(self._timeout)
        except RuntimeError as e:
            raise BroadcastStalledError(
                f"a weight bucket was not received by every rollout server within {self._timeout_s:g} s "
                f"(async_training.param_sync_timeout_s): a server died or stopped receiving ({e})"
            ) from e
        if tensors and tensors[0].is_cuda:
            torch.cuda.current_stream(tensors[0].device).synchronize()
