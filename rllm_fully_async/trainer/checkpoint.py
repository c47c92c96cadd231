# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The run's own checkpoint files: where to resume from, and writing them so that a crash cannot leave
a half-written one behind.

Layout under ``trainer.default_local_dir``: ``global_step_N/actor/`` (verl's actor and optimizer),
``global_step_N/fully_async_state.pt`` (queue, in-flight prompts, dataloader position, counters,
version; written after the actor, so its presence means the step is complete) and the tracker
``latest_checkpointed_iteration.txt`` naming the newest step. Every file is written to a temporary name
and renamed into place.

Resuming trusts nothing unchecked: the tracker's step is used when its state file loads and its actor
directory is there; otherwise the newest intact step is used, saying why; when checkpoints exist but
none is intact the run stops with what is wrong with each, instead of starting over on top of them.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import re
from collections.abc import Callable
from typing import Any

import torch

logger = logging.getLogger(__name__)

STATE_FILE = "fully_async_state.pt"
TRACKER_FILE = "latest_checkpointed_iteration.txt"
LEDGER_FILE = "ledger.json"
STATE_KEYS = ("global_steps", "param_version", "executor", "queue", "summary")
_STEP_DIR = re.compile(r"^global_step_(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or trusted; the message names the file and the fix."""


def step_dir(root: str, step: int) -> str:
    return os.path.join(root, f"global_step_{step}")


def check_writable(root: str) -> None:
    """Create ``root`` and write a file in it before anything starts, instead of failing at the first save."""
    probe = os.path.join(root, f".write_test.{os.getpid()}")
    try:
        os.makedirs(root, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise CheckpointError(
            f"trainer.default_local_dir={root!r} cannot be written ({e.strerror or e}): checkpoints and the "
            "ledger go there; make it writable or point trainer.default_local_dir at a writable directory"
        ) from e


def _fix_for(e: BaseException, path: str) -> str:
    code = getattr(e, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk is full: free space on the file system of {os.path.dirname(path)!r} or point "
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{os.path.dirname(path)!r} is not writable: make it writable or point "
    return "check the file system, or point "


def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` through a temporary file and a rename: ``path`` is old or new, never partial."""
    tmp = path + ".tmp"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise CheckpointError(
            f"could not write {path} ({e.strerror or e}); {_fix_for(e, path)}trainer.default_local_dir "
            "at another directory"
        ) from e


def save_state(root: str, step: int, state: dict[str, Any]) -> None:
    """The fully-async state of ``step`` (serialised in memory first: a full disk gives a clear OSError)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(os.path.join(step_dir(root, step), STATE_FILE), buffer.getvalue())


def write_tracker(root: str, step: int) -> None:
    atomic_write(os.path.join(root, TRACKER_FILE), str(step).encode())


def write_json(path: str, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=True).encode())


def load_state(directory: str) -> dict[str, Any]:
    """A step directory's state, verified: it loads, holds every key, and the actor checkpoint is there."""
    path = os.path.join(directory, STATE_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} is missing (the save did not complete)")
    try:
        state = torch.load(path, weights_only=False)
    except Exception as e:
        raise CheckpointError(
            f"{path} cannot be read, it is truncated or corrupt ({type(e).__name__}: {e})"
        ) from e
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}: not a fully-async checkpoint state")
    actor = os.path.join(directory, "actor")
    if not os.path.isdir(actor) or not os.listdir(actor):
        raise CheckpointError(f"{actor} is missing or empty (the actor checkpoint was not saved)")
    return state


def _read_tracker(root: str) -> tuple[int | None, str | None]:
    """The tracker's step, or ``(None, why)`` when it is there but unusable."""
    path = os.path.join(root, TRACKER_FILE)
    if not os.path.exists(path):
        return None, None
    try:
        with open(path) as f:
            text = f.read().strip()
        return int(text), None
    except (OSError, ValueError) as e:
        return None, f"{path} is unreadable or does not hold a step number ({e})"


def find_resume_point(root: str) -> tuple[str, dict[str, Any]] | None:
    """``(step directory, state)`` to resume from under ``root``; ``None`` when there are no checkpoints.

    Raises :class:`CheckpointError` when checkpoints exist but none is intact.
    """
    steps = []
    if os.path.isdir(root):
        steps = sorted((int(m.group(1)) for m in map(_STEP_DIR.match, os.listdir(root)) if m), reverse=True)
    tracked, tracker_problem = _read_tracker(root)
    if not steps and tracked is None and tracker_problem is None:
        return None
    problems = [tracker_problem] if tracker_problem else []
    candidates = ([tracked] if tracked is not None else []) + [s for s in steps if s != tracked]
    for step in candidates:
        directory = step_dir(root, step)
        try:
            state = load_state(directory)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        if problems:
            detail = "; ".join(problems)
            logger.warning("resuming from %s, the newest intact checkpoint: %s", directory, detail)
        return directory, state
    raise CheckpointError(
        f"no intact checkpoint to resume from in trainer.default_local_dir={root!r}: "
        + "; ".join(problems)
        + ". Nothing was overwritten. To start over, move that directory away or set "
        "trainer.resume_mode=disable (later saves then replace its steps)"
    )


def load_state_at(directory: str) -> dict[str, Any]:
    """``trainer.resume_mode=resume_path``: the given step directory, verified."""
    try:
        return load_state(directory)
    except CheckpointError as e:
        raise CheckpointError(f"trainer.resume_from_path={directory!r}: {e}") from e


def guarded(write: Callable[[], None], what: str) -> None:
    """Run a write done by another library (verl's actor checkpoint); an OSError becomes a clear error."""
    try:
        write()
    except OSError as e:
        raise CheckpointError(
            f"could not save {what} ({e.strerror or e}); {_fix_for(e, what)}"
            "trainer.default_local_dir at another directory"
        ) from e
