# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Checkpoint files: atomic writes, errors that name the file and the fix, and a resume that falls back to
the newest intact checkpoint instead of silently starting over."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from rllm_fully_async.trainer import checkpoint
from rllm_fully_async.trainer.checkpoint import CheckpointError


def state(step: int) -> dict:
    return {"global_steps": step, "param_version": step, "executor": {}, "queue": {}, "summary": {}}


def save_step(root: Path, step: int) -> None:
    """A complete step as the trainer writes it: the actor first, then the state, then the tracker."""
    actor = root / f"global_step_{step}" / "actor"
    actor.mkdir(parents=True)
    (actor / "model_world_size_1_rank_0.pt").write_bytes(b"weights")
    checkpoint.save_state(str(root), step, state(step))
    checkpoint.write_tracker(str(root), step)


def test_a_full_disk_names_the_file_and_leaves_the_old_one_intact(tmp_path):
    save_step(tmp_path, 1)
    target = tmp_path / "global_step_1" / checkpoint.STATE_FILE
    before = target.read_bytes()
    os.symlink("/dev/full", str(target) + ".tmp")  # the temporary file lands on a device that is always full
    with pytest.raises(CheckpointError, match=f"could not write {target} .*the disk is full: free space"):
        checkpoint.save_state(str(tmp_path), 1, state(9))
    assert target.read_bytes() == before
    assert torch.load(target, weights_only=False)["global_steps"] == 1


def test_an_unwritable_directory_is_found_before_anything_starts(tmp_path):
    if os.geteuid() == 0:  # root writes through permission bits: use a directory no one can create
        root = "/proc/rllm_fully_async_checkpoints"
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        root = str(tmp_path / "ro" / "ckpt")
    with pytest.raises(
        CheckpointError, match="trainer.default_local_dir=.* cannot be written .*writable directory"
    ):
        checkpoint.check_writable(root)
    checkpoint.check_writable(str(tmp_path / "fine"))
    assert os.listdir(tmp_path / "fine") == []


def test_resume_uses_the_tracked_step_when_it_is_intact(tmp_path):
    assert checkpoint.find_resume_point(str(tmp_path / "none")) is None
    save_step(tmp_path, 1)
    save_step(tmp_path, 2)
    directory, loaded = checkpoint.find_resume_point(str(tmp_path))
    assert directory.endswith("global_step_2") and loaded["global_steps"] == 2


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        ("missing_dir", "global_step_3/fully_async_state.pt is missing"),
        ("truncated_state", "global_step_3/fully_async_state.pt cannot be read, it is truncated or corrupt"),
        ("empty_tracker", "latest_checkpointed_iteration.txt is unreadable or does not hold a step number"),
        ("no_actor", "global_step_3/actor is missing or empty"),
    ],
)
def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, caplog, damage, problem):
    for step in (1, 2, 3):
        save_step(tmp_path, step)
    step3 = tmp_path / "global_step_3"
    if damage == "missing_dir":
        for f in sorted(step3.rglob("*"), reverse=True):
            f.rmdir() if f.is_dir() else f.unlink()
        step3.rmdir()
    elif damage == "truncated_state":
        data = (step3 / checkpoint.STATE_FILE).read_bytes()
        (step3 / checkpoint.STATE_FILE).write_bytes(data[: len(data) // 2])
    elif damage == "empty_tracker":
        (tmp_path / checkpoint.TRACKER_FILE).write_text("")
        (step3 / checkpoint.STATE_FILE).unlink()
    else:
        (step3 / "actor" / "model_world_size_1_rank_0.pt").unlink()
    directory, loaded = checkpoint.find_resume_point(str(tmp_path))
    assert directory.endswith("global_step_2") and loaded["global_steps"] == 2
    out = caplog.text
    assert "resuming from" in out and "global_step_2, the newest intact checkpoint" in out and problem in out


def test_resume_stops_when_no_checkpoint_is_intact(tmp_path):
    save_step(tmp_path, 1)
    (tmp_path / "global_step_1" / checkpoint.STATE_FILE).write_bytes(b"")
    with pytest.raises(
        CheckpointError, match="no intact checkpoint .*truncated or corrupt.*Nothing was overwritten"
    ):
        checkpoint.find_resume_point(str(tmp_path))
    with pytest.raises(
        CheckpointError, match="trainer.resume_from_path=.*global_step_1.*truncated or corrupt"
    ):
        checkpoint.load_state_at(str(tmp_path / "global_step_1"))


def test_a_failed_actor_save_names_the_directory_and_the_fix(tmp_path):
    def full_disk() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CheckpointError, match=f"could not save {tmp_path}/actor .*the disk is full"):
        checkpoint.guarded(full_disk, f"{tmp_path}/actor")
