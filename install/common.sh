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
# refuses to build CUDA extensions with an nvcc of another CUDA major version than its own (12 for the
# PyPI torch 2.9.1 wheels).
require_nvcc() {
    local min_cuda=$1 major=${1%%.*} nvcc version
    nvcc=${CUDA_HOME:-/usr/local/cuda}/bin/nvcc
    [ -x "$nvcc" ] || nvcc=$(command -v nvcc) \
        || die "nvcc not found: install a CUDA $major.x toolkit >= $min_cuda (NVIDIA's cuda-toolkit-$major-x package or runfile) and set CUDA_HOME${2:+; $2}"
    version=$("$nvcc" --version | sed -n 's/.*release \([0-9][0-9.]*\),.*/\1/p')
    if ! version_at_least "$version" "$min_cuda" || [ "${version%%.*}" != "$major" ]; then
        die "$nvcc is CUDA $version; torch 2.9.1 extensions need a CUDA $major.x toolkit >= $min_cuda (set CUDA_HOME)${2:+; $2}"
    fi
    CUDA_HOME=$(dirname "$(dirname "$nvcc")")
    export CUDA_HOME
    echo "CUDA toolkit: $CUDA_HOME (nvcc $version)"
}

# Compiling a torch extension also needs a C++ compiler and the venv interpreter's Python.h.
require_build_tools() {
    local include
    command -v c++ >/dev/null \
        || die "no C++ compiler (c++) found: install one (e.g. apt-get install build-essential)${1:+; $1}"
    include=$("$VENV_PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
    [ -f "$include/Python.h" ] \
        || die "$include/Python.h not found: install the headers of $("$VENV_PYTHON" -V 2>&1) (e.g. apt-get install python3.X-dev)${1:+; $1}"
}

# flash-attn 2.8.3 is on PyPI only as source, and its setup finds no prebuilt wheel for torch 2.9 on its
# GitHub releases either, so FLASH_ATTN=build (the default) compiles it: 72 CUDA sources per GPU
# architecture. Everything the compile needs is checked here, before any download, and the expected
# duration is printed. FLASH_ATTN=skip installs without it: verl then trains with PyTorch's SDPA
# attention and padded micro-batches (actor_rollout_ref.model.use_remove_padding=False), which spends
# compute and memory on pad tokens that verl's remove-padding (sequence packing) path avoids
# (verl docs/perf/perf_tuning.rst, "Enable remove padding").
# Sets FLASH_ATTN_CUDA_ARCHS (the GPUs present) and MAX_JOBS for the build.
FLASH_ATTN_GB_PER_JOB=9 # flash-attn's setup.py: "each JOB peak memory cost is ~8-9GB when threads = 4"
plan_flash_attn() {
    local skip="or set FLASH_ATTN=skip to install without flash-attn (SDPA attention, use_remove_padding=False)"
    local caps cap archs="" n_archs=0 min_cuda=12.0 cores avail_gb jobs parallel low high
    case "${FLASH_ATTN:=build}" in
        skip)
            echo "flash-attn: not installed (FLASH_ATTN=skip). Train with actor_rollout_ref.model.use_remove_padding=False;"
            echo "  the model then runs on SDPA attention over padded micro-batches (slower than verl's sequence packing)."
            return 0
            ;;
        build) ;;
        *) die "FLASH_ATTN=$FLASH_ATTN: use FLASH_ATTN=build (compile flash-attn 2.8.3) or FLASH_ATTN=skip" ;;
    esac
    caps=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | sort -u)
    for cap in $caps; do
        case "${cap%%.*}" in
            8) archs="$archs;80" ;;
            9) archs="$archs;90" ;;
            10) archs="$archs;100" min_cuda=12.8 ;;
            12) archs="$archs;120" min_cuda=12.8 ;;
            *) die "GPU compute capability $cap: flash-attn 2.8.3 builds for 8.x, 9.0, 10.x and 12.x only; $skip" ;;
        esac
    done
    FLASH_ATTN_CUDA_ARCHS=$(echo "${archs#;}" | tr ';' '\n' | sort -u | paste -sd';')
    n_archs=$(echo "$FLASH_ATTN_CUDA_ARCHS" | tr ';' '\n' | wc -l)
    require_nvcc "$min_cuda" "$skip"
    require_build_tools "$skip"
    cores=$(nproc)
    avail_gb=$(($(sed -n 's/^MemAvailable: *\([0-9]*\) kB/\1/p' /proc/meminfo) / 1024 / 1024))
    [ "$avail_gb" -ge "$FLASH_ATTN_GB_PER_JOB" ] \
        || die "${avail_gb} GB of memory available; one flash-attn compile job peaks at ~${FLASH_ATTN_GB_PER_JOB} GB: free memory, $skip"
    jobs=${MAX_JOBS:-$(((cores / 2) < (avail_gb / FLASH_ATTN_GB_PER_JOB) ? cores / 2 : avail_gb / FLASH_ATTN_GB_PER_JOB))}
    [ "$jobs" -ge 1 ] || jobs=1
    [ $((jobs * FLASH_ATTN_GB_PER_JOB)) -le "$avail_gb" ] \
        || die "MAX_JOBS=$jobs compile jobs need ~$((jobs * FLASH_ATTN_GB_PER_JOB)) GB, ${avail_gb} GB available: lower MAX_JOBS to $((avail_gb / FLASH_ATTN_GB_PER_JOB)), $skip"
    MAX_JOBS=$jobs
    export MAX_JOBS FLASH_ATTN_CUDA_ARCHS
    # Upstream's figure (flash-attn README): 3-5 minutes on a 64-core machine for its 4 default
    # architectures, i.e. ~50-80 core-minutes per architecture; nvcc runs up to 4 threads per job,
    # one per architecture.
    parallel=$((jobs * (n_archs < 4 ? n_archs : 4)))
    [ "$parallel" -le "$cores" ] || parallel=$cores
    low=$(((n_archs * 50 + parallel - 1) / parallel))
    high=$(((n_archs * 80 + parallel - 1) / parallel))
    # No faster than upstream's own figure: the slowest kernels compile one job each, whatever the cores.
    [ "$low" -ge 3 ] || low=3
    [ "$high" -ge 5 ] || high=5
    echo "flash-attn 2.8.3: compiled here for sm ${FLASH_ATTN_CUDA_ARCHS} with MAX_JOBS=$jobs ($cores cores, ${avail_gb} GB free):"
    echo "  expect roughly ${low}-${high} minutes (scaled from flash-attn's 3-5 minutes on 64 cores). $skip to avoid it."
}

# SGLang 0.5.6 refuses to serve a multimodal model on torch 2.9.1 with a cuDNN older than 9.15 (nn.Conv3d
# bug, pytorch#168167; sglang/srt/server_args.py check_torch_2_9_1_cudnn_compatibility) and names this
# fix; torch 2.9.1 itself pins nvidia-cudnn-cu12==9.10.2.21, so the newer cuDNN is installed last, without
# dependencies, after every step that could resolve torch's pin again (pip check reports the override).
CUDNN_OVERRIDE=install/overrides-gpu.txt
apply_cudnn_override() {
    pip_install --no-deps -r "$CUDNN_OVERRIDE"
    "$VENV_PYTHON" -c '
import torch
v = torch.backends.cudnn.version()
assert v is not None and v >= 91500, f"cuDNN {v} loaded; SGLang 0.5.6 needs >= 9.15 (91500) with torch 2.9.1"
print(f"cuDNN {v}")'
}

version_at_least() {
    [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]
}
