# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""A whole run with a reward function that sometimes returns NaN: those prompts are filtered with the reason,
every optimizer step is taken on finite numbers, and the ledger counts only what was trained."""

from __future__ import annotations

import math
import os
import subprocess

import pandas as pd
import pytest
from test_e2e import NUM_PROMPTS, balanced, command, ledger, run_main, step_metrics, task  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow

NAN_SOMETIMES = """
import re
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    if extra_info["index"] % 5 == 0:
        return float("nan")
    digit = re.search(r"[0-9]", solution_str)
    return float(digit is not None and digit.group(0) == ground_truth)
"""


def test_a_reward_that_returns_nan_never_reaches_training(task, tmp_path):  # noqa: F811
    reward = tmp_path / "nan_reward.py"
    reward.write_text(NAN_SOMETIMES)
    proc = run_main(command(task, tmp_path, f"custom_reward_function.path={reward}"), tmp_path)
    nan_prompts = sum((1000 + i) % 5 == 0 for i in range(NUM_PROMPTS))
    counts = ledger(tmp_path)["counts"]
    assert counts["filtered_by_reason"] == {"invalid_reward": nan_prompts}, counts
    assert counts["trained"] == NUM_PROMPTS - nan_prompts and balanced(counts)
    trained = ledger(tmp_path)["trained_uids"]["0"]
    assert not [uid for uid in trained if int(uid) % 5 == 0], "a prompt with a NaN reward was trained"
    steps = step_metrics(tmp_path)
    assert steps and all(
        math.isfinite(m["actor/grad_norm"]) and math.isfinite(m["reward/mean"]) for m in steps
    )
    assert "reward function 'compute_score' returned the non-finite reward nan" in proc.stdout + proc.stderr


def test_a_run_that_trains_nothing_does_not_exit_0(task, tmp_path):  # noqa: F811
    """Eight prompts whose rewards are all NaN: each is filtered (too few for the executor's stop after many
    failures in a row), and the run ends with an error instead of exit 0 with nothing trained."""
    reward = tmp_path / "always_nan.py"
    reward.write_text("def compute_score(**kwargs):\n    return float('nan')\n")
    small = tmp_path / "small.parquet"
    pd.read_parquet(f"{task['root']}/train.parquet").head(8).to_parquet(small)
    cmd = command(task, tmp_path, f"custom_reward_function.path={reward}", f"data.train_files={small}")
    env = {**os.environ, "VERL_FILE_LOGGER_PATH": str(tmp_path / "metrics.jsonl")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=420, env=env, cwd=tmp_path)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "the run trained on no prompt" in proc.stderr and "'invalid_reward': 8" in proc.stderr, (
        proc.stderr[-3000:]
    )
