# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The model and GSM8K data the GPU acceptance tests share (gpu_requirements.py: what they need)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from gpu_requirements import MODEL, gsm8k_row


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The model as a local directory (downloaded once from the hub when given as an id)."""
    if Path(MODEL).expanduser().is_dir():
        return Path(MODEL).expanduser()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(MODEL, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
    except Exception as err:  # noqa: BLE001 - any hub failure means the same: no model here
        pytest.skip(
            f"model {MODEL!r} is neither a directory nor downloadable ({err}); set RLLM_GPU_TEST_MODEL"
        )


@pytest.fixture(scope="session")
def gsm8k_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("RLLM_GPU_TEST_GSM8K_DIR")
    if given:
        path = Path(given).expanduser()
        assert (path / "train.parquet").is_file() and (path / "test.parquet").is_file(), (
            f"RLLM_GPU_TEST_GSM8K_DIR={given} must hold train.parquet and test.parquet (verl's gsm8k format)"
        )
        return path
    import datasets
    import pandas as pd

    try:
        source = datasets.load_dataset("openai/gsm8k", "main")
    except Exception as err:  # noqa: BLE001
        pytest.skip(
            f"GSM8K not downloadable ({err}); set RLLM_GPU_TEST_GSM8K_DIR to verl-format parquet files"
        )
    out = tmp_path_factory.mktemp("gsm8k")
    for split, name in (("train", "train"), ("test", "test")):
        rows = [gsm8k_row(split, i, r["question"], r["answer"]) for i, r in enumerate(source[split])]
        pd.DataFrame(rows).to_parquet(out / f"{name}.parquet")
    return out
