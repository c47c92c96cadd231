# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from rllm_fully_async.toy import model as toy_model


@pytest.fixture(scope="session")
def toy_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline tiny checkpoint, built once per test session."""
    return toy_model.ensure_built(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="session")
def ray_local():
    """A small local Ray cluster for the session (reused if the test process already started one)."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(
            address="local",  # never a cluster another run left on this machine
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}},
        )
    yield ray
    if started:
        ray.shutdown()
