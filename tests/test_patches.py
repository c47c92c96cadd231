# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""``python -m rllm_fully_async.patches`` on copies of verl 0.7.1's dp_actor.py, never the installed one."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rllm_fully_async import patches
from rllm_fully_async.paths import patches_dir


def original_dp_actor() -> str:
    """verl 0.7.1's original dp_actor.py, whether or not the installed verl is patched."""
    text = (patches.default_target() / patches.TARGET_FILE).read_text(encoding="utf-8")
    return text if patches.patch_state() == patches.ORIGINAL else patches.original_text(text)


@pytest.fixture
def verl_copy(tmp_path: Path) -> Path:
    """A verl package root holding the two files the command reads: dp_actor.py and version/version."""
    root = tmp_path / "site-packages" / "verl"
    (root / "workers" / "actor").mkdir(parents=True)
    (root / "version").mkdir()
    (root / patches.TARGET_FILE).write_text(original_dp_actor(), encoding="utf-8")
    (root / "version" / "version").write_text("0.7.1\n", encoding="utf-8")
    return root


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rllm_fully_async.patches", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_apply_check_revert_round_trip(verl_copy: Path):
    target = ["--target", str(verl_copy)]
    dp_actor = verl_copy / patches.TARGET_FILE
    original = dp_actor.read_bytes()
    assert sha256(dp_actor) == patches.ORIGINAL_SHA256  # the shipped hash is verl 0.7.1's file
    assert cli("status", *target).stdout.strip() == "original"
    unpatched = cli("check", *target)
    assert unpatched.returncode == 1
    assert "python -m rllm_fully_async.patches apply" in unpatched.stderr

    applied = cli("apply", *target)
    assert applied.returncode == 0, applied.stderr
    assert sha256(dp_actor) == patches.PATCHED_SHA256
    assert "mini_batches = [data]" in dp_actor.read_text()
    assert cli("status", *target).stdout.strip() == "patched"
    assert cli("check", *target).returncode == 0
    assert not list(dp_actor.parent.glob(".*.tmp"))  # the atomic write left no temporary file

    patched_stat = dp_actor.stat()
    again = cli("apply", *target)
    assert again.returncode == 0 and "already patched" in again.stdout
    assert dp_actor.stat().st_mtime_ns == patched_stat.st_mtime_ns  # a no-op, not a rewrite

    reverted = cli("revert", *target)
    assert reverted.returncode == 0, reverted.stderr
    assert dp_actor.read_bytes() == original
    assert cli("check", *target).returncode == 1
    assert "already original" in cli("revert", *target).stdout


def test_modified_file_is_refused_and_left_unchanged(verl_copy: Path):
    dp_actor = verl_copy / patches.TARGET_FILE
    dp_actor.write_text(dp_actor.read_text() + "# local edit\n")
    before = dp_actor.read_bytes()
    for command in ("apply", "revert"):
        result = cli(command, "--target", str(verl_copy))
        assert result.returncode == 1
        assert "matches neither" in result.stderr and "verl 0.7.1" in result.stderr
        assert "pip install --force-reinstall --no-deps verl==0.7.1" in result.stderr
        assert dp_actor.read_bytes() == before
    assert cli("status", "--target", str(verl_copy)).stdout.strip() == "unknown"
    assert cli("check", "--target", str(verl_copy)).returncode == 1


def test_wrong_verl_version_is_refused_with_both_versions(verl_copy: Path):
    dp_actor = verl_copy / patches.TARGET_FILE
    dp_actor.write_text(
        dp_actor.read_text().replace("mini_batches = data.split(", "mini_batches = data.chunk(")
    )
    (verl_copy / "version" / "version").write_text("0.6.1\n")
    before = dp_actor.read_bytes()
    result = cli("apply", "--target", str(verl_copy))
    assert result.returncode == 1
    assert "verl 0.6.1" in result.stderr and "needs verl 0.7.1" in result.stderr
    assert dp_actor.read_bytes() == before
    with pytest.raises(RuntimeError, match=r"verl 0\.6\.1.*pip install verl==0\.7\.1"):
        patches.require_patched_verl(verl_copy)


def test_require_patched_verl_names_the_fix(verl_copy: Path):
    with pytest.raises(RuntimeError, match="is not patched") as err:
        patches.require_patched_verl(verl_copy)
    assert f"python -m rllm_fully_async.patches apply --target {verl_copy}" in str(err.value)
    assert patches.apply_patch(verl_copy) is True
    patches.require_patched_verl(verl_copy)  # no error once patched
    assert patches.apply_patch(verl_copy) is False


def test_target_must_be_a_verl_package_root(verl_copy: Path):
    result = cli("status", "--target", str(verl_copy.parent))
    assert result.returncode == 1
    assert "not the root of a verl package" in result.stderr and f"did you mean {verl_copy}" in result.stderr


@pytest.mark.parametrize("tool", ["patch", "git"])
def test_patch_file_applies_with_standard_tools(tool: str, verl_copy: Path):
    """The shipped diff is also usable by hand, from the directory that contains verl/."""
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    patch_file = str(patches_dir() / patches.PATCH_FILE)
    command = {
        "patch": ["patch", "-p1", "--dry-run", "-i", patch_file],
        "git": ["git", "apply", "--check", patch_file],
    }
    result = subprocess.run(command[tool], cwd=verl_copy.parent, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fuzz" not in result.stdout and "offset" not in result.stdout.lower()
