# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Calling user code from the executor's event loop without stalling it.

The executor runs every sample's rollout on one asyncio loop. A synchronous reward function, tool or
group filter called directly on that loop would hold up every other generation in flight for as
long as it runs; a slow verifier would stall the whole rollout side. :func:`call` awaits async
functions and runs synchronous ones in a worker thread, so the loop keeps serving the other samples.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from functools import partial
from typing import Any


def is_async(fn: Callable) -> bool:
    """Whether calling ``fn`` gives an awaitable: async functions, also behind ``functools.partial`` and
    wrappers that keep the wrapped function in ``.func`` (such as ``WatchedReward``)."""
    while isinstance(fn, partial) or (not inspect.isfunction(fn) and callable(getattr(fn, "func", None))):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


async def call(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """``await fn(*args, **kwargs)`` for an async ``fn``; a sync one runs in a worker thread.

    A sync function that returns an awaitable (a wrapper around an async one) has it awaited too.
    """
    if is_async(fn):
        result = fn(*args, **kwargs)
    else:
        result = await asyncio.to_thread(fn, *args, **kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result
