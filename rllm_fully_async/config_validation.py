# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Fail fast on a bad configuration, naming the key and the fix, before any worker starts.

A mistake found here costs a second; the same mistake found inside a Ray worker costs minutes and
arrives as a stack trace from deep inside verl.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rllm_fully_async.cluster.placement import (
    Node,
    Placement,
    PlacementError,
    PlacementRequest,
    check_fits,
    trainer_requests,
)
from rllm_fully_async.config_schema import ASYNC_MODES, LOAD_FORMATS, ROLLOUT_ENGINES, STALENESS_POLICIES

ASYNC_KEYS = {
    "mode",
    "required_samples",
    "trigger_parameter_sync_step",
    "staleness_threshold",
    "max_staleness",
    "staleness_policy",
    "partial_rollout",
    "max_queue_size",
    "max_concurrency",
    "max_retries",
    "sample_timeout_s",
    "rollout_fn",
    "group_filter",
    "queue_get_timeout_s",
    "param_sync_timeout_s",
    "weight_sync_bucket_mb",
    "weight_sync_load_format",
    "weight_sync_max_buckets_in_flight",
}
ROLLOUT_SERVER_KEYS = {
    "urls",
    "router_url",
    "num_servers",
    "startup_timeout_s",
    "extra_args",
    "num_threads",
    "num_cpus_per_server",
    "max_restarts",
    "log_dir",
    "host",
    "env",
    "placement",
    "api_key",
}
# Estimators computed from outcome rewards alone. GAE needs a critic and REMAX a greedy baseline rollout,
# neither of which the fully-async trainer runs.
SUPPORTED_ESTIMATORS = (
    "grpo",
    "grpo_vectorized",
    "grpo_passk",
    "rloo",
    "rloo_vectorized",
    "reinforce_plus_plus",
    "reinforce_plus_plus_baseline",
    "opo",
    "gpg",
)


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and how to fix it."""


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


def _check_known_keys(node: DictConfig, known: set[str], section: str) -> None:
    unknown = sorted(set(node.keys()) - known)
    if unknown:
        raise ConfigError(
            f"{section}.{unknown[0]}: unknown key. Valid keys of {section}: {', '.join(sorted(known))}"
        )


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def queue_bound(cfg: DictConfig) -> int:
    """``max_queue_size``, or by default the groups one sync window may launch (the admission budget)."""
    from rllm_fully_async.rollout.staleness import window_budget

    a = cfg.async_training
    if a.max_queue_size is not None:
        return int(a.max_queue_size)
    return window_budget(a.required_samples, a.staleness_threshold, a.trigger_parameter_sync_step)


def validate_async_training(cfg: DictConfig) -> None:
    """Checks of the ``async_training`` section alone."""
    a = cfg.async_training
    _check_known_keys(a, ASYNC_KEYS, "async_training")
    _require(a.mode in ASYNC_MODES, "async_training.mode", f"must be one of {ASYNC_MODES}, got {a.mode!r}")
    _require(
        isinstance(a.required_samples, int) and a.required_samples >= 1,
        "async_training.required_samples",
        f"must be a positive integer (groups per training step), got {a.required_samples!r}",
    )
    _require(
        isinstance(a.trigger_parameter_sync_step, int) and a.trigger_parameter_sync_step >= 1,
        "async_training.trigger_parameter_sync_step",
        f"must be an integer >= 1, got {a.trigger_parameter_sync_step!r}",
    )
    _require(
        a.staleness_threshold >= 0,
        "async_training.staleness_threshold",
        f"must be >= 0 (0 = no extra rollouts beyond one window), got {a.staleness_threshold}",
    )
    _require(
        a.max_staleness is None or (isinstance(a.max_staleness, int) and a.max_staleness >= 0),
        "async_training.max_staleness",
        f"must be null or an integer >= 0, got {a.max_staleness!r}",
    )
    _require(
        a.staleness_policy in STALENESS_POLICIES,
        "async_training.staleness_policy",
        f"must be one of {STALENESS_POLICIES}, got {a.staleness_policy!r}",
    )
    _require(
        a.max_queue_size is None or a.max_queue_size >= a.required_samples,
        "async_training.max_queue_size",
        f"({a.max_queue_size}) must be >= async_training.required_samples ({a.required_samples}), "
        "or a training step could never be filled",
    )
    _require(
        a.max_concurrency >= 1, "async_training.max_concurrency", f"must be >= 1, got {a.max_concurrency}"
    )
    _require(a.max_retries >= 0, "async_training.max_retries", f"must be >= 0, got {a.max_retries}")
    _require(a.queue_get_timeout_s > 0, "async_training.queue_get_timeout_s", "must be > 0 seconds")
    _require(
        a.sample_timeout_s is None or a.sample_timeout_s > 0,
        "async_training.sample_timeout_s",
        f"must be null (no deadline) or > 0 seconds, got {a.sample_timeout_s!r}",
    )
    _require(a.param_sync_timeout_s > 0, "async_training.param_sync_timeout_s", "must be > 0 seconds")
    _require(
        a.weight_sync_load_format in LOAD_FORMATS,
        "async_training.weight_sync_load_format",
        f"must be null (one broadcast per tensor) or 'flattened_bucket', got {a.weight_sync_load_format!r}",
    )
    _require(
        a.weight_sync_max_buckets_in_flight >= 1,
        "async_training.weight_sync_max_buckets_in_flight",
        f"must be >= 1, got {a.weight_sync_max_buckets_in_flight}",
    )


def check_added_keys(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """``+key=value`` adds a key the config did not have, so a typo of an existing key
    (``+trainer.total_epoch``) is silently ignored. Refuse an added key that nearly matches a sibling."""
    for override in overrides:
        if not override.startswith("+") or override.startswith("++"):
            continue
        key = override[1:].split("=", 1)[0]
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        if not isinstance(parent, DictConfig):
            continue
        close = difflib.get_close_matches(leaf, [k for k in parent.keys() if k != leaf], n=1, cutoff=0.75)
        if close:
            near = f"{parent_key}.{close[0]}" if parent_key else close[0]
            raise ConfigError(
                f"{key}: unknown key, added with '+' ({override!r}); did you mean {near}? "
                f"Set it without '+': {near}={override.split('=', 1)[1] if '=' in override else '...'}"
            )


def _check_actor_dataclass(cfg: DictConfig) -> None:
    """verl turns the actor section into its dataclass inside the workers; an unknown key there (an added
    ``+...optim.lrr``) would fail only after the servers and Ray started. Convert it here."""
    from verl.utils.config import omega_conf_to_dataclass

    try:
        omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    except Exception as e:  # hydra's InstantiationException wraps the dataclass's TypeError / ValueError
        text = str(e)
        section = re.search(r"full_key: (\S+)", text)
        section = section.group(1) if section else "actor_rollout_ref.actor"
        unknown = re.search(r"unexpected keyword argument '(\w+)'", text)
        if unknown:
            raise ConfigError(f"{section}.{unknown.group(1)}: unknown key of verl's {section} config") from e
        raise ConfigError(f"{section}: {text.splitlines()[-1] if text else type(e).__name__}") from e


def check_prompts_fit(cfg: DictConfig, tokenizer: Any) -> None:
    """A dataset none of whose prompts fits ``data.max_prompt_length`` would filter every prompt and train
    nothing; find that before anything starts (stops at the first prompt that fits)."""
    from rllm_fully_async.rollout.executor import load_prompts
    from rllm_fully_async.rollout.rollout_fn import chat_prompt_ids

    files = cfg.data.train_files
    prompt_key = cfg.data.get("prompt_key") or "prompt"
    limit = int(cfg.data.max_prompt_length)
    shortest = None
    for prompt in load_prompts([files] if isinstance(files, str) else list(files), prompt_key):
        length = len(chat_prompt_ids(tokenizer, prompt.datum[prompt_key]))
        if length <= limit:
            return
        shortest = length if shortest is None else min(shortest, length)
    raise ConfigError(
        f"data.max_prompt_length={limit}: every prompt of data.train_files is longer (the shortest has "
        f"{shortest} tokens with the chat template), so nothing would be trained; raise "
        "data.max_prompt_length or shorten the prompts"
    )


def _check_path(path: str | None, key: str, what: str) -> None:
    if path is None:
        return
    expanded = os.path.expanduser(str(path))
    _require(os.path.exists(expanded), key, f"{what} {path!r} does not exist")


def _looks_local(path: str) -> bool:
    """Absolute, home- or dot-relative paths are local; anything else may be a hub id like ``org/name``."""
    return path.startswith(("/", ".", "~"))


def _check_without_flash_attn(model: DictConfig) -> None:
    """flash-attn is optional on GPUs (install/gpu-fsdp-sglang.sh with FLASH_ATTN=skip); without it the FSDP
    workers build the model with SDPA attention, and verl's remove-padding path, which calls flash-attn's
    varlen kernels, must be off."""
    fix = "or install flash-attn (install/gpu-fsdp-sglang.sh with FLASH_ATTN=build)"
    _require(
        not model.get("use_remove_padding", False),
        "actor_rollout_ref.model.use_remove_padding",
        f"verl's remove-padding path needs flash-attn, which is not installed: set it to False (padded "
        f"micro-batches with SDPA attention) {fix}",
    )
    attn = (model.get("override_config") or {}).get("attn_implementation", "sdpa")
    _require(
        not str(attn).startswith("flash_attention"),
        "actor_rollout_ref.model.override_config.attn_implementation",
        f"{attn!r} needs flash-attn, which is not installed: use sdpa (the default without flash-attn) {fix}",
    )


def validate(cfg: DictConfig, *, has_cuda: bool | None = None) -> None:
    """Validate the whole run configuration; raises ``ConfigError`` on the first problem."""
    has_cuda = cuda_available() if has_cuda is None else has_cuda
    validate_async_training(cfg)
    _check_known_keys(cfg.rollout_servers, ROLLOUT_SERVER_KEYS, "rollout_servers")
    for key, section in (("rollout_servers", cfg.rollout_servers), ("trainer", cfg.trainer)):
        try:
            Placement.from_config(section.get("placement"), f"{key}.placement")
        except ValueError as err:
            raise ConfigError(str(err)) from None

    model_key = "actor_rollout_ref.model.path"
    model_path = cfg.actor_rollout_ref.model.path
    _require(
        model_path is not None,
        model_key,
        "is required: a Hugging Face checkpoint directory or hub id, e.g. "
        f"{model_key}=Qwen/Qwen2.5-0.5B-Instruct ('toy' selects the built-in tiny model)",
    )
    if _looks_local(str(model_path)):
        _check_path(model_path, model_key, "model directory")

    rollout = cfg.actor_rollout_ref.rollout
    _require(
        isinstance(rollout.n, int) and rollout.n >= 1,
        "actor_rollout_ref.rollout.n",
        f"must be an integer >= 1 (responses per prompt), got {rollout.n!r}",
    )
    _require(
        rollout.name in ROLLOUT_ENGINES,
        "actor_rollout_ref.rollout.name",
        f"must be one of {tuple(ROLLOUT_ENGINES)}, got {rollout.name!r}",
    )
    router_url = cfg.rollout_servers.get("router_url")
    if router_url:
        _require(
            bool(cfg.rollout_servers.urls),
            "rollout_servers.router_url",
            "fronts servers started outside the run: also list those servers in rollout_servers.urls (weight "
            "updates, pauses and cache flushes go to each of them; the router does not fan them out)",
        )
        _require(
            isinstance(router_url, str) and router_url.startswith(("http://", "https://")),
            "rollout_servers.router_url",
            f"must be an http:// or https:// URL, got {router_url!r}",
        )
    if rollout.name == "sglang" and not has_cuda and not cfg.rollout_servers.urls:
        raise ConfigError(
            "actor_rollout_ref.rollout.name: 'sglang' needs a CUDA GPU on this machine; use "
            "actor_rollout_ref.rollout.name=cpu_engine, or point rollout_servers.urls at running servers"
        )

    trainer = cfg.trainer
    _require(
        isinstance(trainer.total_epochs, int) and trainer.total_epochs >= 1,
        "trainer.total_epochs",
        f"must be an integer >= 1, got {trainer.total_epochs!r}",
    )
    _require(
        trainer.get("total_training_steps") is None
        or (isinstance(trainer.total_training_steps, int) and trainer.total_training_steps >= 1),
        "trainer.total_training_steps",
        f"must be null (all epochs) or an integer >= 1, got {trainer.get('total_training_steps')!r}",
    )

    for key in ("train_files", "val_files"):
        files = cfg.data.get(key)
        if files is None:
            continue
        for f in [files] if isinstance(files, str) else list(files):
            _check_path(f, f"data.{key}", "data file")

    actor = cfg.actor_rollout_ref.actor
    strategy = actor.strategy
    if strategy == "megatron":
        _require(
            has_cuda,
            "actor_rollout_ref.actor.strategy",
            "'megatron' needs CUDA GPUs (Megatron's forward pass calls torch.cuda); use strategy=fsdp2 "
            "on a CPU-only machine",
        )
        _require(
            _importable("megatron.core"),
            "actor_rollout_ref.actor.strategy",
            "'megatron' needs megatron-core: run install/gpu-megatron-sglang.sh",
        )
    else:
        _require(
            strategy in ("fsdp", "fsdp2"),
            "actor_rollout_ref.actor.strategy",
            f"must be fsdp, fsdp2 or megatron, got {strategy!r}",
        )
        _require(
            has_cuda or strategy == "fsdp2",
            "actor_rollout_ref.actor.strategy",
            "FSDP1 cannot shard on CPU (verl's sync_module_states check); use strategy=fsdp2",
        )
    if strategy != "megatron":
        _check_actor_dataclass(cfg)
    if has_cuda and strategy != "megatron" and not _importable("flash_attn"):
        _check_without_flash_attn(cfg.actor_rollout_ref.model)
    _require(
        actor.loss_agg_mode == "token-mean",
        "actor_rollout_ref.actor.loss_agg_mode",
        "fully-async batches vary in size, so the patched actors (dp_actor, megatron_actor) take one "
        f"token-mean over the whole batch; set it to token-mean (got {actor.loss_agg_mode!r})",
    )
    _require(
        actor.policy_loss.loss_mode != "geo_mean",
        "actor_rollout_ref.actor.policy_loss.loss_mode",
        "geo_mean ignores the whole-batch token count the patched actors rely on; use vanilla (PPO clip)",
    )
    rollout_corr = cfg.algorithm.get("rollout_correction")
    if actor.policy_loss.loss_mode == "decoupled_ppo":
        _require(
            rollout_corr is not None
            and rollout_corr.get("rollout_is") == "token"
            and not rollout_corr.get("bypass_mode", False),
            "algorithm.rollout_correction.rollout_is",
            "the decoupled_ppo policy loss weights each token by pi_proximal / pi_behaviour: set "
            "algorithm.rollout_correction.rollout_is=token and bypass_mode=false "
            "(rollout_is_threshold is the cap)",
        )
    if rollout_corr is not None and rollout_corr.get("bypass_mode", False):
        _require(
            bool(actor.get("use_rollout_log_probs", False)),
            "actor_rollout_ref.actor.use_rollout_log_probs",
            "must be true with algorithm.rollout_correction.bypass_mode=true: with one mini-batch and one "
            "epoch verl otherwise replaces old_log_probs by the current ones, removing the correction",
        )
    filter_groups = cfg.algorithm.get("filter_groups") or {}
    if filter_groups.get("enable", False):
        _require(
            rollout.n >= 2,
            "algorithm.filter_groups.enable",
            f"needs actor_rollout_ref.rollout.n >= 2: with n={rollout.n} every group's rewards are equal and "
            "every group would be filtered",
        )
    if cfg.async_training.group_filter is not None:
        from rllm_fully_async.rollout.rollout_fn import load_function

        try:
            load_function(cfg.async_training.group_filter, "async_training.group_filter")
        except (ValueError, ImportError, OSError, AttributeError) as e:
            raise ConfigError(str(e)) from e
    _require(
        cfg.algorithm.adv_estimator in SUPPORTED_ESTIMATORS,
        "algorithm.adv_estimator",
        f"{cfg.algorithm.adv_estimator!r} is not supported (GAE needs a critic and REMAX a greedy "
        f"baseline rollout, which the fully-async trainer does not run); choose one of "
        f"{', '.join(SUPPORTED_ESTIMATORS)}",
    )
    validate_batch_split(cfg)


def trainer_world_size(cfg: DictConfig) -> int:
    """Training worker processes: one per GPU (``trainer.nnodes * trainer.n_gpus_per_node``)."""
    return int(cfg.trainer.get("nnodes", 1)) * int(cfg.trainer.n_gpus_per_node)


def validate_batch_split(cfg: DictConfig) -> None:
    """Each step's batch (``required_samples`` groups of ``rollout.n``) must split evenly over the trainer
    ranks, and Megatron's model-parallel grid must divide the ranks, or the first update fails in verl."""
    world = trainer_world_size(cfg)
    _require(
        world >= 1,
        "trainer.n_gpus_per_node",
        f"trainer.nnodes x trainer.n_gpus_per_node must be >= 1 training process, got {world}",
    )
    samples = int(cfg.async_training.required_samples) * int(cfg.actor_rollout_ref.rollout.n)
    _require(
        samples % world == 0,
        "async_training.required_samples",
        f"a step's {samples} samples (async_training.required_samples={cfg.async_training.required_samples} "
        f"x actor_rollout_ref.rollout.n={cfg.actor_rollout_ref.rollout.n}) do not split over the {world} "
        f"trainer ranks (trainer.nnodes x trainer.n_gpus_per_node); make the product a multiple of {world}",
    )
    actor = cfg.actor_rollout_ref.actor
    mp = actor.get("megatron") if actor.strategy == "megatron" else None
    if mp is not None:
        grid = (
            int(mp.tensor_model_parallel_size)
            * int(mp.pipeline_model_parallel_size)
            * int(mp.context_parallel_size)
        )
        _require(
            world % grid == 0,
            "actor_rollout_ref.actor.megatron.tensor_model_parallel_size",
            f"tensor x pipeline x context parallel size ({grid}) must divide the {world} trainer ranks "
            "(trainer.nnodes x trainer.n_gpus_per_node)",
        )


