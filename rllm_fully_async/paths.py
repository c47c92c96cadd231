# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Where the shipped Hydra configs and verl patches live, for source trees and installed wheels alike."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent


def _package_dir(package: str, repo_dir: str) -> Path:
    """The directory of a source checkout this package lives in, else the installed package data.

    The checkout comes first so that a second checkout run with the same editable install (or with
    ``PYTHONPATH``) reads its own configs and patches, not those of the checkout that was installed.
    """
    in_checkout = _REPO_ROOT / repo_dir
    if (_REPO_ROOT / "pyproject.toml").is_file() and in_checkout.is_dir():
        return in_checkout
    try:
        found = Path(str(importlib.resources.files(package)))
        if found.is_dir():
            return found
    except ModuleNotFoundError:
        pass
    raise FileNotFoundError(f"cannot find {repo_dir}/ (package {package}); reinstall rllm_fully_async")


def config_dir() -> Path:
    """Directory holding ``fully_async_ppo_trainer.yaml`` and the other Hydra configs."""
    return _package_dir("rllm_fully_async.config", "config")


def patches_dir() -> Path:
    """Directory holding the unified diffs against verl 0.7.1."""
    return _package_dir("rllm_fully_async.patch_files", "patches")
