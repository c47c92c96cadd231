# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The shipped configs compose on verl's defaults, and bad values fail fast naming the key."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from rllm_fully_async.config_validation import ConfigError, validate
from rllm_fully_async.main import apply_mode, fill_toy_defaults, total_training_steps
from rllm_fully_async.paths import config_dir


def load(name: str, overrides: list[str] | None = None):
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        return compose(config_name=name, overrides=overrides or [])


@pytest.fixture(scope="module")
def cpu_cfg(tmp_path_factory):
    cfg = load("fully_async_ppo_cpu", [f"trainer.default_local_dir={tmp_path_factory.mktemp('run')}/ckpt"])
    fill_toy_defaults(cfg)
    return cfg


def test_configs_compose_on_verl_defaults():
    fsdp = load("fully_async_ppo_trainer", ["actor_rollout_ref.model.path=/x"])
    megatron = load("fully_async_ppo_megatron_trainer", ["actor_rollout_ref.model.path=/x"])
    cpu = load("fully_async_ppo_cpu")
    # verl's own keys keep their meaning and defaults
    assert fsdp.actor_rollout_ref.actor.clip_ratio == 0.2
    assert fsdp.actor_rollout_ref.actor.strategy == "fsdp2"
    assert megatron.actor_rollout_ref.actor.strategy == "megatron"
    assert "megatron" in megatron.actor_rollout_ref.actor  # verl's megatron actor section is composed
    assert cpu.actor_rollout_ref.rollout.name == "cpu_engine"
    assert cpu.trainer.device == "cpu"
    assert fsdp.async_training.required_samples == fsdp.actor_rollout_ref.actor.ppo_mini_batch_size


def test_valid_cpu_config_passes(cpu_cfg):
    validate(cpu_cfg, has_cuda=False)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("async_training.staleness_threshold=-0.1", "async_training.staleness_threshold"),
        ("actor_rollout_ref.rollout.n=0", "actor_rollout_ref.rollout.n"),
        ("async_training.max_queue_size=4", "async_training.max_queue_size"),
        ("async_training.mode=fast", "async_training.mode"),
        ("async_training.staleness_policy=ignore", "async_training.staleness_policy"),
        ("async_training.trigger_parameter_sync_step=0", "async_training.trigger_parameter_sync_step"),
        ("async_training.weight_sync_load_format=direct", "async_training.weight_sync_load_format"),
        ("+async_training.staleness=1", "async_training.staleness"),
        ("actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-sum", "actor_rollout_ref.actor.loss_agg_mode"),
        ("algorithm.adv_estimator=gae", "algorithm.adv_estimator"),
        ("actor_rollout_ref.actor.strategy=fsdp", "actor_rollout_ref.actor.strategy"),
        ("actor_rollout_ref.rollout.name=sglang", "actor_rollout_ref.rollout.name"),
        ("data.train_files=/nonexistent/train.parquet", "data.train_files"),
        ("actor_rollout_ref.model.path=/nonexistent/model", "actor_rollout_ref.model.path"),
        (
            "actor_rollout_ref.actor.policy_loss.loss_mode=decoupled_ppo",
            "algorithm.rollout_correction.rollout_is",
        ),
        ("async_training.group_filter=/nonexistent/filters.py:keep", "async_training.group_filter"),
        ("async_training.group_filter=no_colon", "async_training.group_filter"),
        ("rollout_servers.router_url=http://127.0.0.1:30000", "rollout_servers.router_url"),  # without urls
    ],
)
def test_bad_values_name_the_key(cpu_cfg, override, key):
    cfg = cpu_cfg.copy()
    with open_dict(cfg):
        dotted, value = override.lstrip("+").split("=", 1)
        OmegaConf.update(cfg, dotted, yaml.safe_load(value), force_add=True)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(cfg, has_cuda=False)


def test_a_router_fronts_listed_servers_and_generation_goes_through_it(cpu_cfg):
    from rllm_fully_async.rollout.executor import ExecutorSettings

    cfg = cpu_cfg.copy()
    with open_dict(cfg):
        cfg.rollout_servers.urls = ["http://127.0.0.1:30001", "http://127.0.0.1:30002"]
        cfg.rollout_servers.router_url = "127.0.0.1:30000"
        with pytest.raises(
            ConfigError, match=r"rollout_servers\.router_url: must be an http:// or https:// URL"
        ):
            validate(cfg, has_cuda=False)
        cfg.rollout_servers.router_url = "http://127.0.0.1:30000"
    validate(cfg, has_cuda=False)
    settings = ExecutorSettings.from_config(OmegaConf.to_container(cfg, resolve=True))
    assert settings.router_url == "http://127.0.0.1:30000"


