#!/usr/bin/env bash
# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
# FSDP + SGLang GPU profile: training with verl's FSDP workers, rollout on SGLang servers.
# Needs Linux x86_64, an NVIDIA GPU whose driver supports CUDA >= 12.8, Python 3.10-3.12 (PYTHON=python3.12
# to choose), and, for flash-attn (FLASH_ATTN=build, the default), what compiling it takes: a CUDA 12.x
# toolkit (nvcc; CUDA_HOME, default /usr/local/cuda; >= 12.8 for Blackwell GPUs), a C++ compiler, the
# Python headers and ~9 GB of free memory per compile job. flash-attn has no prebuilt wheel for torch 2.9
# (see plan_flash_attn in common.sh); FLASH_ATTN=skip installs without it. Every prerequisite is checked
# before the first download, and the expected compile time is printed.
# Order follows verl's install guide: the inference engine first, with the torch it pins (2.9.1), then verl
# and this package, then flash-attn built against that torch, then the cuDNN SGLang asks for; last, the
# verl patch. Safe to rerun: with unchanged pins pip is skipped and only the verl patch is applied/checked.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=install/common.sh
source install/common.sh

FLASH_ATTN=${FLASH_ATTN:-build}
PROFILE=fsdp-sglang-flash-attn-$FLASH_ATTN
CONSTRAINTS=install/constraints-fsdp-sglang.txt

require_nvidia_gpu 12.8
ensure_venv "${PYTHON:-python3}" 12
if stamp_matches "$PROFILE" "$CONSTRAINTS" "$CUDNN_OVERRIDE" install/gpu-fsdp-sglang.sh; then
    echo "fsdp-sglang profile up to date ($VENV)"
else
    plan_flash_attn
    pip_install --upgrade pip
    pip_install setuptools wheel packaging ninja psutil # flash-attn's build needs them in the venv
    # PyPI's torch 2.9.1 wheels for Linux x86_64 are the CUDA 12.8 build.
    pip_install torch torchvision torchaudio -c "$CONSTRAINTS"
    pip_install sglang sglang-router -c "$CONSTRAINTS"
    pip_install -e ".[test]" -c "$CONSTRAINTS"
    if [ "$FLASH_ATTN" = build ]; then
        # Built against the installed torch, hence no build isolation; FORCE_BUILD skips setup's download
        # attempt from GitHub, which has no wheel for torch 2.9 and may be unreachable.
        start=$SECONDS
        FLASH_ATTENTION_FORCE_BUILD=TRUE pip_install --no-build-isolation flash-attn -c "$CONSTRAINTS"
        echo "flash-attn compiled in $(((SECONDS - start) / 60)) min"
    fi
    "$VENV_PYTHON" - "$FLASH_ATTN" <<'PY'
import importlib
import sys
from importlib.metadata import version

names = ["torch", "sglang", "verl"] + (["flash_attn"] if sys.argv[1] == "build" else [])
for name in names:
    importlib.import_module(name)  # each must import
import torch

assert torch.cuda.is_available(), "torch cannot see a CUDA device"
print(", ".join(f"{name} {version(name.replace('_', '-'))}" for name in names))
PY
    write_stamp "$PROFILE" "$CONSTRAINTS" "$CUDNN_OVERRIDE" install/gpu-fsdp-sglang.sh
fi
apply_cudnn_override # after every step that may have resolved torch's own cuDNN pin again
apply_verl_patch
