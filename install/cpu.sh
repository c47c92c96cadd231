#!/usr/bin/env bash
# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
# CPU profile: the test suite and the CPU demo, on any Linux x86_64 machine with Python 3.11 and pip.
# Creates .venv in the repository root, installs the pinned stack, patches verl. Safe to rerun: with
# unchanged pins pip is skipped and only the (idempotent) verl patch is applied and checked.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=install/common.sh
source install/common.sh

PROFILE=cpu
CONSTRAINTS=install/constraints-cpu.txt
ensure_venv "${PYTHON:-python3.11}"
if stamp_matches "$PROFILE" "$CONSTRAINTS" install/cpu.sh; then
    echo "cpu profile up to date ($VENV)"
else
    # torch first, alone and pinned to the CPU build, so that no later requirement pulls a CUDA torch.
    # Without a local wheel (this machine's pip config finds one), set TORCH_INDEX_URL to PyTorch's CPU index.
    pip_install "torch==2.13.0+cpu" -c "$CONSTRAINTS" ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"}
    pip_install -e ".[test]" -c "$CONSTRAINTS"
    write_stamp "$PROFILE" "$CONSTRAINTS" install/cpu.sh
fi
apply_verl_patch