def test_dynamic_sampling_needs_several_samples_per_prompt(cpu_cfg):
    cfg = cpu_cfg.copy()
    with open_dict(cfg):
        cfg.algorithm.filter_groups.enable = True
        validate(cfg, has_cuda=False)
        cfg.actor_rollout_ref.rollout.n = 1
    with pytest.raises(
        ConfigError, match=r"algorithm\.filter_groups\.enable: needs actor_rollout_ref\.rollout\.n >= 2"
    ):
        validate(cfg, has_cuda=False)


def test_missing_model_path_is_named():
    cfg = load("fully_async_ppo_trainer")
    with pytest.raises(ConfigError, match=r"actor_rollout_ref\.model\.path: is required"):
        validate(cfg, has_cuda=True)


def test_megatron_needs_cuda_and_megatron_core(cpu_cfg):
    cfg = load(
        "fully_async_ppo_megatron_trainer",
        [
            f"actor_rollout_ref.model.path={cpu_cfg.actor_rollout_ref.model.path}",
            "actor_rollout_ref.rollout.name=cpu_engine",
            f"data.train_files={cpu_cfg.data.train_files}",
            f"data.val_files={cpu_cfg.data.val_files}",
        ],
    )
    with pytest.raises(ConfigError, match="'megatron' needs CUDA"):
        validate(cfg, has_cuda=False)
    try:
        import megatron.core  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="needs megatron-core"):
            validate(cfg, has_cuda=True)


def test_sync_mode_is_lock_step(cpu_cfg):
    cfg = cpu_cfg.copy()
    with open_dict(cfg):
        cfg.async_training.mode = "sync"
        cfg.async_training.staleness_threshold = 0.5
        cfg.async_training.trigger_parameter_sync_step = 4
    apply_mode(cfg)
    a = cfg.async_training
    assert (a.staleness_threshold, a.trigger_parameter_sync_step, a.partial_rollout) == (0.0, 1, False)
    assert a.max_queue_size == a.required_samples


def test_total_steps_known_before_optimizer(cpu_cfg):
    cfg = cpu_cfg.copy()
    with open_dict(cfg):
        cfg.trainer.total_epochs = 2
        cfg.async_training.required_samples = 16
    assert total_training_steps(cfg, prompts_per_epoch=100) == 13  # ceil(200 / 16)
    with open_dict(cfg):
        cfg.trainer.total_training_steps = 5
    assert total_training_steps(cfg, prompts_per_epoch=100) == 5


def test_cli_reports_unknown_key_and_missing_model(tmp_path):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    unknown = subprocess.run(
        [sys.executable, "-m", "rllm_fully_async.main", "async_training.stalness_threshold=0.1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert unknown.returncode != 0
    assert "stalness_threshold" in unknown.stderr
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "rllm_fully_async.main",
            "--config-name",
            "fully_async_ppo_trainer",
            "actor_rollout_ref.rollout.name=cpu_engine",
            "trainer.device=cpu",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert missing.returncode == 2, missing.stderr[-2000:]
    assert "actor_rollout_ref.model.path: is required" in missing.stderr


def test_code_takes_its_defaults_from_the_base_yaml():
    """A partial config gets the YAML's values (the one home of the defaults), not ones restated in code."""
    from rllm_fully_async.rollout.executor import ExecutorSettings
    from rllm_fully_async.servers.rollout_servers import RolloutServerSpec

    with open(config_dir() / "fully_async_base.yaml") as f:
        base = yaml.safe_load(f)
    partial = {
        "data": {"train_files": "x.parquet", "max_prompt_length": 8, "max_response_length": 8},
        "actor_rollout_ref": {"model": {"path": "m"}, "rollout": {"n": 2}},
        "trainer": {"total_epochs": 1},
        "async_training": {"required_samples": 4},
    }
    s = ExecutorSettings.from_config(partial)
    a = base["async_training"]
    assert (s.staleness_threshold, s.max_concurrency, s.max_retries, s.partial_rollout) == (
        a["staleness_threshold"],
        a["max_concurrency"],
        a["max_retries"],
        a["partial_rollout"],
    )
    assert s.server_outage_timeout_s == base["rollout_servers"]["startup_timeout_s"]
    spec = RolloutServerSpec(kind="cpu", model_path="m")
    servers = base["rollout_servers"]
    assert spec.max_restarts == servers["max_restarts"]
    assert spec.startup_timeout_s == servers["startup_timeout_s"]


def test_config_validation_imports_no_heavy_runtime():
    """Validating a config needs the fixed lists only, not torch, Ray or aiohttp."""
    code = (
        "import sys, rllm_fully_async.config_validation\n"
        "heavy = [m for m in ('torch', 'ray', 'aiohttp') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
