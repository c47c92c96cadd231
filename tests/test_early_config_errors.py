# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Mistakes that used to be found late (after servers and Ray started) or never: found before anything
starts, naming the key and the fix."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
from omegaconf import open_dict
from test_config import load
from transformers import AutoTokenizer

from rllm_fully_async.config_validation import ConfigError, check_added_keys, check_prompts_fit, validate
from rllm_fully_async.main import fill_toy_defaults


def cpu(tmp_path, *overrides: str):
    cfg = load("fully_async_ppo_cpu", [f"trainer.default_local_dir={tmp_path}/ckpt", *overrides])
    fill_toy_defaults(cfg)
    return cfg


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "+trainer.total_epoch=2",
            r"trainer\.total_epoch: unknown key.*did you mean trainer\.total_epochs\?",
        ),
        (
            "+actor_rollout_ref.actor.optim.lrr=0.1",
            r"actor_rollout_ref\.actor\.optim\.lrr: unknown key.*"
            r"did you mean actor_rollout_ref\.actor\.optim\.lr\? "
            r"Set it without '\+': actor_rollout_ref\.actor\.optim\.lr=0\.1",
        ),
    ],
)
def test_a_typo_added_with_plus_is_refused(tmp_path, override, message):
    cfg = cpu(tmp_path, override)
    with pytest.raises(ConfigError, match=message):
        check_added_keys(cfg, [override])


def test_new_keys_that_are_not_near_misses_are_allowed(tmp_path):
    overrides = ["+actor_rollout_ref.model.override_config.attention_dropout=0.0", "+ray_kwargs.foo=1"]
    check_added_keys(cpu(tmp_path, *overrides), overrides)


def test_an_unknown_key_of_verls_actor_dataclass_is_found_by_validate(tmp_path):
    cfg = cpu(tmp_path, "+actor_rollout_ref.actor.optim.warmup_style_x=cosine")
    with pytest.raises(ConfigError, match=r"actor_rollout_ref\.actor\.optim\.warmup_style_x: unknown key"):
        validate(cfg, has_cuda=False)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("trainer.total_epochs=0", "trainer.total_epochs"),
        ("trainer.total_training_steps=0", "trainer.total_training_steps"),
    ],
)
def test_nothing_to_train_is_refused(tmp_path, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + ": must be"):
        validate(cpu(tmp_path, override), has_cuda=False)


def test_a_dataset_whose_prompts_are_all_too_long_is_refused(tmp_path):
    cfg = cpu(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(cfg.actor_rollout_ref.model.path)
    check_prompts_fit(cfg, tokenizer)
    rows = [
        {"data_source": "x", "prompt": [{"role": "user", "content": "a long question " * (10 + i)}]}
        for i in range(3)
    ]
    pd.DataFrame(rows).to_parquet(tmp_path / "long.parquet")
    with open_dict(cfg):
        cfg.data.train_files = str(tmp_path / "long.parquet")
    with pytest.raises(
        ConfigError, match=r"data\.max_prompt_length=64: every prompt .*the shortest has \d+ tokens"
    ):
        check_prompts_fit(cfg, tokenizer)


def test_cli_refuses_an_added_typo_before_anything_starts(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rllm_fully_async.main",
            "+trainer.total_epoch=2",
            f"trainer.default_local_dir={tmp_path}/c",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "configuration error: trainer.total_epoch: unknown key" in proc.stderr
    assert not (tmp_path / "toy_assets").exists(), "nothing may start before the check"


def test_cli_refuses_an_unwritable_checkpoint_directory_before_anything_starts(tmp_path):
    if os.geteuid() == 0:  # root writes through permission bits: use a directory no one can create
        ckpt = "/proc/rllm_fully_async_checkpoints/ckpt"
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        ckpt = str(tmp_path / "ro" / "ckpt")
    proc = subprocess.run(
        [sys.executable, "-m", "rllm_fully_async.main", f"trainer.default_local_dir={ckpt}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
        timeout=120,
    )
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert f"checkpoint error: trainer.default_local_dir='{ckpt}' cannot be written" in proc.stderr
