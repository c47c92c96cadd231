#!/usr/bin/env bash
# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
# FSDP + SGLang GPU profile: training with verl's FSDP workers, rollout on SGLang servers.
# Needs Linux x86_64, an NVIDIA GPU whose driver supports CUDA >= 12.8, and Python 3.10-3.12
# (PYTHON=python3.12 to choose). No CUDA toolkit is needed: every CUDA package is a prebuilt wheel.
# Order follows verl's install guide: the inference engine first, with the torch it pins (2.9.1),
# then verl and this package, then flash-attn built against that torch; last, the verl patch.
# Safe to rerun: with unchanged pins pip is skipped and only the verl patch is applied and checked.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=install/common.sh
source install/common.sh

PROFILE=fsdp-sglang
CONSTRAINTS=install/constraints-fsdp-sglang.txt

require_nvidia_gpu 12.8
ensure_venv "${PYTHON:-python3}" 12
if stamp_matches "$PROFILE" "$CONSTRAINTS" install/gpu-fsdp-sglang.sh; then
    echo "fsdp-sglang profile up to date ($VENV)"
else
    pip_install --upgrade pip
    pip_install setuptools wheel packaging ninja psutil  # flash-attn's build needs them in the venv
    # PyPI's torch 2.9.1 wheels for Linux x86_64 are the CUDA 12.8 build.
    pip_install torch torchvision torchaudio -c "$CONSTRAINTS"
    pip_install sglang sglang-router -c "$CONSTRAINTS"
    pip_install -e ".[test]" -c "$CONSTRAINTS"
    # flash-attn's setup downloads its prebuilt wheel for torch 2.9 / CUDA 12 / C++11 ABI from the
    # project's GitHub releases; it must see the installed torch, hence no build isolation. Where that
    # download is blocked it compiles instead (hours; needs a CUDA 12.x nvcc; MAX_JOBS bounds it).
    MAX_JOBS=${MAX_JOBS:-8} pip_install --no-build-isolation flash-attn -c "$CONSTRAINTS"
    "$VENV_PYTHON" - <<'PY'
from importlib.metadata import version

import flash_attn, sglang, torch, verl  # noqa: F401  (each must import)

assert torch.cuda.is_available(), "torch cannot see a CUDA device"
print(", ".join(f"{name} {version(name)}" for name in ("torch", "sglang", "flash-attn", "verl")))
PY
    write_stamp "$PROFILE" "$CONSTRAINTS" install/gpu-fsdp-sglang.sh
fi
apply_verl_patch
