# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""An offline task that needs a tool: "3+4" is answered with a calculator call, then its result.

The 2-layer toy model cannot learn single-digit addition by itself (see ``task``), but it can learn to
copy: the question into a call ``<tool_call>3+4</tool_call>`` (the plain tag format of
``rollout.tools``; the toy tokenizer built with ``tool_tokens`` has the tags as single tokens, as
Qwen2.5's has), and the calculator's output into its answer. The reward is shaped so a random policy
gets signal from the first step:

    0.1  the reply opens a tool call
    0.1  it closes one (the tool ran)
    0.3  the first call's result is the right answer (the right operands)
    0.5  after the call, the final turn's first digit is the answer

Sums stay below 10, so every answer is one digit. ``rollout`` is the multi-turn rollout function with
the calculator (``async_training.rollout_fn=rllm_fully_async.toy.tool_task:rollout``).
"""

from __future__ import annotations

import ast
import operator
import os
import random
import re
from typing import Any

from rllm_fully_async.rollout.multi_turn import make_tool_rollout
from rllm_fully_async.rollout.tools import TOOL_CALL_START, Tool
from rllm_fully_async.toy.task import ensure_split_files

DATA_SOURCE = "toy_calculator"
_DIGIT = re.compile(r"[0-9]")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def calculator(expression: str) -> str:
    """Integer arithmetic with + - * (evaluated on the syntax tree, never with eval)."""

    def value(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"cannot compute {expression!r}")

    if len(expression) > 64:
        raise ValueError("expression too long")
    return str(value(ast.parse(expression.strip(), mode="eval").body))


CALCULATOR = Tool(
    name="calculator",
    fn=calculator,
    description="Compute an integer arithmetic expression with + - *",
    parameters={
        "type": "object",
        "properties": {"expression": {"type": "string", "description": "for example 3+4"}},
        "required": ["expression"],
    },
)

rollout = make_tool_rollout([CALCULATOR], max_turns=2)


def make_rows(
    num_prompts: int, seed: int, split: str = "train", index_offset: int = 0
) -> list[dict[str, Any]]:
    """``num_prompts`` rows "a+b" with a + b < 10, in verl's format, in a seeded order."""
    pairs = [(a, b) for a in range(10) for b in range(10) if a + b < 10]
    rng = random.Random(f"{DATA_SOURCE}/{split}/{seed}")
    return [
        {
            "data_source": DATA_SOURCE,
            "prompt": [{"role": "user", "content": f"{a}+{b}"}],
            "ability": "tool_use",
            "reward_model": {"style": "rule", "ground_truth": str(a + b)},
            "extra_info": {"index": index_offset + i, "split": split},
        }
        for i, (a, b) in enumerate(rng.choice(pairs) for _ in range(num_prompts))
    ]


def ensure_dataset(
    directory: str | os.PathLike, train_size: int = 1280, val_size: int = 64, seed: int = 0
) -> tuple[str, str]:
    """Train and validation parquet files under ``directory``, built unless already there."""
    return ensure_split_files(directory, DATA_SOURCE, make_rows, train_size, val_size, seed)


def compute_score(
    data_source: str, solution_str: str, ground_truth: str, extra_info: dict | None = None, **kwargs: Any
) -> dict[str, float]:
    """The shaped reward above; ``extra_info`` carries the multi-turn rollout's ``tool_calls`` and
    ``final_response``. Returns the parts too (they are logged per sample)."""
    info = extra_info or {}
    calls = info.get("tool_calls") or []
    opened = float(TOOL_CALL_START in solution_str)
    ran = float(bool(calls))
    operands = float(bool(calls) and calls[0]["output"] == ground_truth)
    first = _DIGIT.search(info.get("final_response", "")) if calls else None
    answered = float(first is not None and first.group(0) == ground_truth)
    score = 0.1 * opened + 0.1 * ran + 0.3 * operands + 0.5 * answered
    return {"score": score, "acc": answered, "tool_called": ran, "operands_right": operands}
