# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Join the Ray cluster the user names, or start a private one on this machine when none is named.

verl's convention: ``ray_kwargs.ray_init`` holds ``ray.init``'s keyword arguments, and the cluster is
named by ``ray_kwargs.ray_init.address`` or else the ``RAY_ADDRESS`` environment variable (as ``ray
start --head`` and ``ray job submit`` set it). Joining a cluster, the resource counts belong to its nodes
(``ray start --num-cpus``...), and Ray refuses them from a driver, so they are left out. A run never
stops a cluster it joined: leaving it only disconnects.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rllm_fully_async.cluster.placement import cluster_nodes

# Counts that describe the node a driver starts; meaningless (and refused by Ray) when joining a cluster.
LOCAL_ONLY_KEYS = ("num_cpus", "num_gpus", "resources", "labels", "object_store_memory", "include_dashboard")
# Set in every worker (on every node) unless the driver's environment already sets them for itself.
WORKER_ENV = {"TOKENIZERS_PARALLELISM": "false", "NCCL_DEBUG": "WARN"}
# Carried from the driver's environment to every worker when set: the hub access that loading a model
# on another node needs.
CARRIED_ENV = ("HF_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def cluster_address(cfg: DictConfig, environ: Mapping[str, str] = os.environ) -> str | None:
    """The cluster to join: ``ray_kwargs.ray_init.address``, else ``RAY_ADDRESS``; None: start a local one.

    The address ``local`` asks for a private local cluster even when ``RAY_ADDRESS`` is set.
    """
    address = _ray_init_section(cfg).get("address") or environ.get("RAY_ADDRESS") or None
    return None if address == "local" else address


def ray_init_kwargs(cfg: DictConfig, environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The keyword arguments for ``ray.init``: the config's ``ray_init`` with the run's ``runtime_env``."""
    init = {k: v for k, v in _ray_init_section(cfg).items() if v is not None}
    user_env = dict(init.pop("runtime_env", None) or {})
    env_vars = {**WORKER_ENV, **{k: environ[k] for k in CARRIED_ENV if k in environ}}
    env_vars.update(user_env.pop("env_vars", None) or {})
    init["runtime_env"] = {**user_env, "env_vars": env_vars}
    address = cluster_address(cfg, environ)
    if address is not None:
        init["address"] = address
        for key in LOCAL_ONLY_KEYS:
            if init.pop(key, None) is not None:
                print(f"ray_kwargs.ray_init.{key} is ignored: joining the cluster at {address}, whose nodes "
                      "set their own resources", flush=True)  # fmt: skip
        return init
    # "local", not None: given no address, ray.init() joins the cluster last started on this machine
    # (/tmp/ray/ray_current_cluster) and then refuses the resource counts below.
    init["address"] = "local"
    init.setdefault("num_cpus", max(4, os.cpu_count() or 1))
    init.setdefault("include_dashboard", False)
    return init


def init_ray(cfg: DictConfig) -> bool:
    """Connect to (or start) Ray as ``cfg`` says and print its nodes; True unless a local one was started."""
    import ray

    if ray.is_initialized():
        return True
    kwargs = ray_init_kwargs(cfg)
    joined = kwargs["address"] != "local"
    ray.init(**kwargs)
    nodes = cluster_nodes()
    how = f"joined the Ray cluster at {kwargs['address']}" if joined else "started a local Ray cluster"
    print(f"{how}: {len(nodes)} node(s)", flush=True)
    for node in nodes:
        print(f"  node {node.describe()}", flush=True)
    return joined


def _ray_init_section(cfg: DictConfig) -> dict[str, Any]:
    section = (cfg.get("ray_kwargs") or {}).get("ray_init") or {}
    return OmegaConf.to_container(section, resolve=True) if OmegaConf.is_config(section) else dict(section)
