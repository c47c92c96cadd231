# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Where the shipped Hydra configs and verl patches live, for source trees and installed wheels alike."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent


def _package_dir(package: str, repo_dir: str) -> Path:
    """The installed package-data directory, else the directory of the same name in a source checkout."""
    try:
        found = Path(str(importlib.resources.files(package)))
        if found.is_dir():
            return found
    except ModuleNotFoundError:
        pass
    fallback = _REPO_ROOT / repo_dir
    if not fallback.is_dir():
        raise FileNotFoundError(f"cannot find {repo_dir}/ (package {package}); reinstall rllm_fully_async")
    return fallback


def config_dir() -> Path:
    """Directory holding ``fully_async_ppo_trainer.yaml`` and the other Hydra configs."""
    return _package_dir("rllm_fully_async.config", "config")


def patches_dir() -> Path:
    """Directory holding the unified diffs against verl 0.7.1."""
    return _package_dir("rllm_fully_async.patch_files", "patches")
