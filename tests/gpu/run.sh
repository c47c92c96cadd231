#!/usr/bin/env bash
# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
# GPU acceptance on one node with >= 2 GPUs, after install/gpu-fsdp-sglang.sh (and, for the Megatron test,
# install/gpu-megatron-sglang.sh): every `gpu`-marked test, skipped ones listed with what they lack.
# Downloads Qwen/Qwen2.5-0.5B-Instruct and GSM8K from the Hugging Face hub unless RLLM_GPU_TEST_MODEL (a
# directory) and RLLM_GPU_TEST_GSM8K_DIR (verl-format train.parquet / test.parquet) point at local copies.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || { echo "error: $python not found: run install/gpu-fsdp-sglang.sh first" >&2; exit 1; }
command -v nvidia-smi >/dev/null && nvidia-smi -L \
    || { echo "error: no NVIDIA GPU visible (nvidia-smi)" >&2; exit 1; }
exec "$python" -m pytest -m gpu -rs -v tests "$@"
