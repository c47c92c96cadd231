# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""What the GPU acceptance tests need, and the GSM8K rows they train on.

Needs (each test skips naming what is missing): >= 2 CUDA GPUs (one trainer, one SGLang server), an
install made by install/gpu-fsdp-sglang.sh (sglang, patched verl), the model (RLLM_GPU_TEST_MODEL, default
Qwen/Qwen2.5-0.5B-Instruct: a local directory or a hub id downloadable from here), GSM8K in verl's parquet
format (RLLM_GPU_TEST_GSM8K_DIR with train.parquet and test.parquet, else built from the hub's
openai/gsm8k), and, for the Megatron test, megatron-core (install/gpu-megatron-sglang.sh).
"""

from __future__ import annotations

import importlib.util
import os
import re

MODEL = os.environ.get("RLLM_GPU_TEST_MODEL", "Qwen/Qwen2.5-0.5B-Instruct")
GSM8K_INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'


def missing_gpu_stack() -> str | None:
    """Why this machine cannot run the GPU acceptance tests, or None."""
    import torch

    if not torch.cuda.is_available():
        return "needs CUDA GPUs (torch.cuda.is_available() is False)"
    if torch.cuda.device_count() < 2:
        return f"needs 2 GPUs (one trainer, one SGLang server), found {torch.cuda.device_count()}"
    if importlib.util.find_spec("sglang") is None:
        return "needs sglang: bash install/gpu-fsdp-sglang.sh"
    from rllm_fully_async.patches import VerlPatchError, require_patched_verl

    try:
        require_patched_verl()
    except VerlPatchError as err:
        return f"needs the patched verl: {err}"
    return None


def gsm8k_row(split: str, index: int, question: str, answer: str) -> dict:
    """One prompt in the format of verl's examples/data_preprocess/gsm8k.py (scored by verl's gsm8k rule)."""
    solution = re.search(r"#### (\-?[0-9\.\,]+)", answer).group(1).replace(",", "")
    return {
        "data_source": "openai/gsm8k",
        "prompt": [{"role": "user", "content": f"{question} {GSM8K_INSTRUCTION}"}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": solution},
        "extra_info": {"split": split, "index": index},
    }
