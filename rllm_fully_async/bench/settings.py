# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Benchmark settings, sweep values and the progress log."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

# Sweep values; verl's published ablation varies the same keys.
STALENESS_SWEEP = (0.0, 0.1, 0.3, 0.5, 1.0)
TRIGGER_SWEEP = (1, 2, 4)
SWEEPS = ("staleness", "trigger", "partial")
# Weight-sync model shapes, 0.16M to 70M parameters: (hidden, layers, intermediate, heads, kv heads).
WEIGHT_SYNC_SHAPES = ((64, 2, 256, 4, 2), (128, 4, 512, 4, 2), (256, 4, 1024, 8, 4), (512, 4, 2048, 8, 4),
                      (768, 8, 3072, 12, 4))  # fmt: skip
SYNC_METRICS = {"pause": "async/param_sync_pause_s", "transfer": "async/param_sync_transfer_s",
                "resume": "async/param_sync_resume_s", "total": "async/param_sync_s"}  # fmt: skip
_STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"[bench {time.monotonic() - _STARTED:6.1f}s] {message}", flush=True)


# ------------------------------------------------------------------------------------------------ settings


@dataclass
class BenchSettings:
    """One benchmark invocation. Every field but the weight-sync shapes is a command-line flag."""

    out: str = "bench_results"
    steps: int = 24  # training steps per run
    groups_per_step: int = 8  # prompts per step (ppo_mini_batch_size)
    n: int = 8  # samples per prompt (rollout.n)
    max_concurrency: int = 64  # samples in flight
    length_median: float = 32.0  # lognormal response lengths (tokens) ...
    length_sigma: float = 1.0  # ... and their tail weight
    length_min: int = 4
    length_max: int = 256
    hidden_size: int = 128  # the toy model's width and depth
    num_layers: int = 4
    staleness_threshold: float = 0.5  # the fully-async run's settings
    trigger_parameter_sync_step: int = 4
    partial_rollout: bool = True
    sweeps: tuple[str, ...] = SWEEPS
    components: bool = True
    weight_sync_shapes: tuple[tuple[int, ...], ...] = WEIGHT_SYNC_SHAPES
    gen_phase_batches: int = 8  # batches generated to measure G
    gen_cores: tuple[int, ...] = ()  # default: the first half of the available cores
    train_cores: tuple[int, ...] = ()  # default: the second half
    seed: int = 1
    smoke: bool = False
    model_path: str = ""  # default: the toy model at hidden_size x num_layers
    config_name: str = "fully_async_ppo_cpu"  # the config every run composes
    engine_url: str = ""  # default: start the embedded CPU engine on the generation cores
    overrides: tuple[str, ...] = ()  # Hydra overrides for every run

    @property
    def embedded_engine(self) -> bool:
        """The CPU engine on its own cores; otherwise a running server (SGLang on a GPU host), no pinning."""
        return not self.engine_url

    @property
    def samples_per_step(self) -> int:
        return self.groups_per_step * self.n

    @property
    def num_prompts(self) -> int:
        """Dataset rows: the trained ones plus room for what the async runs generate ahead."""
        ahead = math.ceil((1 + max(STALENESS_SWEEP)) * max(TRIGGER_SWEEP)) + 2
        return max(self.steps + ahead, self.gen_phase_batches + 4) * self.groups_per_step


def smoke_settings(out: str, **where: Any) -> BenchSettings:
    """Every path but the weight-sync sizes at the smallest sizes, for CI; ``where`` picks model, engine."""
    return BenchSettings(out=out, steps=2, groups_per_step=2, n=2, max_concurrency=8, length_median=4,
                         length_sigma=0.5, length_max=8, sweeps=(), weight_sync_shapes=(),
                         gen_phase_batches=2, smoke=True, **where)  # fmt: skip
