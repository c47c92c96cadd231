# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The digit tasks: verl-format rows, a graded reward that only the exact answer maxes, and a warm-started
policy that is sometimes right."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from rllm_fully_async.toy import digits_task, warm_start


@pytest.mark.parametrize(
    ("operation", "answer"),
    [("copy", lambda d: d), ("reverse", lambda d: d[::-1]), ("sort", lambda d: "".join(sorted(d)))],
)
def test_rows_are_in_verl_format_with_the_operations_answer(operation, answer):
    rows = digits_task.make_rows(20, seed=3, length=5, operation=operation)
    assert [row["extra_info"] for row in rows] == [{"index": i, "split": "train"} for i in range(20)]
    for row in rows:
        (message,) = row["prompt"]
        digits = message["content"].removeprefix(f"{operation}: ")
        assert message == {"role": "user", "content": f"{operation}: {digits}"}
        assert len(digits) == 5 and set(digits) <= set("123456789")
        assert row["reward_model"] == {"style": "rule", "ground_truth": answer(digits)}
        assert row["data_source"] == digits_task.DATA_SOURCE
    # the same digits whatever the operation: tasks differ only in what is asked
    first_copy = digits_task.make_rows(1, seed=3)[0]["prompt"][0]["content"]
    assert rows[0]["prompt"][0]["content"][-5:] == first_copy[-5:]


def test_unknown_operation_is_refused():
    with pytest.raises(ValueError, match="copy"):
        digits_task.make_rows(3, seed=0, operation="add")


def test_dataset_is_deterministic_and_splits_differ(tmp_path):
    train, val = digits_task.ensure_dataset(tmp_path / "a", train_size=40, val_size=10, seed=1)
    same, _ = digits_task.ensure_dataset(tmp_path / "b", train_size=40, val_size=10, seed=1)
    other, _ = digits_task.ensure_dataset(tmp_path / "c", train_size=40, val_size=10, seed=2)
    sort, _ = digits_task.ensure_dataset(tmp_path / "a", train_size=40, val_size=10, seed=1, operation="sort")
    assert pd.read_parquet(train).equals(pd.read_parquet(same))
    assert not pd.read_parquet(train).equals(pd.read_parquet(other))
    assert sort != train  # another operation, another file
    assert [info["index"] for info in pd.read_parquet(val)["extra_info"]] == list(range(40, 50))


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("11359", 1.0),
        ("11358", 0.8),  # one digit wrong
        ("The answer: 1 1 3 5 9.", 1.0),  # digits are read in order, whatever surrounds them
        ("113", 0.6),  # three of five, the missing two count as wrong
        ("1135999", 5 / 7),  # all five right, two surplus digits charged
        ("95311", 0.2),  # only the middle digit in place
        ("no digits", 0.0),
        ("", 0.0),
    ],
)
def test_reward_is_partial_credit_per_digit(reply, score):
    assert digits_task.compute_score(digits_task.DATA_SOURCE, reply, "11359") == pytest.approx(score)


def test_reward_rejects_a_malformed_answer_naming_the_fix():
    with pytest.raises(ValueError, match="ensure_dataset"):
        digits_task.compute_score(digits_task.DATA_SOURCE, "123", "1230")


def test_answer_digits_are_one_token_each():
    """Each answer digit is one policy action (digits 0-9 would merge "01" into one token)."""
    from rllm_fully_async.toy.model import build_tokenizer

    tokenizer = build_tokenizer()
    for row in digits_task.make_rows(50, seed=0):
        answer = row["reward_model"]["ground_truth"]
        assert [tokenizer.decode([t]) for t in tokenizer.encode(answer)] == list(answer)


def test_warm_start_is_deterministic_and_sometimes_right(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    first = warm_start.ensure_warm_started(tmp_path / "a", steps=warm_start.DEFAULT_STEPS)
    second = warm_start.warm_start(tmp_path / "b", steps=warm_start.DEFAULT_STEPS)
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert warm_start.ensure_warm_started(first) == first  # reused, not retrained
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp

    tokenizer = AutoTokenizer.from_pretrained(first)
    model = AutoModelForCausalLM.from_pretrained(first)
    rows = digits_task.make_rows(64, seed=0, split="val")
    inputs = tokenizer.apply_chat_template(
        [row["prompt"] for row in rows], add_generation_prompt=True, padding=True, return_tensors="pt",
        return_dict=True,
    )  # fmt: skip
    inputs.pop("token_type_ids", None)
    torch.manual_seed(0)
    out = model.generate(**inputs, max_new_tokens=8, do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
    replies = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    scores = [
        digits_task.compute_score(digits_task.DATA_SOURCE, reply, row["reward_model"]["ground_truth"])
        for reply, row in zip(replies, rows, strict=True)
    ]
    mean = sum(scores) / len(scores)
    # Sampling at temperature 1 it gets some digits right (measured 0.15 for copying 5 digits), far from
    # solving the task; the untrained model scores ~0.01.
    assert 0.07 < mean < 0.5, mean
