# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Staleness: how old the weights behind a sample are, and how much rollout may run ahead of training.

A sample's staleness is ``trainer_version - min(version of its tokens)``. The admission budget
bounds it: per sync window at most ``required_samples * (1 + staleness_threshold) *
trigger_parameter_sync_step`` groups may be outstanding (verl's ``max_required_samples``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

from rllm_fully_async.rollout.state_timer import StateTimer


class Versioned(Protocol):
    @property
    def min_version(self) -> int: ...


def staleness(trainer_version: int, item: Versioned) -> int:
    """Versions between the trainer and the oldest token of ``item`` (a Sample or TrajectoryGroup)."""
    return trainer_version - item.min_version


def window_budget(required_samples: int, staleness_threshold: float, trigger_parameter_sync_step: int) -> int:
    """Groups one sync window may hold: verl's ``int(required * (1 + threshold) * trigger)``.

    The small epsilon keeps e.g. ``9 * (1 + 0.2) * 5`` at 54 where float rounding gives 53.999...
    """
    if required_samples < 1:
        raise ValueError(f"required_samples must be >= 1 (groups per train step), got {required_samples}")
    if staleness_threshold < 0:
        raise ValueError(f"async_training.staleness_threshold must be >= 0, got {staleness_threshold}")
    if trigger_parameter_sync_step < 1:
        raise ValueError(
            f"async_training.trigger_parameter_sync_step must be >= 1, got {trigger_parameter_sync_step}"
        )
    return math.floor(required_samples * (1 + staleness_threshold) * trigger_parameter_sync_step + 1e-9)


class AdmissionController:
    """Decides whether the executor may launch another prompt in the current sync window.

    Semantics follow verl's fully-async rollouter: at each sync the window's count is reset to the
    groups still outstanding (in flight or queued, i.e. generated or being generated under older
    weights); each new prompt adds one; launching stops once the count reaches the budget. Unused
    budget therefore never carries over: what is outstanding at the sync counts against the new
    window. A prompt that will never reach the trainer (filtered) gives its slot back, otherwise a
    filter such as zero-reward-variance could starve the trainer before it reaches its next sync.
    """

    def __init__(
        self,
        required_samples: int,
        staleness_threshold: float,
        trigger_parameter_sync_step: int,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.budget = window_budget(required_samples, staleness_threshold, trigger_parameter_sync_step)
        self.version = 0
        self.charged = 0
        self.launched_total = 0
        self.windows = 0
        self._throttled = StateTimer(clock)

    def can_launch(self) -> bool:
        return self.charged < self.budget

    def on_launch(self) -> None:
        """Charge one new prompt to the current window."""
        if not self.can_launch():
            raise RuntimeError(f"admission budget {self.budget} of version {self.version} is used up")
        self.charged += 1
        self.launched_total += 1
        self._tick()

    def on_release(self) -> None:
        """A charged prompt will not reach the trainer (filtered): free its slot."""
        self.charged = max(0, self.charged - 1)
        self._tick()

    def on_sync(self, version: int, outstanding: int) -> None:
        """Open the window of ``version``; ``outstanding`` groups (in flight + queued) carry over."""
        if outstanding < 0:
            raise ValueError(f"outstanding must be >= 0, got {outstanding}")
        self.version = version
        self.charged = outstanding
        self.windows += 1
        self._tick()

    @property
    def remaining(self) -> int:
        return max(0, self.budget - self.charged)

    def stats(self) -> dict[str, float]:
        return {
            "admission/budget": self.budget,
            "admission/charged": self.charged,
            "admission/remaining": self.remaining,
            "admission/launched_total": self.launched_total,
            "admission/throttled_s": self._throttled.total(),
            "admission/throttled": float(self._throttled.active),
        }

    def _tick(self) -> None:
        """Track how long the budget has been exhausted (time rollout sits idle by design)."""
        self._throttled.update(not self.can_launch())
