# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The rollout engine under test: the embedded CPU engine, or a running server given by URL."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from collections.abc import Sequence
from typing import Any

from rllm_fully_async.bench.placement import pin_threads
from rllm_fully_async.rollout.client import parse_load

# ------------------------------------------------------------------------------------------------ engine


def _http(url: str, body: dict | None = None, timeout_s: float = 60.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        text = response.read().decode()
    return json.loads(text) if text.strip().startswith(("{", "[")) else text


class EngineMonitor:
    """Samples the engine's work counters five times a second: when it generated, and how fast.

    Reading them (``/server_info``; SGLang 0.5.6 logs a deprecation warning for each ``/get_server_info``)
    costs the engine well under 1% of a core.
    """

    def __init__(self, url: str, interval_s: float = 0.2) -> None:
        self.url = url
        self.interval_s = interval_s
        self.samples: list[tuple[float, int, int]] = []  # (time, forward passes, generated tokens)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="engine-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                state = _http(f"{self.url}/server_info", timeout_s=5)["internal_states"][0]
            except OSError:
                continue
            if "forward_passes" not in state:  # a server without the CPU engine's work counters
                return
            self.samples.append((time.time(), int(state["forward_passes"]), int(state["generated_tokens"])))

    def bins(self, start: float, end: float) -> list[tuple[float, float, bool, float]]:
        """``(t0, t1, generating, tokens/s)`` for each sampling interval within [start, end]."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        pairs = zip(inside, inside[1:], strict=False)
        return [(t0, t1, f1 > f0, (g1 - g0) / (t1 - t0)) for (t0, f0, g0), (t1, f1, g1) in pairs if t1 > t0]

    def busy_fraction(self, start: float, end: float) -> float:
        bins = self.bins(start, end)
        total = sum(t1 - t0 for t0, t1, _, _ in bins)
        return sum(t1 - t0 for t0, t1, busy, _ in bins if busy) / total if total else float("nan")


class Engine:
    """The rollout server every run of one invocation shares: the embedded CPU engine on the generation
    cores, or a server already running at a URL (SGLang or its router on a GPU host)."""

    def __init__(self, url: str, model_path: str, process: Any = None) -> None:
        self.url, self.model_path, self.process = url, model_path, process
        self.pids = [process.pid] if process is not None else []  # for CPU accounting
        self.monitor = EngineMonitor(url)

    @classmethod
    def start_on(cls, cores: Sequence[int], model_path: str) -> Engine:
        """Start the CPU engine on ``cores``; the calling thread returns to its own cores afterwards."""
        from rllm_fully_async.servers.rollout_servers import CpuEngineProcess

        own = os.sched_getaffinity(0)
        os.sched_setaffinity(0, cores)  # this thread only; the engine process inherits it and loads there
        try:
            process = CpuEngineProcess(model_path, num_threads=len(cores)).start(timeout_s=180)
        finally:
            os.sched_setaffinity(0, own)
        pin_threads(process.pid, cores)
        return cls(process.url, model_path, process)

    def reset(self, timeout_s: float = 120.0) -> None:
        """Initial weights, version 0 and nothing in flight, so that every run starts alike."""
        _http(f"{self.url}/continue_generation", {})
        _http(f"{self.url}/abort_request", {"abort_all": True})
        deadline = time.monotonic() + timeout_s
        while parse_load(_http(f"{self.url}/get_load")) > 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the engine at {self.url} did not drain within {timeout_s} s")
            time.sleep(0.1)
        _http(f"{self.url}/update_weights_from_disk", {"model_path": self.model_path, "weight_version": "0"})

    def stop(self) -> None:
        self.monitor.stop()
        if self.process is not None:
            self.process.stop()
