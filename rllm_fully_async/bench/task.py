# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The benchmarks' tasks: the toy model at a chosen size, long-tailed response lengths, a graded reward; and
for the learning benchmark, the digit task with a long-tailed filler after each answer."""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rllm_fully_async.bench.settings import BenchSettings
from rllm_fully_async.rollout.rollout_fn import generate_reply, score_response, single_turn_chat
from rllm_fully_async.rollout.trajectory import Sample, SampleProgress

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


async def answer_then_filler(client: Any, tokenizer: Any, *, prompt: list[dict], data_source: str,
                             reward_model: dict | None, sampling_params: dict, reward_fn: Any,
                             extra_info: dict, partial_rollout: bool = True,
                             progress: SampleProgress | None = None, **_: Any) -> Sample:  # fmt: skip
    """A digit-task answer, then ``extra_info.filler_tokens`` more tokens generated (``ignore_eos``).

    Reasoning models spend most of their compute on long replies of which only a little decides the
    reward. The filler stands in for that: it costs generation and training compute like any reply, but
    carries no credit (the reward function sees the answer's tokens only) and no loss (mask 0), so the
    learning problem is the short task's while a step's time is dominated by long, long-tailed generation.
    The answer comes first, so its tokens are the oldest of a sample that spans weight syncs.
    """
    answer_tokens = len((reward_model or {}).get("ground_truth") or "")
    total = answer_tokens + int(extra_info.get("filler_tokens", 0))
    params = {**sampling_params, "max_new_tokens": total, "ignore_eos": True}
    prompt_ids, out = await generate_reply(client, tokenizer, prompt, params, partial_rollout, progress)
    answer = tokenizer.decode(out.token_ids[:answer_tokens], skip_special_tokens=True)
    score, extra = await score_response(reward_fn, data_source, answer, reward_model, extra_info)
    n = len(out.token_ids)
    return Sample(prompt_ids=prompt_ids, response_ids=list(out.token_ids),
                  response_logprobs=list(out.logprobs), reward=score, finish_reason=out.finish_reason,
                  min_version=out.min_version, max_version=out.max_version, num_aborts=out.num_aborts,
                  response_mask=[1] * min(n, answer_tokens) + [0] * max(0, n - answer_tokens),
                  extra=extra)  # fmt: skip


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
