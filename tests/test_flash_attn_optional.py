# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""flash-attn is optional on GPUs (install/gpu-fsdp-sglang.sh with FLASH_ATTN=skip): without it a GPU run
is refused before anything starts unless remove-padding is off, and the workers build SDPA attention."""

from __future__ import annotations

import importlib.util

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rllm_fully_async.config_validation import ConfigError, validate
from rllm_fully_async.paths import config_dir
from rllm_fully_async.trainer.workers import default_to_sdpa

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("flash_attn") is not None, reason="flash-attn is installed here"
)


def gpu_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        return compose(
            "fully_async_ppo_trainer",
            ["actor_rollout_ref.model.path=Qwen/Qwen2.5-0.5B-Instruct", "data.train_files=null",
             "data.val_files=null", *overrides],
        )  # fmt: skip


def test_remove_padding_without_flash_attn_is_refused_naming_the_fix():
    with pytest.raises(ConfigError, match="actor_rollout_ref.model.use_remove_padding") as err:
        validate(gpu_cfg(), has_cuda=True)  # verl's default is use_remove_padding=True
    assert "set it to False" in str(err.value) and "FLASH_ATTN=build" in str(err.value)
    validate(gpu_cfg("actor_rollout_ref.model.use_remove_padding=False"), has_cuda=True)


def test_flash_attention_named_without_flash_attn_is_refused():
    cfg = gpu_cfg(
        "actor_rollout_ref.model.use_remove_padding=False",
        "+actor_rollout_ref.model.override_config.attn_implementation=flash_attention_2",
    )
    with pytest.raises(ConfigError, match="override_config.attn_implementation"):
        validate(cfg, has_cuda=True)


def test_workers_default_to_sdpa_but_keep_a_named_implementation():
    cfg = OmegaConf.create({"model": {"override_config": {}}})
    default_to_sdpa(cfg)
    assert cfg.model.override_config.attn_implementation == "sdpa"
    named = OmegaConf.create({"model": {"override_config": {"attn_implementation": "eager"}}})
    default_to_sdpa(named)
    assert named.model.override_config.attn_implementation == "eager"
