# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The CPU default learns its task, fully-async and as the lock-step baseline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def run_default(tmp_path: Path, *overrides: str) -> list[dict]:
    metrics = tmp_path / "metrics.jsonl"
    env = {**os.environ, "VERL_FILE_LOGGER_PATH": str(metrics)}
    cmd = [sys.executable, "-m", "rllm_fully_async.main", "trainer.logger=[console,file]", *overrides]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "=== rllm_fully_async run summary ===" in proc.stdout
    return [json.loads(line)["data"] for line in metrics.read_text().splitlines()]


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_cpu_default_reward_rises_to_0_8(tmp_path):
    """`python -m rllm_fully_async.main` with no arguments: random-policy reward to >= 0.8."""
    steps = run_default(tmp_path)
    rewards = [m["reward/mean"] for m in steps]
    assert mean(rewards[:3]) < 0.2, f"the untrained policy should be near random: {rewards[:3]}"
    assert mean(rewards[-5:]) >= 0.8, f"reward did not reach 0.8: {[round(r, 2) for r in rewards]}"
    assert max(m["async/staleness_max"] for m in steps) >= 1  # it really ran off-policy


def test_sync_baseline_trains_the_same_task(tmp_path):
    steps = run_default(tmp_path, "async_training.mode=sync", "trainer.total_training_steps=30")
    rewards = [m["reward/mean"] for m in steps]
    assert all(m["async/staleness_max"] == 0 for m in steps), "lock-step training is on-policy"
    assert mean(rewards[-5:]) > mean(rewards[:5]) + 0.1, [round(r, 2) for r in rewards]
