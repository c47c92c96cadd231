# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""A rollout gate for code that generates through a :class:`RolloutClient` itself, not through the
RolloutExecutor: the benchmark's weight-sync measurement (and the weight-sync tests) pause and resume it."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Coroutine
from typing import Any, TypeVar

from rllm_fully_async.rollout.client import RolloutClient
from rllm_fully_async.sync.param_sync import EventLoopThread

T = TypeVar("T")


class ClientGate:
    """A :class:`RolloutGate` over a :class:`RolloutClient`, for callers that generate through it directly.

    The client lives on its own event loop thread; submit generation coroutines with :meth:`submit`.
    """

    def __init__(self, server_urls: list[str], *, timeout_s: float = 60.0, **client_kwargs: Any) -> None:
        self._loop = EventLoopThread("rollout-gate")
        self._timeout_s = timeout_s
        self.client = RolloutClient(server_urls, **client_kwargs)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return self._loop.submit(coro)

    def pause(self) -> None:
        self._loop.run(self.client.pause(), self._timeout_s, "pause_generation")

    def resume(self, version: int) -> None:
        self._loop.run(self.client.resume(version), self._timeout_s, "continue_generation")

    def close(self) -> None:
        self._loop.run(self.client.close(), self._timeout_s, "closing the rollout client")
        self._loop.close()
