# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""``python -m rllm_fully_async.patches`` on copies of the verl files it patches, never the installed ones."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rllm_fully_async import patches
from rllm_fully_async.paths import patches_dir

DP_ACTOR = patches.DP_ACTOR.target


def original_text(patch: patches.FilePatch) -> str:
    """verl 0.7.1's original file, whether or not (or with which patch) the installed verl is patched."""
    text = (patches.default_target() / patch.target).read_text(encoding="utf-8")
    return text if patch.state_of(text.encode()) == patches.ORIGINAL else patch.original_text(text)


@pytest.fixture
def verl_copy(tmp_path: Path) -> Path:
    """A verl package root holding the files the command reads: the patched files and version/version."""
    root = tmp_path / "site-packages" / "verl"
    for patch in patches.PATCH_SET:
        (root / patch.target).parent.mkdir(parents=True, exist_ok=True)
        (root / patch.target).write_text(original_text(patch), encoding="utf-8")
    (root / "version").mkdir()
    (root / "version" / "version").write_text("0.7.1\n", encoding="utf-8")
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.target: (root / p.target).read_bytes() for p in patches.PATCH_SET}


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
    dp_actor = verl_copy / DP_ACTOR
    original = snapshot(verl_copy)
    for patch in patches.PATCH_SET:  # the shipped hashes are verl 0.7.1's files
        assert sha256(verl_copy / patch.target) == patch.original_sha256
    assert cli("status", *target).stdout.split()[0] == "original"
    unpatched = cli("check", *target)
    assert unpatched.returncode == 1
    assert "python -m rllm_fully_async.patches apply" in unpatched.stderr

    applied = cli("apply", *target)
    assert applied.returncode == 0, applied.stderr
    for patch in patches.PATCH_SET:
        assert sha256(verl_copy / patch.target) == patch.patched_sha256
    assert "mini_batches = [data]" in dp_actor.read_text()
    assert cli("status", *target).stdout.split()[0] == "patched"
    assert cli("check", *target).returncode == 0
    assert not list(dp_actor.parent.glob(".*.tmp"))  # the atomic write left no temporary file

    patched_stat = dp_actor.stat()
    again = cli("apply", *target)
    assert again.returncode == 0 and "already patched" in again.stdout
    assert dp_actor.stat().st_mtime_ns == patched_stat.st_mtime_ns  # a no-op, not a rewrite

    reverted = cli("revert", *target)
    assert reverted.returncode == 0, reverted.stderr
    assert snapshot(verl_copy) == original
    assert cli("check", *target).returncode == 1
    assert "already original" in cli("revert", *target).stdout


def test_modified_file_is_refused_and_left_unchanged(verl_copy: Path):
    dp_actor = verl_copy / DP_ACTOR
    dp_actor.write_text(dp_actor.read_text() + "# local edit\n")
    before = snapshot(verl_copy)
    for command in ("apply", "revert"):
        result = cli(command, "--target", str(verl_copy))
        assert result.returncode == 1
        assert "matches neither" in result.stderr and "verl 0.7.1" in result.stderr
        assert "pip install --force-reinstall --no-deps verl==0.7.1" in result.stderr
        assert snapshot(verl_copy) == before  # no file of the set was touched
    assert cli("status", "--target", str(verl_copy)).stdout.split()[0] == "unknown"
    assert cli("check", "--target", str(verl_copy)).returncode == 1


def test_wrong_verl_version_is_refused_with_both_versions(verl_copy: Path):
    dp_actor = verl_copy / DP_ACTOR
    dp_actor.write_text(
        dp_actor.read_text().replace("mini_batches = data.split(", "mini_batches = data.chunk(")
    )
    (verl_copy / "version" / "version").write_text("0.6.1\n")
    before = snapshot(verl_copy)
    result = cli("apply", "--target", str(verl_copy))
    assert result.returncode == 1
    assert "verl 0.6.1" in result.stderr and "needs verl 0.7.1" in result.stderr
    assert snapshot(verl_copy) == before
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
    for patch in patches.PATCH_SET:
        patch_file = str(patches_dir() / patch.patch_file)
        command = {
            "patch": ["patch", "-p1", "--dry-run", "-i", patch_file],
            "git": ["git", "apply", "--check", patch_file],
        }
        result = subprocess.run(
            command[tool], cwd=verl_copy.parent, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "fuzz" not in result.stdout and "offset" not in result.stdout.lower()


def earlier_patch_text(patch: patches.FilePatch) -> str:
    """The file as an earlier release of our patch left it (what a venv patched before an upgrade holds)."""
    patch_file, sha = patch.previous[-1]
    text = patches._apply_hunks(original_text(patch), patch.hunks(patch_file), reverse=False)
    assert sha256_text(text) == sha
    return text


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_earlier_patch_is_upgraded_and_reverted(verl_copy: Path):
    target = ["--target", str(verl_copy)]
    dp_actor = verl_copy / DP_ACTOR
    original = snapshot(verl_copy)
    dp_actor.write_text(earlier_patch_text(patches.DP_ACTOR))
    assert cli("status", *target).stdout.split()[0] == "outdated"
    checked = cli("check", *target)
    assert checked.returncode == 1 and "dp_actor.py: outdated" in checked.stderr
    assert "python -m rllm_fully_async.patches apply" in checked.stderr
    with pytest.raises(RuntimeError, match="earlier or partial version"):
        patches.require_patched_verl(verl_copy)

    applied = cli("apply", *target)
    assert applied.returncode == 0, applied.stderr
    assert patches.file_states(verl_copy) == {p.target: patches.PATCHED for p in patches.PATCH_SET}
    patches.require_patched_verl(verl_copy)

    dp_actor.write_text(earlier_patch_text(patches.DP_ACTOR))
    reverted = cli("revert", *target)
    assert reverted.returncode == 0, reverted.stderr
    assert snapshot(verl_copy) == original


def test_a_failed_write_leaves_every_file_as_it_was(verl_copy: Path, monkeypatch: pytest.MonkeyPatch):
    """The set is never half-applied: when the last file cannot be written, the earlier ones are restored."""
    before = snapshot(verl_copy)
    real_write = patches._write_atomically
    last = verl_copy / patches.PATCH_SET[-1].target

    def failing_write(file: Path, text) -> None:
        if file == last:
            raise PermissionError(13, "Permission denied", str(file))
        real_write(file, text)

    monkeypatch.setattr(patches, "_write_atomically", failing_write)
    with pytest.raises(patches.VerlPatchError, match="nothing was changed"):
        patches.apply_patch(verl_copy)
    assert snapshot(verl_copy) == before
