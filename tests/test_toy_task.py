# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The toy task: verl-format rows that verl's own dataset loads, a deterministic split, an honest reward."""

from __future__ import annotations

import os
from collections import Counter

import pandas as pd
import pytest
from omegaconf import OmegaConf

from rllm_fully_async.toy import task as toy_task


def test_rows_are_in_verl_format_and_balanced():
    rows = toy_task.make_rows(40, seed=3)
    assert [row["extra_info"] for row in rows] == [{"index": i, "split": "train"} for i in range(40)]
    for row in rows:
        assert set(row) == {"data_source", "prompt", "ability", "reward_model", "extra_info"}
        assert row["data_source"] == toy_task.DATA_SOURCE
        (message,) = row["prompt"]
        digit = row["reward_model"]["ground_truth"]
        assert message == {"role": "user", "content": f"Say {digit}"}
        assert row["reward_model"]["style"] == "rule"
    # Every digit equally often: a constant answer scores exactly 0.1.
    assert Counter(row["reward_model"]["ground_truth"] for row in rows) == {str(d): 4 for d in range(10)}


def _answers(path: str) -> list[str]:
    return [rm["ground_truth"] for rm in pd.read_parquet(path)["reward_model"]]


def _ids(path: str) -> list[int]:
    return [info["index"] for info in pd.read_parquet(path)["extra_info"]]


def test_dataset_is_deterministic_per_seed(tmp_path):
    train, val = toy_task.ensure_dataset(tmp_path / "a", train_size=50, val_size=20, seed=1)
    same_train, same_val = toy_task.ensure_dataset(tmp_path / "b", train_size=50, val_size=20, seed=1)
    other_train, _ = toy_task.ensure_dataset(tmp_path / "c", train_size=50, val_size=20, seed=2)
    assert pd.read_parquet(train).equals(pd.read_parquet(same_train))
    assert pd.read_parquet(val).equals(pd.read_parquet(same_val))
    assert _answers(train) != _answers(other_train)
    assert _answers(val) != _answers(train)[:20]  # the splits are drawn independently
    assert _ids(train) == list(range(50)) and _ids(val) == list(range(50, 70))  # ids never collide


def test_ensure_dataset_reuses_existing_files(tmp_path):
    paths = toy_task.ensure_dataset(tmp_path, train_size=30, val_size=10)
    written = [os.stat(path).st_mtime_ns for path in paths]
    assert toy_task.ensure_dataset(tmp_path, train_size=30, val_size=10) == paths
    assert [os.stat(path).st_mtime_ns for path in paths] == written
    assert toy_task.ensure_dataset(tmp_path, train_size=31, val_size=10)[0] != paths[0]  # new size, new file


def test_verl_rlhf_dataset_loads_the_rows(tmp_path, toy_model_dir):
    from transformers import AutoTokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    tokenizer = AutoTokenizer.from_pretrained(toy_model_dir)
    train, _ = toy_task.ensure_dataset(tmp_path, train_size=20, val_size=10)
    config = OmegaConf.create(
        {"max_prompt_length": 16, "filter_overlong_prompts": True, "filter_overlong_prompts_workers": 1}
    )
    dataset = RLHFDataset(train, tokenizer, config)
    assert len(dataset) == 20  # no prompt is over 16 tokens
    item = dataset[7]
    assert item["data_source"] == toy_task.DATA_SOURCE and item["index"] == 7
    prompt_ids = tokenizer.apply_chat_template(item["raw_prompt"], add_generation_prompt=True, tokenize=True)
    digit = item["reward_model"]["ground_truth"]
    assert tokenizer.decode(prompt_ids).endswith(f"Say {digit}<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("7", 1.0),
        (" 7<|im_end|>", 1.0),
        ("it is 7, not 3", 1.0),
        ("xk7 3", 1.0),
        ("3 7", 0.0),  # only the first digit counts: listing every digit earns nothing
        ("0123456789", 0.0),
        ("seven", 0.0),
        ("", 0.0),
    ],
)
def test_reward_is_the_first_digit(reply, score):
    assert toy_task.compute_score(toy_task.DATA_SOURCE, reply, "7") == score


def test_reward_rejects_a_malformed_ground_truth():
    with pytest.raises(ValueError, match="ground_truth must be one digit"):
        toy_task.compute_score(toy_task.DATA_SOURCE, "7", "17")


def test_reward_hands_other_data_sources_to_verl():
    reply = "Let me think. #### 42"
    assert toy_task.compute_score("openai/gsm8k", reply, "42") == 1.0
    assert toy_task.compute_score("openai/gsm8k", reply, "41") == 0.0
