# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The benchmark's task: the toy model at a chosen size, long-tailed response lengths, a graded reward."""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rllm_fully_async.bench.settings import BenchSettings
from rllm_fully_async.rollout.rollout_fn import single_turn_chat
from rllm_fully_async.rollout.trajectory import Sample

# ------------------------------------------------------------------------------------------------ the task


def long_tail_lengths(count: int, median: float, sigma: float, low: int, high: int, seed: int) -> list[int]:
    """Response lengths shaped like reasoning traces: lognormal (heavy right tail), clipped to [low, high]."""
    raw = median * np.exp(sigma * np.random.default_rng(seed).standard_normal(count))
    return np.clip(np.round(raw), low, high).astype(int).tolist()


def digit_fraction(data_source: str, solution_str: str, ground_truth: str, extra_info: Any = None) -> float:
    """Reward: the fraction of response characters that are digits. Dense and quickly learnable, so a short
    run shows training progress; the benchmark measures speed, the reward only shows that learning happens."""
    return sum(c in string.digits for c in solution_str) / max(1, len(solution_str))


async def long_tail_rollout(client: Any, tokenizer: Any, *, sampling_params: dict, extra_info: dict,
                            reward_fn: Any = None, **row: Any) -> Sample:  # fmt: skip
    """The default single-turn rollout, generating exactly the row's ``max_new_tokens`` (``ignore_eos``),
    scored by :func:`digit_fraction` instead of the configured reward function."""
    params = {**sampling_params, "max_new_tokens": int(extra_info["max_new_tokens"]), "ignore_eos": True}
    return await single_turn_chat(
        client, tokenizer, sampling_params=params, extra_info=extra_info, reward_fn=digit_fraction, **row
    )


@dataclass
class Task:
    model_path: str
    train_file: str
    lengths: list[int]


def model_shape(hidden: int, layers: int, intermediate: int = 0, heads: int = 0, kv_heads: int = 0) -> dict:
    heads = heads or max(4, hidden // 32)
    return {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": intermediate or 4 * hidden,
        "num_key_value_heads": kv_heads or max(1, heads // 2),
    }


def build_task(settings: BenchSettings) -> Task:
    """The toy model at the chosen size and a verl-format dataset whose rows carry their response length."""
    import pandas as pd

    from rllm_fully_async.toy import model as toy_model

    root = Path(settings.out) / "task"
    s = settings
    shape = model_shape(s.hidden_size, s.num_layers)
    model = s.model_path or toy_model.build(root / "model", seed=0, **shape)
    lengths = long_tail_lengths(
        s.num_prompts, s.length_median, s.length_sigma, s.length_min, s.length_max, s.seed
    )
    rows = [
        {
            "data_source": "bench_digits",
            "prompt": [{"role": "user", "content": f"What is {i % 5}+{i // 5 % 5}? Answer with digits."}],
            "reward_model": {"style": "rule", "ground_truth": str(i % 5 + i // 5 % 5)},
            "extra_info": {"index": i, "max_new_tokens": length},
        }
        for i, length in enumerate(lengths)
    ]
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(root / "train.parquet")
    return Task(str(model), str(root / "train.parquet"), lengths)
