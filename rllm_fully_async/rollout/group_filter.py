# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Dynamic sampling (DAPO): which finished groups are worth training on.

A group whose samples all got the same reward has zero advantage under GRPO-style estimators: it
costs a training step's share and teaches nothing. With ``algorithm.filter_groups.enable`` such
groups are filtered, and a user function (``async_training.group_filter``) may filter more. A
filtered group never reaches the queue; the executor counts it in the ledger under its reason and
gives its admission slot back, so the stream refills the batch and every step still trains
``required_samples`` groups.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from rllm_fully_async.rollout.offload import call
from rllm_fully_async.rollout.rollout_fn import load_function
from rllm_fully_async.rollout.trajectory import TrajectoryGroup

NO_SIGNAL = "no_learning_signal"
USER_FILTER = "group_filter"
# verl's DAPO metric names that mean the sample's reward itself.
REWARD_METRICS = (None, "score", "seq_reward", "seq_final_reward", "reward")


def _metric_value(sample: Any, metric: str | None) -> float:
    if metric in REWARD_METRICS:
        return float(sample.reward)
    if metric not in sample.extra:
        raise KeyError(
            f"algorithm.filter_groups.metric={metric!r}: not among the sample's values; use null for the "
            f"reward, or one of the keys the reward function returns: {sorted(sample.extra)}"
        )
    return float(sample.extra[metric])


class GroupFilter:
    """``await reason(group)``: ``None`` to train the group, else ``(reason, detail)`` for the ledger.

    ``filter_fn(group) -> None | False`` keeps a group; ``True`` or a string filters it (the string
    becomes the ledger's reason). It may be async; a synchronous one runs in a worker thread.
    """

    def __init__(
        self, filter_groups: bool = False, metric: str | None = None, filter_fn: str | Callable | None = None
    ) -> None:
        self.filter_groups = bool(filter_groups)
        self.metric = metric
        self.filter_fn = load_function(filter_fn, "async_training.group_filter") if filter_fn else None

    @property
    def active(self) -> bool:
        return self.filter_groups or self.filter_fn is not None

    async def reason(self, group: TrajectoryGroup) -> tuple[str, str] | None:
        if self.filter_groups:
            values = [_metric_value(s, self.metric) for s in group.samples]
            if all(math.isclose(v, values[0], rel_tol=0.0, abs_tol=1e-9) for v in values):
                return NO_SIGNAL, f"all {len(values)} samples have {self.metric or 'reward'} {values[0]:g}"
        if self.filter_fn is not None:
            verdict = await call(self.filter_fn, group)
            if isinstance(verdict, str) and verdict:
                return verdict, f"{USER_FILTER} returned {verdict!r}"
            if verdict is True:
                return USER_FILTER, ""
            if verdict not in (None, False):
                raise TypeError(
                    f"async_training.group_filter returned {verdict!r}; return None or False to keep the "
                    "group, True or a reason string to filter it"
                )
        return None
