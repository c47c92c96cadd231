#!/usr/bin/env bash
# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
# Megatron + SGLang GPU profile: the FSDP + SGLang profile plus Megatron-Core, TransformerEngine and
# mbridge, as in verl 0.7.x's stable SGLang image (Megatron-LM core_v0.15.0, TransformerEngine 2.10).
# TransformerEngine's CUDA kernels come prebuilt (transformer-engine-cu12); its torch binding
# (transformer-engine-torch, source only on PyPI) is compiled here against torch 2.9.1: 28 C++ files, no
# CUDA code, built against the CUDA toolkit's headers (cuda.h, cublasLt.h; CUDA_HOME, default
# /usr/local/cuda; TransformerEngine needs >= 12.0, this profile asks 12.8 like torch's build) and
# <cudnn.h>, taken from the toolkit when it has one, else from the nvidia-cudnn-cu12 wheel torch installs.
# Toolkit, compiler and Python headers are checked before anything is downloaded (and so is everything the
# FSDP profile's flash-attn build needs). NVIDIA Apex, optional for Megatron in verl, is not installed.
# Safe to rerun: with unchanged pins pip is skipped and only the verl patch is applied and checked.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=install/common.sh
source install/common.sh

PROFILE=megatron-sglang
CONSTRAINTS=install/constraints-megatron-sglang.txt
INPUTS=(install/constraints-fsdp-sglang.txt "$CUDNN_OVERRIDE" install/gpu-megatron-sglang.sh)

require_nvidia_gpu 12.8
ensure_venv "${PYTHON:-python3}" 12
if ! stamp_matches "$PROFILE" "$CONSTRAINTS" "${INPUTS[@]}"; then
    require_nvcc 12.8
    require_build_tools
fi
bash install/gpu-fsdp-sglang.sh
if stamp_matches "$PROFILE" "$CONSTRAINTS" "${INPUTS[@]}"; then
    echo "megatron-sglang profile up to date ($VENV)"
else
    pip_install pybind11 -c "$CONSTRAINTS"
    # A toolkit's include directory without cudnn.h: gcc finds the cuDNN wheel's headers here instead.
    cudnn_include=$("$VENV_PYTHON" -c 'import nvidia.cudnn, os; print(os.path.join(nvidia.cudnn.__path__[0], "include"))')
    [ -f "$CUDA_HOME/include/cudnn.h" ] || [ -f "$cudnn_include/cudnn.h" ] \
        || die "no cudnn.h in $CUDA_HOME/include or $cudnn_include"
    CPLUS_INCLUDE_PATH="$cudnn_include${CPLUS_INCLUDE_PATH:+:$CPLUS_INCLUDE_PATH}" NVTE_FRAMEWORK=pytorch \
        MAX_JOBS=${MAX_JOBS:-8} pip_install --no-build-isolation "transformer-engine[pytorch]" -c "$CONSTRAINTS"
    pip_install megatron-core "mbridge[megatron]" -c "$CONSTRAINTS"
    "$VENV_PYTHON" - <<'PY'
from importlib.metadata import version

import mbridge, megatron.core, transformer_engine.pytorch  # noqa: F401  (each must import)

print(", ".join(f"{name} {version(name)}" for name in ("megatron-core", "transformer-engine", "mbridge")))
PY
    write_stamp "$PROFILE" "$CONSTRAINTS" "${INPUTS[@]}"
fi
apply_cudnn_override # after every step that may have resolved torch's own cuDNN pin again
apply_verl_patch
