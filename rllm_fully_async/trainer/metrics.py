# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Per-step metrics of the asynchronous pipeline and the end-of-run summary.

verl's ``compute_data_metrics`` covers rewards, advantages and lengths; this adds what only a
fully-async run has: staleness, partial-rollout span, throughput and the idle ratios.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from verl import DataProto

from rllm_fully_async.rollout.staleness import staleness


def async_metrics(groups: Sequence, batch: DataProto, trainer_version: int) -> dict[str, float]:
    """Staleness, version span and reward statistics of one training batch."""
    samples = [s for g in groups for s in g.samples]
    stale = np.array([staleness(trainer_version, s) for s in samples], dtype=np.float64)
    span = np.array([s.version_span for s in samples], dtype=np.float64)
    rewards = np.array([s.reward for s in samples], dtype=np.float64)
    aborts = np.array([s.num_aborts for s in samples], dtype=np.float64)
    # per group: versions since its prompt was admitted, and wall time from admission to its last sample
    launch_lag = np.array([trainer_version - g.launch_version for g in groups], dtype=np.float64)
    latency = np.array([g.finished_at - g.created_at for g in groups], dtype=np.float64)
    metrics = {
        "reward/mean": float(rewards.mean()),
        "async/staleness_mean": float(stale.mean()),
        "async/staleness_max": float(stale.max()),
        "async/partial_rollout_span_mean": float(span.mean()),
        "async/partial_rollout_span_max": float(span.max()),
        # aborted at least once (by a weight sync's pause) and resumed; whether that spanned two weight
        # versions is rollout/partial_rollout_fraction
        "async/aborted_fraction": float((aborts > 0).mean()),
        "async/launch_lag_mean": float(launch_lag.mean()),
        "async/group_latency_s_mean": float(latency.mean()),
        "async/group_latency_s_max": float(latency.max()),
        "async/batch_groups": len(groups),
        "async/batch_samples": len(samples),
        "async/batch_response_tokens": int(batch.batch["response_mask"].sum().item()),
    }
    for reason in ("stop", "length", "abort"):
        metrics[f"async/finish_reason/{reason}"] = sum(s.finish_reason == reason for s in samples)
    for value, count in zip(*np.unique(stale.astype(np.int64), return_counts=True), strict=True):
        metrics[f"async/staleness_hist/{int(value)}"] = int(count)
    return metrics


@dataclass
class RunSummary:
    """What a user wants to see when the run ends: did it learn, how fast, where did time go.

    ``samples`` and ``tokens`` count the whole run, resumed parts included; rates cover only the time since
    this process started (``started``), so they count only what was trained since then.
    """

    started: float = field(default_factory=time.time)
    rewards: list[tuple[int, float]] = field(default_factory=list)
    samples: int = 0
    tokens: int = 0
    staleness_max: float = 0.0
    staleness_sum: float = 0.0
    sync_seconds: list[float] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    # the queue's last few filter reasons with their details (e.g. a rollout's error), newest last
    filter_details: list[str] = field(default_factory=list)
    # samples and tokens already counted when this process took over (a resume)
    resumed_samples: int = 0
    resumed_tokens: int = 0

    def add_step(self, step: int, metrics: dict[str, Any]) -> None:
        self.rewards.append((step, float(metrics["reward/mean"])))
        n = int(metrics["async/batch_samples"])
        self.samples += n
        self.tokens += int(metrics["async/batch_response_tokens"])
        self.staleness_sum += float(metrics["async/staleness_mean"]) * n
        self.staleness_max = max(self.staleness_max, float(metrics["async/staleness_max"]))
        if "async/param_sync_s" in metrics:
            self.sync_seconds.append(float(metrics["async/param_sync_s"]))

    def finish(
        self, pipeline_metrics: dict[str, Any], counts: dict[str, Any], filter_details: Sequence[str] = ()
    ) -> None:
        self.final = dict(pipeline_metrics)
        self.counts = dict(counts)
        self.filter_details = list(filter_details)

    def reward_first_last(self, window: int = 3) -> tuple[float, float]:
        values = [r for _, r in self.rewards]
        if not values:
            return float("nan"), float("nan")
        return float(np.mean(values[:window])), float(np.mean(values[-window:]))

    @property
    def staleness_mean(self) -> float:
        return self.staleness_sum / self.samples if self.samples else 0.0

    def rates(self) -> tuple[float, float, float]:
        """``(samples/s, response tokens/s, wall seconds)`` of this process's part of the run."""
        elapsed = time.time() - self.started
        if elapsed <= 0:
            return 0.0, 0.0, elapsed
        return (
            (self.samples - self.resumed_samples) / elapsed,
            (self.tokens - self.resumed_tokens) / elapsed,
            elapsed,
        )

    def state_dict(self) -> dict[str, Any]:
        keep = ("rewards", "samples", "tokens", "staleness_max", "staleness_sum", "sync_seconds")
        return {k: getattr(self, k) for k in keep}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the run's counters; wall time restarts, so rates cover the resumed part only."""
        for key in ("rewards", "samples", "tokens", "staleness_max", "staleness_sum", "sync_seconds"):
            setattr(self, key, state[key])
        self.resumed_samples, self.resumed_tokens = self.samples, self.tokens

    def render(self) -> str:
        samples_per_s, tokens_per_s, elapsed = self.rates()
        first, last = self.reward_first_last()
        syncs = self.sync_seconds
        c = self.counts
        lines = [
            "=== rllm_fully_async run summary ===",
            f"steps: {len(self.rewards)}",
            f"prompts: drawn {c.get('drawn', 0)} = trained {c.get('trained', 0)} + filtered "
            f"{c.get('filtered', 0)} {c.get('filtered_by_reason', {})} + queued {c.get('queued', 0)} "
            f"+ in flight {c.get('in_flight', 0)}",
            f"reward (mean of first/last 3 steps): {first:.3f} -> {last:.3f}",
            f"samples/s: {samples_per_s:.2f}   response tokens/s: {tokens_per_s:.1f}   wall: {elapsed:.1f}s",
            f"trainer idle ratio: {self.final.get('async/trainer_idle_ratio', float('nan')):.3f}   "
            f"rollout idle ratio: {self.final.get('rollout/idle_ratio', float('nan')):.3f}",
            f"staleness mean/max: {self.staleness_mean:.2f}/{self.staleness_max:.0f}   "
            f"param syncs: {len(syncs)}, mean {np.mean(syncs) if syncs else 0.0:.3f}s",
        ]
        if self.filter_details:
            lines.append("last filtered prompts (why):")
            lines += [f"  {detail}" for detail in self.filter_details]
        return "\n".join(lines)
