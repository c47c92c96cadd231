# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The fixed choices of the run configuration, and its defaults as ``config/fully_async_base.yaml`` sets them.

Light on purpose (only OmegaConf): config validation and the Ray actors read the choices from here
without importing torch, Ray or aiohttp. The YAML is the one home of every default; code that gets a
partial configuration (tests, library callers) completes it with :func:`with_base_defaults` instead of
restating a default in a ``.get(key, default)``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from omegaconf import OmegaConf

from rllm_fully_async.paths import config_dir

ASYNC_MODES = ("async", "sync")
# async_training.staleness_policy, for groups past max_staleness: re-queue the prompt, or train on it anyway.
STALENESS_POLICIES = ("drop", "keep")
# actor_rollout_ref.rollout.name -> rollout server kind
ROLLOUT_ENGINES = {"sglang": "sglang", "cpu_engine": "cpu"}
# SGLang's load formats for /update_weights_from_distributed: None is one broadcast per tensor;
# "flattened_bucket" one per bucket, the tensors' bytes back to back.
LOAD_FORMATS = (None, "flattened_bucket")

BASE_CONFIG_FILE = "fully_async_base.yaml"


@functools.cache
def _base_config() -> Any:
    return OmegaConf.load(config_dir() / BASE_CONFIG_FILE)


def with_base_defaults(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` (a plain mapping or a DictConfig) over the base YAML, resolved into plain containers.

    A full Hydra run config already holds every key, so this changes nothing for it; a partial one gets
    the YAML's values for what it leaves out.
    """
    return OmegaConf.to_container(OmegaConf.merge(_base_config(), cfg), resolve=True)


def section_with_defaults(section: str, node: Mapping[str, Any] | None) -> dict[str, Any]:
    """One top-level section (``async_training``, ``rollout_servers``) of a config over the base YAML's."""
    merged = OmegaConf.merge(_base_config(), {section: node or {}})
    return OmegaConf.to_container(merged[section], resolve=True)


def base_default(section: str, key: str) -> Any:
    """The YAML's default of ``section.key`` (e.g. ``rollout_servers.startup_timeout_s``)."""
    return section_with_defaults(section, None)[key]
