# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The CPU default's synthetic verifiable task: "Say 7" is answered when the reply's first digit is 7.

The untrained toy model puts a digit somewhere in its first 8 tokens in roughly a third of its
replies, and the right one a tenth of those times: the random policy scores ~0.03-0.05, so GRPO has
signal from the first step. Every digit is equally frequent, so a constant reply scores 0.1 and a
mean reward of 0.8 means the policy learned the prompt-to-answer mapping. Measured alternatives:
single-digit addition is out of reach (the 2-layer toy model does not learn addition mod 10 even by
supervised training in 400 steps), and with the wordier "Repeat the digit 7." the CPU default run
stalls near 0.5 where "Say 7" passes 0.9 (the digit is a larger share of a shorter prompt).

There are only 10 distinct prompts, so validation checks the learned mapping, not generalisation.
Rows follow verl's RL parquet format, so ``RLHFDataset`` loads them, and ``compute_score`` has the
signature of verl's ``custom_reward_function``.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

DATA_SOURCE = "toy_say_digit"
PROMPT_TEMPLATE = "Say {digit}"
_FIRST_DIGIT = re.compile(r"[0-9]")


def make_rows(
    num_prompts: int, seed: int, split: str = "train", index_offset: int = 0
) -> list[dict[str, Any]]:
    """``num_prompts`` rows in verl's format, each digit equally often (up to one), in a seeded order.

    ``extra_info.index`` (``index_offset + i``) is the prompt's stable id.
    """
    if num_prompts < 1:
        raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
    digits = [i % 10 for i in range(num_prompts)]
    random.Random(f"{DATA_SOURCE}/{split}/{seed}").shuffle(digits)
    return [
        {
            "data_source": DATA_SOURCE,
            "prompt": [{"role": "user", "content": PROMPT_TEMPLATE.format(digit=digit)}],
            "ability": "copy",
            "reward_model": {"style": "rule", "ground_truth": str(digit)},
            "extra_info": {"index": index_offset + i, "split": split},
        }
        for i, digit in enumerate(digits)
    ]


def write_parquet(path: str | os.PathLike, rows: list[dict[str, Any]]) -> str:
    """Write ``rows`` atomically: a crash or a concurrent reader never sees a half-written file."""
    import pandas as pd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pd.DataFrame(rows).to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return str(path)


def ensure_dataset(
    directory: str | os.PathLike, train_size: int = 1280, val_size: int = 64, seed: int = 0
) -> tuple[str, str]:
    """Train and validation parquet files under ``directory``, built unless already there.

    Names carry the task, size and seed, so a changed setting never reuses a stale file. Validation
    ids continue after the training ids.
    """
    return ensure_split_files(directory, DATA_SOURCE, make_rows, train_size, val_size, seed)


def ensure_split_files(
    directory: str | os.PathLike,
    stem: str,
    make_rows: Callable[..., list[dict[str, Any]]],
    train_size: int,
    val_size: int,
    seed: int,
) -> tuple[str, str]:
    """``{stem}_{train,val}_{size}_seed{seed}.parquet`` under ``directory``, written by ``make_rows(size,
    seed, split, index_offset=...)`` unless already there; validation ids continue after training ids."""
    directory = Path(directory)
    train = directory / f"{stem}_train_{train_size}_seed{seed}.parquet"
    val = directory / f"{stem}_val_{val_size}_seed{seed}.parquet"
    if not train.exists():
        write_parquet(train, make_rows(train_size, seed, "train"))
    if not val.exists():
        write_parquet(val, make_rows(val_size, seed, "val", index_offset=train_size))
    return str(train), str(val)


def compute_score(
    data_source: str, solution_str: str, ground_truth: str, extra_info: dict | None = None, **kwargs: Any
) -> float:
    """1.0 when the first digit of the reply is ``ground_truth``, else 0.0.

    Rows of any other data source go to verl's ``default_compute_score``, so a run that mixes this
    task with real data can keep this function as its ``custom_reward_function``.
    """
    if data_source != DATA_SOURCE:
        from verl.utils.reward_score import default_compute_score

        return default_compute_score(data_source, solution_str, ground_truth, extra_info, **kwargs)
    if not (isinstance(ground_truth, str) and _FIRST_DIGIT.fullmatch(ground_truth)):
        raise ValueError(
            f"{DATA_SOURCE}: reward_model.ground_truth must be one digit '0'-'9', got {ground_truth!r}; "
            "rebuild the data with rllm_fully_async.toy.task.ensure_dataset"
        )
    first = _FIRST_DIGIT.search(solution_str)
    return float(first is not None and first.group(0) == ground_truth)
