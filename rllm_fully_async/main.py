# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""``python -m rllm_fully_async.main [--config-name NAME] [key=value ...]``: one fully-async run.

Starts everything the run needs and stops it at the end: the rollout servers, the MessageQueue, the
RolloutExecutor, the actor (and reference) worker groups, ParamSync, and the FullyAsyncTrainer.
With no ``--config-name`` the FSDP config is used on a GPU machine and the CPU default elsewhere.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import ray
from omegaconf import DictConfig, OmegaConf, open_dict

from rllm_fully_async.config_validation import (
    ConfigError,
    check_added_keys,
    check_prompts_fit,
    cuda_available,
    queue_bound,
    validate,
    validate_cluster_fit,
)
from rllm_fully_async.paths import config_dir
from rllm_fully_async.trainer.metrics import RunSummary

GPU_DEFAULT_CONFIG = "fully_async_ppo_trainer"
CPU_DEFAULT_CONFIG = "fully_async_ppo_cpu"


TOY = "toy"
# The tool-use variant: the toy model with single-token tool-call tags, and the calculator task.
TOY_TOOLS = "toy_tools"


def fill_toy_defaults(cfg: DictConfig) -> None:
    """Build the offline toy model and task data where the config names them with the value ``toy``
    (the "Say 7" task) or ``toy_tools`` (the calculator task, with the tool-call tokens in the model)."""
    base = Path(os.path.expanduser(cfg.trainer.default_local_dir)).resolve().parent / "toy_assets"
    with open_dict(cfg):
        model_path = cfg.actor_rollout_ref.model.path
        if model_path in (TOY, TOY_TOOLS):
            from rllm_fully_async.toy import model as toy_model

            tools = model_path == TOY_TOOLS
            out = base / ("model_tools" if tools else "model")
            cfg.actor_rollout_ref.model.path = str(toy_model.ensure_built(out, tool_tokens=tools))
        for name in (TOY, TOY_TOOLS):
            if name not in (cfg.data.train_files, cfg.data.val_files):
                continue
            if name == TOY:
                from rllm_fully_async.toy import task as toy_task
            else:
                from rllm_fully_async.toy import tool_task as toy_task

            train, val = toy_task.ensure_dataset(base / "data")
            cfg.data.train_files = train if cfg.data.train_files == name else cfg.data.train_files
            cfg.data.val_files = val if cfg.data.val_files == name else cfg.data.val_files
            if cfg.custom_reward_function.path is None:
                cfg.custom_reward_function.path = toy_task.__file__
                cfg.custom_reward_function.name = "compute_score"


def apply_mode(cfg: DictConfig) -> None:
    """``async_training.mode=sync`` is the lock-step baseline: one window of exactly one batch, no overlap."""
    a = cfg.async_training
    with open_dict(cfg):
        if a.mode == "sync":
            a.staleness_threshold = 0.0
            a.trigger_parameter_sync_step = 1
            a.partial_rollout = False
        a.max_queue_size = queue_bound(cfg)


def total_training_steps(cfg: DictConfig, prompts_per_epoch: int) -> int:
    """Steps the run will take, known before the optimizer's LR schedule is built."""
    steps = math.ceil(prompts_per_epoch * cfg.trainer.total_epochs / cfg.async_training.required_samples)
    if cfg.trainer.total_training_steps is not None:
        steps = min(steps, int(cfg.trainer.total_training_steps))
    return steps


def servers_tp_size(cfg: DictConfig) -> int:
    """GPUs per SGLang server; weight-update ranks are laid out per server by it."""
    rollout = cfg.actor_rollout_ref.rollout
    return int(rollout.tensor_model_parallel_size) if rollout.name == "sglang" else 1