def cluster_demand(cfg: DictConfig) -> list[PlacementRequest]:
    """What the run reserves in Ray: the trainer's placement groups (one per trainer node, see
    :func:`~rllm_fully_async.cluster.placement.trainer_requests`) and, unless ``rollout_servers.urls`` names
    servers started outside the run, the servers' group (a bundle of ``rollout_servers.num_cpus_per_server``
    CPUs and, for SGLang, ``tensor_model_parallel_size`` GPUs per server), each shaped by its ``placement``.
    """
    from rllm_fully_async.servers.rollout_servers import spec_from_config

    demand = trainer_requests(cfg)
    if not cfg.rollout_servers.get("urls"):
        demand.append(spec_from_config(cfg).placement_request())
    return demand


def validate_cluster_fit(cfg: DictConfig, nodes: Sequence[Node | Mapping[str, float]]) -> None:
    """The trainer's and the servers' reservations must fit the Ray cluster's ``nodes``.

    ``nodes``: :func:`~rllm_fully_async.cluster.placement.cluster_nodes`, or resources per node. Checked
    before anything starts: a placement group that cannot be placed waits in Ray, and a trainer that finds
    no GPUs left fails only after the servers have loaded the model.
    """
    nodes = [
        n if isinstance(n, Node) else Node(f"node{i}", f"node{i}", dict(n), {}) for i, n in enumerate(nodes)
    ]
    demand = cluster_demand(cfg)
    try:
        check_fits(nodes, demand)
    except PlacementError as err:
        total: dict[str, float] = {}
        for request in demand:
            for k, v in request.bundles[0].items():
                total[k] = total.get(k, 0.0) + v * request.count
        have = {k: sum(n.resources.get(k, 0.0) for n in nodes) for k in total}
        server_keys = (
            "rollout_servers.num_servers x actor_rollout_ref.rollout.tensor_model_parallel_size GPUs "
            "(+ rollout_servers.num_cpus_per_server CPUs each)"
            if not cfg.rollout_servers.get("urls")
            else "none (rollout_servers.urls: servers started outside the run)"
        )
        raise ConfigError(
            f"trainer.n_gpus_per_node: the run does not fit the Ray cluster. The run needs {_fmt(total)} in "
            f"all: trainer.nnodes x trainer.n_gpus_per_node = {trainer_world_size(cfg)} training workers, "
            f"rollout servers {server_keys}; the cluster has {_fmt(have)} over {len(nodes)} node(s). Lower "
            "trainer.n_gpus_per_node or rollout_servers.num_servers / tensor_model_parallel_size so that "
            "trainer GPUs + servers x tensor-parallel size fit, change trainer.placement / "
            f"rollout_servers.placement, or add nodes. In detail: {err}"
        ) from None


def _fmt(resources: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(resources.items())) + "}"
