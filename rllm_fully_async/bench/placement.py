# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Disjoint cores for generation and training, and per-process CPU time."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# ------------------------------------------------------------------------------------------------ cores


@dataclass
class Placement:
    """Disjoint cores for generation (engine, executor, queue) and training (worker, driver, Ray)."""

    gen_cores: list[int]
    train_cores: list[int]

    @classmethod
    def choose(cls, gen: Sequence[int], train: Sequence[int]) -> Placement:
        available = sorted(os.sched_getaffinity(0))
        if not gen and not train:
            if len(available) < 2:
                raise SystemExit("the benchmark needs 2 cores or more: one for generation, one for training")
            gen, train = available[: len(available) // 2], available[len(available) // 2 :]
        if not gen or not train or set(gen) & set(train) or not set(gen) | set(train) <= set(available):
            raise SystemExit(f"--gen-cores {list(gen)} and --train-cores {list(train)} must be non-empty, "
                             f"disjoint and among the cores this process may use, {available}")  # fmt: skip
        return cls(list(gen), list(train))


def pin_threads(pid: int, cores: Sequence[int]) -> None:
    """Pin every thread of process ``pid``; threads it starts later inherit the mask from their creator."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except OSError:  # the thread ended meanwhile
            pass


def pin_this_process(cores: Sequence[int]) -> int:
    pin_threads(os.getpid(), cores)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(len(cores))
    return os.getpid()


def _pin_actor(actor_self: Any, cores: Sequence[int] | None) -> int:
    return pin_this_process(cores) if cores else os.getpid()


def pin_actors(actors: Sequence[Any], cores: Sequence[int] | None) -> list[int]:
    """Pin Ray actors' processes (any actor, through ``__ray_call__``) unless ``cores`` is None; returns their
    pids."""
    import ray

    cores = list(cores) if cores else None
    return ray.get([a.__ray_call__.remote(_pin_actor, cores) for a in actors], timeout=60)


def cpu_times(pids: dict[str, list[int]]) -> dict[str, dict[str, Any]]:
    """Per role: CPU seconds used so far, and each thread's (run, run-queue wait) nanoseconds.

    The run-queue wait comes from the kernel (``/proc/<pid>/task/<tid>/schedstat``): time a thread was ready
    to run while its core was busy with something else, such as another user's process.
    """
    import psutil

    out: dict[str, dict[str, Any]] = {}
    for role, role_pids in pids.items():
        used, threads = 0.0, {}
        for pid in role_pids:
            try:
                times = psutil.Process(pid).cpu_times()
                used += times.user + times.system
                for tid in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                        threads[tid] = tuple(int(x) for x in f.read().split()[:2])
            except (psutil.Error, OSError):  # the process or the thread has ended
                pass
        out[role] = {"cpu_s": used, "threads": threads}
    return out


def cpu_usage(start: dict[str, dict], end: dict[str, dict], wall: float) -> dict[str, dict[str, float]]:
    """Per role: cores used on average, and the share of its runnable time that its busiest thread (the
    model or training loop) spent on a CPU; 1.0 means that nothing else competed for its core."""
    out = {}
    for role, after in end.items():
        before = start.get(role, {"cpu_s": 0.0, "threads": {}})
        deltas = [(run - before["threads"].get(tid, (0, 0))[0], wait - before["threads"].get(tid, (0, 0))[1])
                  for tid, (run, wait) in after["threads"].items()]  # fmt: skip
        run, wait = max(deltas, default=(0, 0))
        out[role] = {"cores": (after["cpu_s"] - before["cpu_s"]) / wall,
                     "cpu_share_when_runnable": run / (run + wait) if run > 0 else 1.0}  # fmt: skip
    return out
