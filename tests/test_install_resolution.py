# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Each GPU install profile's pins resolve against PyPI's metadata for the GPU platform.

Needs network access to PyPI (``network`` marker); nothing is installed or built. pip resolves what
``install/gpu-*.sh`` install, with their constraints files, as a dry run for Linux x86_64 / CPython 3.11
from binary wheels only, so that it never runs a package's setup code (``--only-binary=:all:``, which
pip requires together with ``--platform``). One resolution covers both profiles. pip's HTTP cache keeps
the wheels' metadata between runs, but it revalidates ~300 index pages one by one, so a run takes minutes
(``slow``): 6 to 8 minutes on a loaded 2-core machine, cold or warm.

Packages that PyPI has only as source (flash-attn, transformer-engine-torch, and a few pure-Python
dependencies) cannot take part in a binary-only resolution. Each is checked to exist on PyPI at the pinned
version as a source distribution, and is stood in for by a local stub wheel that declares the dependencies
its source distribution declares (copied below from its setup.py / PKG-INFO), so the rest of the tree,
its own requirements included, is resolved for real.

Without PyPI the tests skip, unless ``RLLM_FULLY_ASYNC_NETWORK_TESTS=required`` (CI) makes that a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
INDEX = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple")
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(28, 16, -1)] + ["manylinux2014_x86_64"]
PYTHON_VERSION = "3.11"

# Source-only distributions in the GPU profiles' trees, with the requirements their sdists declare.
SDIST_ONLY = {
    # flash-attn 2.8.3 setup.py: install_requires
    "flash-attn": ("2.8.3", ["torch", "einops"]),
    # transformer_engine_torch-2.10.0/PKG-INFO: Requires-Dist
    "transformer-engine-torch": (
        "2.10.0",
        ["torch>=2.1", "einops", "onnxscript", "onnx", "transformer_engine_cu12==2.10.0"],
    ),
    # hydra-core's antlr4-python3-runtime==4.9.* and verl's pylatexenc: pure Python, sdist only
    "antlr4-python3-runtime": ("4.9.3", []),
    "pylatexenc": ("2.10", []),
}

FSDP_PROFILE = ["torch", "torchvision", "torchaudio", "sglang", "sglang-router", "flash-attn"]

pytestmark = [pytest.mark.network, pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def pypi_reachable() -> None:
    try:
        urllib.request.urlopen(f"{INDEX.rstrip('/')}/pip/", timeout=15).close()
    except OSError as err:
        if os.environ.get("RLLM_FULLY_ASYNC_NETWORK_TESTS") == "required":
            pytest.fail(f"PyPI ({INDEX}) unreachable: {err}")
        pytest.skip(f"needs PyPI ({INDEX}): {err}")


def pip(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """pip without this machine's pip configuration (--isolated), against ``INDEX`` alone."""
    cmd = [sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def stub_wheel(directory: Path, name: str, version: str, requires: list[str]) -> None:
    dist = f"{name.replace('-', '_')}-{version}"
    meta = "\n".join(
        ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
        + [f"Requires-Dist: {r}" for r in requires]
    )
    wheel = (
        "Wheel-Version: 1.0\nGenerator: rllm_fully_async-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    with zipfile.ZipFile(directory / f"{dist}-py3-none-any.whl", "w") as zf:
        zf.writestr(f"{dist}.dist-info/METADATA", meta + "\n")
        zf.writestr(f"{dist}.dist-info/WHEEL", wheel)
        zf.writestr(f"{dist}.dist-info/RECORD", "")


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("sdist_stubs")
    for name, (version, requires) in SDIST_ONLY.items():
        stub_wheel(directory, name, version, requires)
    return directory


def project_requirements() -> list[str]:
    """What ``pip install -e ".[test]"`` asks for."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"]) + list(project["optional-dependencies"]["test"])


def resolve(requirements: list[str], constraints: Path, stubs: Path, tmp_path: Path) -> dict[str, str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    report = tmp_path / "report.json"
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    proc = pip(
        "install", "--dry-run", "--ignore-installed", "--only-binary=:all:", *platforms,
        "--python-version", PYTHON_VERSION, "--target", str(tmp_path / "target"),
        "--index-url", INDEX, "--find-links", str(stubs), "--report", str(report),
        "-c", str(constraints), *requirements,
    )  # fmt: skip
    assert proc.returncode == 0, f"{constraints.name} does not resolve:\n{proc.stderr[-4000:]}"
    installs = json.loads(report.read_text())["install"]
    return {
        item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"] for item in installs
    }


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            name, version = line.split("==")
            out[name.strip().lower().replace("_", "-")] = version.strip()
    return out


def test_source_only_pins_exist_on_pypi():
    """The stubs stand for real source distributions at the pinned versions."""
    for name, (version, _) in SDIST_ONLY.items():
        proc = pip("index", "versions", name, "--index-url", INDEX, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert version in proc.stdout.split("Available versions:", 1)[1].replace(",", " ").split(), (
            f"{name}=={version} is not on {INDEX}"
        )
    fsdp = pins(ROOT / "install/constraints-fsdp-sglang.txt")
    megatron = pins(ROOT / "install/constraints-megatron-sglang.txt")
    assert fsdp["flash-attn"] == SDIST_ONLY["flash-attn"][0]
    assert megatron["transformer-engine-torch"] == SDIST_ONLY["transformer-engine-torch"][0]


def test_gpu_profiles_resolve(stubs, tmp_path):
    """One resolution covers both profiles: the Megatron profile is the FSDP one plus TransformerEngine,
    megatron-core and mbridge under the same pins, so when it resolves, so does the FSDP profile alone.
    Only when it does not is the FSDP profile resolved on its own, to name the profile at fault."""
    fsdp = ROOT / "install/constraints-fsdp-sglang.txt"
    megatron = ROOT / "install/constraints-megatron-sglang.txt"
    # install/gpu-fsdp-sglang.sh: torch trio, sglang + router, this package with [test], flash-attn
    fsdp_wanted = [*FSDP_PROFILE, *project_requirements()]
    # install/gpu-megatron-sglang.sh adds TransformerEngine, megatron-core and mbridge
    megatron_wanted = [
        *fsdp_wanted,
        "pybind11",
        "transformer-engine[pytorch]",
        "megatron-core",
        "mbridge[megatron]",
    ]
    try:
        resolved = resolve(megatron_wanted, megatron, stubs, tmp_path / "megatron")
    except AssertionError as megatron_error:
        resolve(fsdp_wanted, fsdp, stubs, tmp_path / "fsdp")  # raises if the FSDP profile is at fault
        raise AssertionError(
            f"the FSDP profile resolves, the Megatron profile does not: {megatron_error}"
        ) from None
    for name, version in {**pins(fsdp), **pins(megatron)}.items():
        assert resolved.get(name) == version, f"{name}: pinned {version}, resolved {resolved.get(name)}"


def test_cudnn_override_has_a_wheel_for_the_gpu_platform(tmp_path):
    """Installed with --no-deps over torch's pin, so it needs a binary wheel of its own."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    proc = pip(
        "install", "--dry-run", "--ignore-installed", "--no-deps", "--only-binary=:all:", *platforms,
        "--python-version", PYTHON_VERSION, "--target", str(tmp_path / "target"), "--index-url", INDEX,
        "-r", str(ROOT / "install/overrides-gpu.txt"), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "nvidia-cudnn-cu12-9.16.0.29" in proc.stdout