def run(cfg: DictConfig, trainer_factory: Callable[..., Any] | None = None) -> RunSummary:
    """Run one fully-async (or lock-step) training job described by ``cfg``.

    ``trainer_factory`` (default: ``FullyAsyncTrainer``) builds the trainer from the same arguments;
    benchmarks pass an instrumented subclass.
    """
    from transformers import AutoTokenizer
    from verl.trainer.ppo.utils import need_reference_policy

    from rllm_fully_async.cluster.connect import init_ray
    from rllm_fully_async.cluster.placement import bundle_nodes, cluster_nodes
    from rllm_fully_async.message_queue import MessageQueue
    from rllm_fully_async.patches import require_patched_verl
    from rllm_fully_async.rollout.executor import RolloutExecutor
    from rllm_fully_async.servers.rollout_servers import (
        RolloutServers,
        server_weight_dtype,
        start_rollout_servers,
    )
    from rllm_fully_async.sync.param_sync import ParamSync
    from rllm_fully_async.trainer.checkpoint import check_writable
    from rllm_fully_async.trainer.fully_async_trainer import ExecutorGate, FullyAsyncTrainer
    from rllm_fully_async.trainer.off_policy import share_correction_with_loss
    from rllm_fully_async.trainer.validation import Validator
    from rllm_fully_async.trainer.workers import create_actor_worker_group, shutdown_worker_group

    has_cuda = cuda_available()
    # First: the toy assets, checkpoints and the ledger are all written under it.
    check_writable(os.path.expanduser(cfg.trainer.default_local_dir))
    fill_toy_defaults(cfg)
    validate(cfg, has_cuda=has_cuda)
    require_patched_verl()
    apply_mode(cfg)
    share_correction_with_loss(cfg)
    tokenizer = AutoTokenizer.from_pretrained(cfg.actor_rollout_ref.model.path)
    check_prompts_fit(cfg, tokenizer)

    init_ray(cfg)
    validate_cluster_fit(cfg, cluster_nodes())
    servers = start_rollout_servers(cfg)
    if isinstance(servers, RolloutServers):
        for i, (url, node) in enumerate(zip(servers.urls, servers.nodes(), strict=True)):
            print(f"rollout server {i}: {url} on node {node['ip']} ({node['node_id']})", flush=True)
    param_sync = actor_wg = None
    actors: list = []
    try:
        urls = servers.urls
        queue = MessageQueue.options(num_cpus=0).remote(cfg.async_training.max_queue_size)
        executor = RolloutExecutor.options(num_cpus=0).remote(
            OmegaConf.to_container(cfg, resolve=True), urls, queue
        )
        actors += [executor, queue]
        steps = total_training_steps(cfg, ray.get(executor.num_prompts_per_epoch.remote()))
        with open_dict(cfg):
            cfg.actor_rollout_ref.actor.optim.total_training_steps = steps

        # One group holds actor and reference policy: on GPUs each group reserves its own devices.
        use_ref = need_reference_policy(cfg)
        actor_wg = create_actor_worker_group(cfg, role="actor_ref" if use_ref else "actor")
        ips = {node.node_id: node.ip for node in cluster_nodes()}
        ranks = [node_id for group in actor_wg.resource_pool.pgs for node_id in bundle_nodes(group)]
        for rank, node_id in enumerate(ranks):
            print(f"training worker {rank}: on node {ips.get(node_id, '?')} ({node_id})", flush=True)
        actor_wg.init_model()
        ref_wg = actor_wg if use_ref else None

        param_sync = ParamSync(
            actor_wg,
            urls,
            ExecutorGate(executor),
            backend="nccl" if has_cuda else "gloo",
            bucket_size_mb=cfg.async_training.weight_sync_bucket_mb,
            load_format=cfg.async_training.weight_sync_load_format,
            dtype=server_weight_dtype(cfg),
            max_buckets_in_flight=cfg.async_training.weight_sync_max_buckets_in_flight,
            timeout_s=cfg.async_training.param_sync_timeout_s,
            tp_size=servers_tp_size(cfg),
            api_key=cfg.rollout_servers.get("api_key"),
        )
        param_sync.init_group()
        validator = (
            Validator(cfg, urls, tokenizer) if cfg.data.val_files and cfg.trainer.test_freq > 0 else None
        )
        trainer = (trainer_factory or FullyAsyncTrainer)(
            cfg,
            tokenizer,
            actor_wg=actor_wg,
            queue=queue,
            executor=executor,
            param_sync=param_sync,
            total_training_steps=steps,
            ref_wg=ref_wg,
            validate_fn=validator.run if validator else None,
            servers=servers if isinstance(servers, RolloutServers) else None,
        )
        summary = trainer.fit()
    finally:
        if param_sync is not None:
            param_sync.close()
        if actor_wg is not None:
            shutdown_worker_group(actor_wg)
        for actor in actors:
            ray.kill(actor)
        servers.stop()
    print(summary.render(), flush=True)
    if not summary.counts.get("trained"):
        # Fewer prompts than the executor's stop-after-failures count can all be filtered: not a success.
        raise RuntimeError(
            "the run trained on no prompt: every prompt drawn was filtered "
            f"{summary.counts.get('filtered_by_reason', {})}; see the reasons above"
        )
    return summary


def _default_config_name(argv: list[str]) -> list[str]:
    """Pick the CPU default when the user named no config and there is no GPU."""
    named = any(a.startswith(("--config-name", "-cn")) for a in argv)
    if named:
        return argv
    return ["--config-name", GPU_DEFAULT_CONFIG if cuda_available() else CPU_DEFAULT_CONFIG, *argv]


@hydra.main(config_path=str(config_dir()), config_name=GPU_DEFAULT_CONFIG, version_base=None)
def _hydra_entry(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from rllm_fully_async.cluster.placement import PlacementError
    from rllm_fully_async.patches import VerlPatchError
    from rllm_fully_async.trainer.checkpoint import CheckpointError

    try:
        check_added_keys(cfg, HydraConfig.get().overrides.task)
        run(cfg)
    except (ConfigError, PlacementError) as err:
        print(f"configuration error: {err}", file=sys.stderr)
        sys.exit(2)
    except CheckpointError as err:
        print(f"checkpoint error: {err}", file=sys.stderr)
        sys.exit(4)
    except VerlPatchError as err:
        print(f"verl is not ready for fully-async training: {err}", file=sys.stderr)
        sys.exit(3)


def cli() -> None:
    sys.argv = [sys.argv[0], *_default_config_name(sys.argv[1:])]
    _hydra_entry()


if __name__ == "__main__":
    cli()
