# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Harder offline tasks for learning-speed studies: copy, reverse or sort a string of digits
("copy: 93151" -> "93151", "reverse: 93151" -> "15139", "sort: 93151" -> "11359").

The "Say 7" task of the CPU default is solved in a few dozen steps; comparing how fast lock-step and
fully-async training *learn* needs a task where RL takes on the order of a hundred steps to approach its
best reward, with a reward graded finely enough to climb. Here the reward is partial credit per digit: the
share of positions where the reply's digits match the answer, so one more digit in place is one more step
up. A reply with more digits than the answer is charged for the surplus, so that padding with digits
never pays.

Digits are 1-9: the toy tokenizer merges "01" into one token, and every other digit string it splits
into one token per digit, so each answer digit is one policy action. Rows follow verl's RL parquet format;
``compute_score`` has the signature of verl's ``custom_reward_function``. A policy that is sometimes right
from the start comes from :mod:`rllm_fully_async.toy.warm_start`.
"""

from __future__ import annotations

import functools
import os
import random
from typing import Any

from rllm_fully_async.toy.task import ensure_split_files

DATA_SOURCE = "toy_digits"
DIGITS = "123456789"
OPERATIONS = {"copy": lambda d: d, "reverse": lambda d: d[::-1], "sort": lambda d: "".join(sorted(d))}
DEFAULT_OPERATION = "copy"
DEFAULT_LENGTH = 5


def _check(operation: str) -> None:
    if operation not in OPERATIONS:
        raise ValueError(f"operation must be one of {sorted(OPERATIONS)}, got {operation!r}")


def make_rows(
    num_prompts: int,
    seed: int,
    split: str = "train",
    length: int = DEFAULT_LENGTH,
    operation: str = DEFAULT_OPERATION,
    index_offset: int = 0,
) -> list[dict[str, Any]]:
    """``num_prompts`` rows of ``length`` random digits each, drawn from a stream seeded by split and seed.

    ``extra_info.index`` (``index_offset + i``) is the prompt's stable id.
    """
    _check(operation)
    if num_prompts < 1 or length < 1:
        raise ValueError(f"num_prompts and length must be >= 1, got {num_prompts} and {length}")
    rng = random.Random(f"{DATA_SOURCE}/{split}/{seed}/{length}")
    rows = []
    for i in range(num_prompts):
        digits = "".join(rng.choice(DIGITS) for _ in range(length))
        rows.append(
            {
                "data_source": DATA_SOURCE,
                "prompt": [{"role": "user", "content": f"{operation}: {digits}"}],
                "ability": operation,
                "reward_model": {"style": "rule", "ground_truth": OPERATIONS[operation](digits)},
                "extra_info": {"index": index_offset + i, "split": split},
            }
        )
    return rows


def ensure_dataset(
    directory: str | os.PathLike,
    train_size: int = 2048,
    val_size: int = 64,
    seed: int = 0,
    length: int = DEFAULT_LENGTH,
    operation: str = DEFAULT_OPERATION,
) -> tuple[str, str]:
    """Train and validation parquet files under ``directory``, built unless already there.

    Names carry the operation, length, size and seed, so a changed setting never reuses a stale file.
    """
    _check(operation)
    rows = functools.partial(_rows_for, length=length, operation=operation)
    stem = f"{DATA_SOURCE}_{operation}{length}"
    return ensure_split_files(directory, stem, rows, train_size, val_size, seed)


def _rows_for(
    num_prompts: int, seed: int, split: str, index_offset: int = 0, *, length: int, operation: str
) -> list[dict[str, Any]]:
    return make_rows(num_prompts, seed, split, length, operation, index_offset=index_offset)


def digit_credit(reply: str, ground_truth: str) -> float:
    """Correct positions over ``max(len(answer), digits in the reply)``: 1.0 only for the exact answer."""
    digits = [c for c in reply if c.isdigit()]
    correct = sum(a == b for a, b in zip(digits, ground_truth, strict=False))
    return correct / max(len(ground_truth), len(digits))


def compute_score(
    data_source: str, solution_str: str, ground_truth: str, extra_info: dict | None = None, **kwargs: Any
) -> float:
    """Partial credit per digit (:func:`digit_credit`); other data sources go to verl's default scorer."""
    if data_source != DATA_SOURCE:
        from verl.utils.reward_score import default_compute_score

        return default_compute_score(data_source, solution_str, ground_truth, extra_info, **kwargs)
    if not (isinstance(ground_truth, str) and ground_truth and set(ground_truth) <= set(DIGITS)):
        raise ValueError(
            f"{DATA_SOURCE}: reward_model.ground_truth must be a non-empty string of digits 1-9, got "
            f"{ground_truth!r}; rebuild the data with rllm_fully_async.toy.digits_task.ensure_dataset"
        )
    return digit_credit(solution_str, ground_truth)
