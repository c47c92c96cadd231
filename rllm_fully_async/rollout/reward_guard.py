# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Rewards are checked where they enter: a reward that is not a finite number never reaches training.

A NaN reward turns every advantage of its GRPO group, and through the loss every gradient of the step,
into NaN: the optimizer skips the step and the run silently stops learning. So the reward function the
rollout function is given is wrapped in :class:`WatchedReward`, which checks every result, and the
executor checks the finished sample's reward once more (a rollout function may compute its own). A
prompt whose reward is invalid is counted filtered with the reason ``invalid_reward`` and the function's
name; it is not retried (a reward function is expected to be deterministic for a given response).

``WatchedReward`` also notes whether a call is running, so a sample that misses its deadline can name
the function it was stuck in.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from rllm_fully_async.rollout.offload import call


class InvalidReward(ValueError):
    """A reward that is not a finite real number; the message names the function that produced it."""


def function_name(fn: Any) -> str:
    """``fn``'s name for messages, seeing through ``functools.partial`` and :class:`WatchedReward`."""
    while isinstance(fn, partial | WatchedReward):
        fn = fn.func
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def check_reward(value: Any, source: str) -> float:
    """``value`` as a float; raises :class:`InvalidReward` naming ``source`` unless it is a finite number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidReward(f"{source} returned {type(value).__name__} {value!r}, not a number")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidReward(f"{source} returned the non-finite reward {number}")
    return number


class WatchedReward:
    """A reward function with verl's ``compute_score`` call convention, its results checked.

    A result is a number or a dict with a ``score`` key; either is returned unchanged when the score is
    a finite number, else :class:`InvalidReward` is raised. ``running`` counts calls in progress.
    """

    def __init__(self, func: Callable) -> None:
        self.func = func
        self.name = function_name(func)
        self.running = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.running += 1
        try:
            result = self.func(*args, **kwargs)
        except BaseException:
            self.running -= 1
            raise
        if inspect.isawaitable(result):
            return self._finish(result)
        self.running -= 1
        return self.check(result)

    async def _finish(self, awaitable: Any) -> Any:
        try:
            return self.check(await awaitable)
        finally:
            self.running -= 1

    def check(self, result: Any) -> Any:
        source = f"reward function {self.name!r}"
        if isinstance(result, Mapping):
            if "score" not in result:
                raise InvalidReward(f"{source} returned a dict without a 'score' key: {sorted(result)}")
            check_reward(result["score"], source)
        else:
            check_reward(result, source)
        return result


async def call_reward(reward_fn: Callable, **kwargs: Any) -> Any:
    """Call ``reward_fn``; a synchronous one runs in a thread, so one that hangs holds only its own sample
    (which then misses its deadline) and not every rollout sharing the event loop."""
    return await call(reward_fn, **kwargs)
