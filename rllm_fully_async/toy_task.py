# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The CPU default's synthetic verifiable task: repeat the digit named in the prompt.

"Repeat the digit 7." is answered correctly when the first digit in the response is 7. An untrained
toy model hits it by chance about 5% of the time (it must produce a digit, and the right one), so
GRPO has signal from the first step; the right answer depends on the prompt, so no constant output
scores above 10%. Rows are written in verl's parquet format and scored with verl's
``compute_score`` signature, so the task runs through the same code path as real data.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

DATA_SOURCE = "toy_repeat_digit"
PROMPT_TEMPLATE = "Repeat the digit {digit}."
_FIRST_DIGIT = re.compile(r"[0-9]")


def make_rows(
    num_prompts: int, seed: int, split: str = "train", index_offset: int = 0
) -> list[dict[str, Any]]:
    """``num_prompts`` rows in verl's format; ``extra_info.index`` is the stable prompt id."""
    rng = random.Random(f"{seed}-{split}")
    rows = []
    for i in range(num_prompts):
        digit = rng.randrange(10)
        rows.append(
            {
                "data_source": DATA_SOURCE,
                "prompt": [{"role": "user", "content": PROMPT_TEMPLATE.format(digit=digit)}],
                "ability": "copy",
                "reward_model": {"style": "rule", "ground_truth": str(digit)},
                "extra_info": {"index": index_offset + i, "split": split},
            }
        )
    return rows


def write_parquet(path: str | os.PathLike, rows: list[dict[str, Any]]) -> str:
    """Write ``rows`` atomically (a crash never leaves a half-written dataset behind)."""
    import pandas as pd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pd.DataFrame(rows).to_parquet(tmp)
    os.replace(tmp, path)
    return str(path)


def ensure_dataset(
    directory: str | os.PathLike, train_size: int = 1280, val_size: int = 64, seed: int = 0
) -> tuple[str, str]:
    """Train and validation parquet files under ``directory``, built unless already there."""
    directory = Path(directory)
    train = directory / f"train_{train_size}_seed{seed}.parquet"
    val = directory / f"val_{val_size}_seed{seed}.parquet"
    if not train.exists():
        write_parquet(train, make_rows(train_size, seed, "train"))
    if not val.exists():
        write_parquet(val, make_rows(val_size, seed, "val", index_offset=train_size))
    return str(train), str(val)


def compute_score(
    data_source: str, solution_str: str, ground_truth: str, extra_info: dict | None = None
) -> float:
    """1.0 when the first digit of the response is the requested one, else 0.0."""
    first = _FIRST_DIGIT.search(solution_str)
    return float(first is not None and first.group(0) == str(ground_truth))
