# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
# shellcheck shell=bash
# Helpers shared by the install profiles; sourced from the repository root, never run directly.

VENV=.venv
VENV_PYTHON=$VENV/bin/python

die() {
    echo "error: $*" >&2
    exit 1
}

# Create .venv with the given interpreter unless it exists; check its Python is 3.10 to 3.<max_minor>.
ensure_venv() {
    local python=$1 max_minor=${2:-99}
    if [ ! -x "$VENV_PYTHON" ]; then
        command -v "$python" >/dev/null || die "$python not found; install it or set PYTHON=/path/to/python3"
        echo "creating $VENV with $python"
        "$python" -m venv "$VENV" || die "'$python -m venv' failed; install the venv module (e.g. apt-get install python3-venv)"
    fi
    "$VENV_PYTHON" -c "import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, $max_minor))" \
        || die "$VENV has $("$VENV_PYTHON" -V 2>&1), this profile needs 3.10 to 3.$max_minor: remove $VENV, set PYTHON, rerun"
}

pip_install() {
    "$VENV_PYTHON" -m pip install --disable-pip-version-check "$@"
}

# The stamp records what the last complete install of a profile was made from: the given files
# (constraints, profile script), pyproject.toml and these helpers. Unchanged inputs: nothing to do.
_stamp_file() { echo "$VENV/.rllm_fully_async-$1.stamp"; }
_inputs_hash() { cat "$@" pyproject.toml install/common.sh | sha256sum | cut -d' ' -f1; }

stamp_matches() {
    local profile=$1
    shift
    [ -f "$(_stamp_file "$profile")" ] && [ "$(cat "$(_stamp_file "$profile")")" = "$(_inputs_hash "$@")" ]
}

write_stamp() {
    local profile=$1
    shift
    _inputs_hash "$@" >"$(_stamp_file "$profile")"
}

# Patch the installed verl 0.7.1 (idempotent) and verify it; training refuses to start without it.
apply_verl_patch() {
    "$VENV_PYTHON" -m rllm_fully_async.patches apply
    "$VENV_PYTHON" -m rllm_fully_async.patches check
}

# Fail early, before any download, on a machine that cannot run the GPU profiles.
require_nvidia_gpu() {
    local min_cuda=$1 cuda
    command -v nvidia-smi >/dev/null \
        || die "nvidia-smi not found: this profile needs an NVIDIA GPU and driver (use install/cpu.sh without one)"
    nvidia-smi -L >/dev/null 2>&1 \
        || die "nvidia-smi cannot talk to the driver: $(nvidia-smi 2>&1 | head -n 1)"
    cuda=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9][0-9.]*\).*/\1/p' | head -n 1)
    [ -n "$cuda" ] || die "cannot read the driver's CUDA version from nvidia-smi"
    version_at_least "$cuda" "$min_cuda" \
        || die "the NVIDIA driver supports CUDA $cuda; torch 2.9.1 needs CUDA >= $min_cuda: upgrade the driver"
    echo "GPU: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -n 1), CUDA $cuda"
}

# A CUDA toolkit is needed only where something is compiled against the installed torch; torch
# refuses to build extensions with an nvcc of another CUDA major version than its own.
require_nvcc() {
    local min_cuda=$1 major=${1%%.*} nvcc version
    nvcc=${CUDA_HOME:-/usr/local/cuda}/bin/nvcc
    [ -x "$nvcc" ] || nvcc=$(command -v nvcc) \
        || die "nvcc not found: install a CUDA $major.x toolkit >= $min_cuda and set CUDA_HOME"
    version=$("$nvcc" --version | sed -n 's/.*release \([0-9][0-9.]*\),.*/\1/p')
    if ! version_at_least "$version" "$min_cuda" || [ "${version%%.*}" != "$major" ]; then
        die "$nvcc is CUDA $version; torch 2.9.1 extensions need a CUDA $major.x toolkit >= $min_cuda (set CUDA_HOME)"
    fi
    CUDA_HOME=$(dirname "$(dirname "$nvcc")")
    export CUDA_HOME
}

version_at_least() {
    [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]
}
