# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Time spent in one state (idle, paused, throttled), for the pipeline's idle and throttle metrics."""

from __future__ import annotations

import time
from collections.abc import Callable


class StateTimer:
    """Accumulates the wall time during which ``update(True)`` held, up to now; ``clock`` is injectable."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._total = 0.0
        self._since: float | None = None

    @property
    def active(self) -> bool:
        """Whether the state holds now."""
        return self._since is not None

    def update(self, in_state: bool) -> None:
        """Record whether the state holds from now on."""
        now = self._clock()
        if in_state and self._since is None:
            self._since = now
        elif not in_state and self._since is not None:
            self._total += now - self._since
            self._since = None

    def total(self) -> float:
        """Seconds in the state so far, the current stretch included."""
        return self._total + (self._clock() - self._since if self._since is not None else 0.0)
