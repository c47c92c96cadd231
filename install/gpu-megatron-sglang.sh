#!/usr/bin/env bash
# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
# Megatron + SGLang GPU profile: the FSDP + SGLang profile plus Megatron-Core, TransformerEngine and
# mbridge, as in verl 0.7.x's stable SGLang image (Megatron-LM core_v0.15.0, TransformerEngine 2.10).
# TransformerEngine's torch extension is compiled here against torch 2.9.1, so this profile also needs
# a CUDA toolkit >= 12.8 (nvcc; CUDA_HOME, default /usr/local/cuda). The compile takes a long time;
# MAX_JOBS bounds its parallelism. NVIDIA Apex, optional for Megatron in verl, is not installed.
# Safe to rerun: with unchanged pins pip is skipped and only the verl patch is applied and checked.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=install/common.sh
source install/common.sh

PROFILE=megatron-sglang
CONSTRAINTS=install/constraints-megatron-sglang.txt

require_nvidia_gpu 12.8
require_nvcc 12.8
bash install/gpu-fsdp-sglang.sh
if stamp_matches "$PROFILE" "$CONSTRAINTS" install/constraints-fsdp-sglang.txt install/gpu-megatron-sglang.sh; then
    echo "megatron-sglang profile up to date ($VENV)"
else
    pip_install pybind11 -c "$CONSTRAINTS"
    NVTE_FRAMEWORK=pytorch MAX_JOBS=${MAX_JOBS:-8} \
        pip_install --no-build-isolation "transformer-engine[pytorch]" -c "$CONSTRAINTS"
    pip_install megatron-core "mbridge[megatron]" -c "$CONSTRAINTS"
    "$VENV_PYTHON" - <<'PY'
from importlib.metadata import version

import mbridge, megatron.core, transformer_engine.pytorch  # noqa: F401  (each must import)

print(", ".join(f"{name} {version(name)}" for name in ("megatron-core", "transformer-engine", "mbridge")))
PY
    write_stamp "$PROFILE" "$CONSTRAINTS" install/constraints-fsdp-sglang.txt install/gpu-megatron-sglang.sh
fi
apply_verl_patch
