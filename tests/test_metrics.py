# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The per-step async metrics and the end-of-run summary, including across a resume."""

from __future__ import annotations

import time

import pytest
import torch
from verl import DataProto

from rllm_fully_async.rollout.trajectory import Sample, TrajectoryGroup
from rllm_fully_async.trainer.metrics import RunSummary, async_metrics


def _step(samples: int, staleness_mean: float, reward: float = 0.5, sync_s: float | None = None) -> dict:
    metrics = {
        "reward/mean": reward,
        "async/batch_samples": samples,
        "async/batch_response_tokens": samples * 10,
        "async/staleness_mean": staleness_mean,
        "async/staleness_max": staleness_mean,
    }
    if sync_s is not None:
        metrics["async/param_sync_s"] = sync_s
    return metrics


def test_summary_accumulates_steps() -> None:
    summary = RunSummary()
    summary.add_step(1, _step(8, 0.0, reward=0.1, sync_s=0.2))
    summary.add_step(2, _step(8, 2.0, reward=0.3))
    summary.add_step(3, _step(16, 1.0, reward=0.5, sync_s=0.4))
    summary.add_step(4, _step(16, 1.0, reward=0.9, sync_s=0.4))
    assert (summary.samples, summary.tokens, summary.staleness_max) == (48, 480, 2.0)
    assert summary.staleness_mean == pytest.approx((0 * 8 + 2 * 8 + 1 * 16 + 1 * 16) / 48)
    assert summary.reward_first_last() == pytest.approx((0.3, (0.3 + 0.5 + 0.9) / 3))
    assert summary.sync_seconds == [0.2, 0.4, 0.4]
    pipeline = {"async/trainer_idle_ratio": 0.25, "rollout/idle_ratio": 0.5}
    summary.finish(
        pipeline, {"drawn": 6, "trained": 6}, ["rollout_failed (uid=3, epoch=0): RuntimeError: boom"]
    )
    text = summary.render()
    assert text.endswith(
        "last filtered prompts (why):\n  rollout_failed (uid=3, epoch=0): RuntimeError: boom"
    )
    assert "steps: 4" in text and "staleness mean/max: 1.00/2" in text and "idle ratio: 0.250" in text


def test_summary_staleness_mean_survives_a_resume() -> None:
    """Before the fix the resumed summary kept the staleness sum but zeroed the samples it is a mean over."""
    before = RunSummary()
    before.add_step(1, _step(10, 2.0))
    resumed = RunSummary()
    resumed.load_state_dict(before.state_dict())
    resumed.add_step(2, _step(10, 0.0))
    assert "staleness mean/max: 1.00/2" in resumed.render()
    assert resumed.staleness_mean == pytest.approx(1.0)
    assert [step for step, _ in resumed.rewards] == [1, 2]


def test_summary_rates_cover_only_the_resumed_part() -> None:
    before = RunSummary()
    before.add_step(1, _step(1000, 0.0))
    resumed = RunSummary(started=time.time() - 10.0)
    resumed.load_state_dict(before.state_dict())
    resumed.add_step(2, _step(20, 0.0))
    samples_per_s, tokens_per_s, elapsed = resumed.rates()
    assert samples_per_s == pytest.approx(20 / elapsed) and tokens_per_s == pytest.approx(200 / elapsed)
    assert resumed.samples == 1020  # the run's total is kept


def _sample(low: int, high: int, reward: float, aborts: int = 0, finish: str = "stop") -> Sample:
    return Sample([1, 2], [3, 4, 5], [-0.1] * 3, reward, finish, low, high, num_aborts=aborts)


def test_async_metrics_staleness_span_and_aborts() -> None:
    groups = [
        TrajectoryGroup(
            "a",
            0,
            {},
            [_sample(3, 3, 1.0), _sample(2, 3, 0.0, aborts=1)],
            2,
            created_at=10.0,
            finished_at=14.0,
        ),
        TrajectoryGroup(
            "b",
            0,
            {},
            [_sample(1, 1, 1.0, finish="length"), _sample(3, 3, 0.0)],
            1,
            created_at=10.0,
            finished_at=12.0,
        ),
    ]
    batch = DataProto.from_dict(tensors={"response_mask": torch.ones(4, 3, dtype=torch.long)})
    m = async_metrics(groups, batch, trainer_version=3)
    assert m["async/staleness_mean"] == pytest.approx((0 + 1 + 2 + 0) / 4) and m["async/staleness_max"] == 2
    assert m["async/partial_rollout_span_mean"] == pytest.approx(0.25)
    assert m["async/aborted_fraction"] == pytest.approx(0.25)
    assert "async/partial_rollout_fraction" not in m  # that name means "spans versions", from the executor
    assert [m[f"async/staleness_hist/{v}"] for v in (0, 1, 2)] == [2, 1, 1]
    assert (m["async/group_latency_s_mean"], m["async/group_latency_s_max"]) == (3.0, 4.0)
    assert m["async/launch_lag_mean"] == pytest.approx(((3 - 2) + (3 - 1)) / 2)
    assert (m["async/finish_reason/stop"], m["async/finish_reason/length"]) == (3, 1)
    assert (m["async/batch_samples"], m["async/batch_response_tokens"], m["reward/mean"]) == (4, 12, 0.5)
