# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""A starting policy that is sometimes right: the toy model after a short supervised warm-start.

RL fine-tunes pretrained models, which already solve part of a task; a randomly initialised toy model
solves none of the digit tasks, and RL from there mostly measures luck. A few dozen supervised steps
on examples from their own split (never the RL prompts) give a policy that gets some digits right, as a
pretrained model would, and leave most of the climb to RL. Deterministic per (seed, steps, operation,
length): one torch thread, seeded data and initialisation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rllm_fully_async.toy import digits_task
from rllm_fully_async.toy import model as toy_model

DEFAULT_STEPS = 20
BATCH_SIZE = 32
LEARNING_RATE = 3e-3


def _batch(tokenizer, rows: list[dict]) -> dict:
    """Right-padded prompt + answer + EOS; the loss covers the answer and EOS only."""
    import torch

    sequences, prompt_lengths = [], []
    for row in rows:
        prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=True, add_generation_prompt=True)
        reply = tokenizer.encode(row["reward_model"]["ground_truth"]) + [tokenizer.eos_token_id]
        sequences.append(prompt + reply)
        prompt_lengths.append(len(prompt))
    width = max(map(len, sequences))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    for i, start in enumerate(prompt_lengths):
        labels[i, :start] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def warm_start(
    out: str | os.PathLike,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    length: int = digits_task.DEFAULT_LENGTH,
    operation: str = digits_task.DEFAULT_OPERATION,
) -> Path:
    """Build the toy model, train it ``steps`` supervised steps on the digit task, and save it to ``out``."""
    import torch

    out = Path(out)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-for-bit the same weights on any machine with the same torch
    try:
        tokenizer = toy_model.build_tokenizer()
        model = toy_model.build_model(tokenizer, seed=seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
        rows = digits_task.make_rows(max(1, steps) * BATCH_SIZE, seed, "warm_start", length, operation)
        model.train()
        for step in range(steps):
            loss = model(**_batch(tokenizer, rows[step * BATCH_SIZE : (step + 1) * BATCH_SIZE])).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    model.save_pretrained(out, safe_serialization=True)
    marker = {"seed": seed, "warm_start_steps": steps, "operation": operation, "length": length}
    (out / "toy_model.json").write_text(json.dumps({**marker, **toy_model.DEFAULT_MODEL_SHAPE}) + "\n")
    return out


def ensure_warm_started(
    out: str | os.PathLike,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    length: int = digits_task.DEFAULT_LENGTH,
    operation: str = digits_task.DEFAULT_OPERATION,
) -> Path:
    """The warm-started model at ``out``, trained unless one with these settings is already there."""
    out = Path(out)
    marker = out / "toy_model.json"
    wanted = {"seed": seed, "warm_start_steps": steps, "operation": operation, "length": length}
    if marker.exists() and (out / "model.safetensors").exists():
        saved = json.loads(marker.read_text())
        if {key: saved.get(key) for key in wanted} == wanted:
            return out
    return warm_start(out, steps=steps, seed=seed, length=length, operation=operation)
