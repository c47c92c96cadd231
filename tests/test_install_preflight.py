# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The GPU install scripts stop before any download, naming what is missing, on a machine without it.

Each script runs from a copy of install/ with a PATH that holds only the basic tools it uses, so the
real machine's nvidia-smi or nvcc (if any) stay out of sight; where a GPU must be seen, a stand-in
``nvidia-smi`` prints a driver's answer. pip's index points at a closed port: a download attempt would
fail differently, and the assertions check that none was made.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ["bash", "sed", "sort", "head", "cat", "cut", "dirname", "sha256sum", "tr", "paste", "wc", "nproc"]
NVIDIA_SMI = """#!/bin/sh
case "$*" in
  -L) echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)" ;;
  *compute_cap*) echo "9.0" ;;
  *name,driver_version*) echo "NVIDIA H100 80GB HBM3, 570.86.15" ;;
  *) echo "| NVIDIA-SMI 570.86.15    Driver Version: 570.86.15    CUDA Version: 12.8 |" ;;
esac
"""


def make_bin(directory: Path, *, gpu: bool, nvcc: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for tool in TOOLS:
        os.symlink(shutil.which(tool), directory / tool)
    if gpu:
        (directory / "nvidia-smi").write_text(NVIDIA_SMI)
        (directory / "nvidia-smi").chmod(0o755)
    if nvcc is not None:
        (directory / "nvcc").write_text(
            f"#!/bin/sh\necho 'Cuda compilation tools, release {nvcc}, V{nvcc}.0'\n"
        )
        (directory / "nvcc").chmod(0o755)
    return directory


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """install/ and pyproject.toml, where the scripts would create .venv."""
    root = tmp_path_factory.mktemp("checkout")
    shutil.copytree(ROOT / "install", root / "install")
    shutil.copy(ROOT / "pyproject.toml", root)
    return root


def run_script(checkout: Path, script: str, bin_dir: Path, **env: str) -> subprocess.CompletedProcess:
    base = {
        "PATH": str(bin_dir),
        "HOME": str(checkout),
        "CUDA_HOME": str(checkout / "no-cuda"),  # not /usr/local/cuda, whatever this machine has
        "PYTHON": sys._base_executable,  # a 3.10-3.12 interpreter for the venv
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_RETRIES": "0",
        "PIP_TIMEOUT": "2",
    }
    return subprocess.run(
        ["bash", f"install/{script}"],
        cwd=checkout,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=300,
        executable=shutil.which("bash"),
    )


def assert_nothing_downloaded(checkout: Path, proc: subprocess.CompletedProcess) -> None:
    out = proc.stdout + proc.stderr
    assert "Collecting" not in out and "Downloading" not in out and "pip install" not in out, out
    # the venv itself is made offline (ensurepip); no distribution may have been added to it
    installed = {
        p.name.split("-")[0].lower() for p in checkout.glob(".venv/lib/python3*/site-packages/*.dist-info")
    }
    assert installed <= {"pip", "setuptools"}, installed
    assert not list(checkout.glob(".venv/.rllm_fully_async-*.stamp"))


@pytest.mark.parametrize("script", ["gpu-fsdp-sglang.sh", "gpu-megatron-sglang.sh"])
def test_no_gpu_driver_stops_first(checkout, tmp_path, script):
    proc = run_script(checkout, script, make_bin(tmp_path / "bin", gpu=False))
    assert proc.returncode == 1
    assert "error: nvidia-smi not found" in proc.stderr and "install/cpu.sh" in proc.stderr
    assert not (checkout / ".venv").exists()


@pytest.mark.parametrize("script", ["gpu-fsdp-sglang.sh", "gpu-megatron-sglang.sh"])
def test_no_cuda_toolkit_stops_before_downloads(checkout, tmp_path, script):
    proc = run_script(checkout, script, make_bin(tmp_path / "bin", gpu=True))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "error: nvcc not found: install a CUDA 12.x toolkit >= 12" in proc.stderr
    if script == "gpu-fsdp-sglang.sh":
        assert "FLASH_ATTN=skip" in proc.stderr  # the way out without a toolkit
    assert_nothing_downloaded(checkout, proc)


def test_toolkit_of_another_cuda_major_is_refused(checkout, tmp_path):
    bin_dir = make_bin(tmp_path / "bin", gpu=True, nvcc="11.8")
    proc = run_script(checkout, "gpu-fsdp-sglang.sh", bin_dir)
    assert proc.returncode == 1
    assert "is CUDA 11.8; torch 2.9.1 extensions need a CUDA 12.x toolkit" in proc.stderr
    assert_nothing_downloaded(checkout, proc)


def test_missing_compiler_stops_before_downloads(checkout, tmp_path):
    proc = run_script(checkout, "gpu-fsdp-sglang.sh", make_bin(tmp_path / "bin", gpu=True, nvcc="12.8"))
    assert proc.returncode == 1
    assert "error: no C++ compiler (c++) found" in proc.stderr
    assert_nothing_downloaded(checkout, proc)


def python_headers_present() -> bool:
    import sysconfig

    return (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file()


def available_gb() -> int:
    meminfo = Path("/proc/meminfo").read_text().split("MemAvailable:")[1]
    return int(meminfo.split()[0]) // 1024 // 1024


needs_build_host = pytest.mark.skipif(
    not python_headers_present() or shutil.which("c++") is None or available_gb() < 9,
    reason="needs Python.h, a C++ compiler and 9 GB of free memory (what the flash-attn build checks for)",
)


@needs_build_host
def test_too_many_compile_jobs_for_the_memory_stop_before_downloads(checkout, tmp_path):
    bin_dir = make_bin(tmp_path / "bin", gpu=True, nvcc="12.8")
    os.symlink(shutil.which("c++"), bin_dir / "c++")
    proc = run_script(checkout, "gpu-fsdp-sglang.sh", bin_dir, MAX_JOBS="100000")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "MAX_JOBS=100000 compile jobs need ~900000 GB" in proc.stderr and "lower MAX_JOBS" in proc.stderr
    assert_nothing_downloaded(checkout, proc)


@needs_build_host
def test_flash_attn_build_plan_states_its_duration_and_skip_needs_no_toolkit(checkout, tmp_path):
    """With everything present the plan is printed before pip runs; FLASH_ATTN=skip goes on without nvcc."""
    bin_dir = make_bin(tmp_path / "bin", gpu=True, nvcc="12.8")
    os.symlink(shutil.which("c++"), bin_dir / "c++")
    proc = run_script(checkout, "gpu-fsdp-sglang.sh", bin_dir, MAX_JOBS="1")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0  # pip cannot reach the closed index
    assert "flash-attn 2.8.3: compiled here for sm 90 with MAX_JOBS=1" in proc.stdout
    assert "expect roughly 50-80 minutes" in proc.stdout, out  # 1 arch, 1 job

    proc = run_script(
        checkout, "gpu-fsdp-sglang.sh", make_bin(tmp_path / "bin2", gpu=True), FLASH_ATTN="skip"
    )
    assert "flash-attn: not installed (FLASH_ATTN=skip)" in proc.stdout, proc.stdout + proc.stderr
    assert "nvcc" not in proc.stderr
