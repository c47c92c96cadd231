# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""A toy model that already knows the calculator protocol, for tests of multi-turn rollouts.

The random toy model almost never closes a tool call, so tests that need calls take the tool-token toy
model and teach it, by a few seconds of supervised training, to answer "a+b" with
``<tool_call>a+b</tool_call>`` and then the calculator's result. A real checkpoint, served by the real
CPU engine.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rllm_fully_async.rollout.multi_turn import tool_prompt_ids, tool_turn_ids
from rllm_fully_async.toy import model as toy_model
from rllm_fully_async.toy.tool_task import CALCULATOR


def conversations(tokenizer) -> list[tuple[list[int], list[int], list[int]]]:
    """(input ids, loss mask, prompt) of every "a+b" conversation with its call and answer."""
    call_open, call_close = tokenizer.convert_tokens_to_ids(["<tool_call>", "</tool_call>"])
    out = []
    for a in range(10):
        for b in range(10 - a):
            prompt = [{"role": "user", "content": f"{a}+{b}"}]
            prompt_ids = tool_prompt_ids(tokenizer, prompt, [CALCULATOR])
            call = [call_open, *tokenizer.encode(f"{a}+{b}", add_special_tokens=False), call_close]
            tool = tool_turn_ids(tokenizer, prompt, str(a + b), turn_ended_with_eos=False)
            answer = [*tokenizer.encode(str(a + b), add_special_tokens=False), tokenizer.eos_token_id]
            ids = prompt_ids + call + tool + answer
            mask = [0] * len(prompt_ids) + [1] * len(call) + [0] * len(tool) + [1] * len(answer)
            out.append((ids, mask, prompt))
    return out


def build_tool_model(out: Path, steps: int = 100) -> Path:
    """The tool-token toy model trained to use the calculator; written to ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    toy_model.build(out, seed=0, tool_tokens=True)
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    data = conversations(tokenizer)
    width = max(len(ids) for ids, _, _ in data)
    ids = torch.full((len(data), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(data), width))
    for i, (row, row_mask, _) in enumerate(data):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = torch.tensor(row_mask, dtype=torch.float32)
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(steps):
        logits = model(ids).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        loss = (loss * mask[:, 1:]).sum() / mask[:, 1:].sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(out, safe_serialization=True)
    return out
