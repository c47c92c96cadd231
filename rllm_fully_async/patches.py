# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Apply, check and revert the verl 0.7.1 patch set that fully-async training needs.

``python -m rllm_fully_async.patches {apply,check,revert,status} [--target DIR]``, where DIR is the
root of a verl package (the directory holding ``workers/actor/dp_actor.py``; default: the installed
verl). The patched file is recognised by its SHA-256, so a verl whose file is neither the pristine
0.7.1 text nor the patched text is refused and left untouched. Changes are computed in memory from
the unified diff in ``patches/``, checked against the expected hash, then written atomically: a
file is never half-patched, and the ``patch`` binary is not needed.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rllm_fully_async.paths import patches_dir

VERL_VERSION = "0.7.1"
PATCH_FILE = "verl_dp_actor.patch"
TARGET_FILE = "workers/actor/dp_actor.py"  # relative to the verl package root
ORIGINAL_SHA256 = "1a7d0d5551d5422b61068868062b013c968fc28ce605e9240708a13e3e625793"
PATCHED_SHA256 = "4afc0d02e0f0307fdb5bec900477b15b1c7b53916bf9b73b52039ff5a278446b"
APPLY_COMMAND = "python -m rllm_fully_async.patches apply"

ORIGINAL, PATCHED, UNKNOWN = "original", "patched", "unknown"

_HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


class VerlPatchError(RuntimeError):
    """The verl tree cannot be patched or reverted as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Hunk:
    old_start: int  # 1-based line number in the original file
    new_start: int  # 1-based line number in the patched file
    old_lines: tuple[str, ...]  # context and removed lines, newline included
    new_lines: tuple[str, ...]  # context and added lines, newline included


def parse_patch(text: str) -> tuple[str, list[Hunk]]:
    """The target path (without its ``a/`` prefix) and hunks of a single-file unified diff."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith("--- ")]
    if len(starts) != 1 or not lines[starts[0] + 1].startswith("+++ "):
        raise ValueError("expected a unified diff of exactly one file ('--- a/...' then '+++ b/...')")
    path = lines[starts[0]].split(maxsplit=1)[1].strip().split("\t")[0]
    path = path.removeprefix("a/")
    hunks: list[Hunk] = []
    i = starts[0] + 2
    while i < len(lines):
        header = _HUNK_HEADER.match(lines[i])
        if header is None:
            raise ValueError(f"line {i + 1}: expected a hunk header '@@ -l,s +l,s @@', got {lines[i]!r}")
        old_count = int(header.group(2) or 1)
        new_count = int(header.group(4) or 1)
        old: list[str] = []
        new: list[str] = []
        i += 1
        while len(old) < old_count or len(new) < new_count:
            if i >= len(lines):
                raise ValueError("unified diff ends inside a hunk")
            tag, body = lines[i][:1], lines[i][1:]
            if tag == "\\":
                raise ValueError("'\\ No newline at end of file' is not supported")
            if tag in (" ", "-"):
                old.append(body)
            if tag in (" ", "+"):
                new.append(body)
            if tag not in (" ", "-", "+"):
                raise ValueError(f"line {i + 1}: unexpected line in hunk: {lines[i]!r}")
            i += 1
        hunks.append(Hunk(int(header.group(1)), int(header.group(3)), tuple(old), tuple(new)))
    return path, hunks


def _apply_hunks(text: str, hunks: list[Hunk], reverse: bool) -> str:
    """Apply ``hunks`` (or undo them) at their stated lines; raises ValueError where a hunk does not match.

    Bottom-up, so that each hunk's stated line number still holds when it is reached.
    """
    lines = text.splitlines(keepends=True)
    for hunk in sorted(hunks, key=lambda h: h.old_start, reverse=True):
        if reverse:
            start, old, new = hunk.new_start - 1, hunk.new_lines, hunk.old_lines
        else:
            start, old, new = hunk.old_start - 1, hunk.old_lines, hunk.new_lines
        if tuple(lines[start : start + len(old)]) != old:
            raise ValueError(f"hunk at line {start + 1} does not match")
        lines[start : start + len(old)] = new
    return "".join(lines)


def _load_patch() -> list[Hunk]:
    path, hunks = parse_patch((patches_dir() / PATCH_FILE).read_text(encoding="utf-8"))
    if path != f"verl/{TARGET_FILE}":
        raise ValueError(f"{PATCH_FILE} patches {path}, expected verl/{TARGET_FILE}")
    return hunks


def patched_text(original: str) -> str:
    """The patched ``dp_actor.py`` text from verl 0.7.1's original text."""
    return _apply_hunks(original, _load_patch(), reverse=False)


def original_text(patched: str) -> str:
    """verl 0.7.1's original ``dp_actor.py`` text from the patched text."""
    return _apply_hunks(patched, _load_patch(), reverse=True)


def default_target() -> Path:
    """Root of the installed verl package, found without importing it."""
    spec = importlib.util.find_spec("verl")
    if spec is None or not spec.submodule_search_locations:
        raise VerlPatchError(f"verl is not installed; install it with: pip install verl=={VERL_VERSION}")
    return Path(list(spec.submodule_search_locations)[0])


def _target_file(target: Path | None) -> Path:
    root = Path(target) if target is not None else default_target()
    file = root / TARGET_FILE
    if not file.is_file():
        hint = f"; did you mean {root / 'verl'}?" if (root / "verl" / TARGET_FILE).is_file() else ""
        raise VerlPatchError(f"{root} is not the root of a verl package (no {TARGET_FILE}){hint}")
    return file


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _state_of(data: bytes) -> str:
    return {ORIGINAL_SHA256: ORIGINAL, PATCHED_SHA256: PATCHED}.get(_sha256(data), UNKNOWN)


def verl_version(target: Path | None = None) -> str:
    """The version string in ``verl/version/version`` of the target tree, or 'unknown'."""
    root = _target_file(target).parents[2]
    try:
        return (root / "version" / "version").read_text(encoding="utf-8").strip()
    except OSError:
        return "unknown"


def patch_state(target: Path | None = None) -> str:
    """'original' (pristine verl 0.7.1), 'patched', or 'unknown' (anything else)."""
    return _state_of(_target_file(target).read_bytes())


def _apply_command(target: Path | None) -> str:
    return APPLY_COMMAND if target is None else f"{APPLY_COMMAND} --target {target}"


def _unknown_message(file: Path, target: Path | None) -> str:
    found = verl_version(file.parents[2])
    if found != VERL_VERSION:
        return (
            f"{file} is from verl {found}, but rllm_fully_async needs verl {VERL_VERSION}. "
            f"Install it with: pip install verl=={VERL_VERSION}, then run: {_apply_command(target)}"
        )
    return (
        f"{file} (verl {found}) matches neither verl {VERL_VERSION}'s original nor the patched text; "
        f"it was modified by hand or by another patch. Restore it with: "
        f"pip install --force-reinstall --no-deps verl=={VERL_VERSION}, then run: {_apply_command(target)}"
    )


def _write_atomically(file: Path, text: str) -> None:
    """Replace ``file`` in one rename, keeping its permissions: readers see the old or the new text."""
    mode = file.stat().st_mode
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode & 0o7777)
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _transform(target: Path | None, want: str) -> bool:
    """Bring the file to state ``want``; False when it already is. Dry run first: verify, then write."""
    file = _target_file(target)
    data = file.read_bytes()
    state = _state_of(data)
    if state == want:
        return False
    if state == UNKNOWN:
        raise VerlPatchError(_unknown_message(file, target))
    text = data.decode("utf-8")
    expected = PATCHED_SHA256 if want == PATCHED else ORIGINAL_SHA256
    try:
        new_text = patched_text(text) if want == PATCHED else original_text(text)
        if _sha256(new_text.encode("utf-8")) != expected:
            raise ValueError("the result differs from the expected text")
    except ValueError as err:  # a damaged or stale patch file, never the verl file (its hash matched)
        raise VerlPatchError(
            f"{PATCH_FILE} does not apply to {file}: {err}; reinstall rllm_fully_async"
        ) from err
    try:
        _write_atomically(file, new_text)
    except PermissionError as err:
        raise VerlPatchError(
            f"cannot write {file}: {err}; run the command as a user who owns the verl install"
        ) from err
    return True


def apply_patch(target: Path | None = None) -> bool:
    """Patch verl 0.7.1; True if the file changed, False if it was already patched."""
    return _transform(target, PATCHED)


def revert_patch(target: Path | None = None) -> bool:
    """Restore verl 0.7.1's original file; True if the file changed, False if it was already original."""
    return _transform(target, ORIGINAL)


def require_patched_verl(target: Path | None = None) -> None:
    """Raise VerlPatchError, naming the problem and the fix command, unless verl is patched.

    ``target`` defaults to the installed verl. The trainer calls this at startup: unpatched verl
    trains, but with per-mini-batch steps and mis-weighted micro-batches, which is wrong without any
    visible error.
    """
    try:
        file = _target_file(target)
    except VerlPatchError as err:
        raise VerlPatchError(f"rllm_fully_async cannot start: {err}") from None
    state = patch_state(target)
    if state == ORIGINAL:
        raise VerlPatchError(
            f"rllm_fully_async cannot start: verl {VERL_VERSION} at {file.parents[2]} is not patched "
            f"(fully-async updates need one optimizer step per batch and a whole-batch token-mean loss). "
            f"Fix: {_apply_command(target)}"
        )
    if state == UNKNOWN:
        raise VerlPatchError(f"rllm_fully_async cannot start: {_unknown_message(file, target)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rllm_fully_async.patches", description=__doc__.split("\n")[0]
    )
    parser.add_argument("command", choices=["apply", "check", "revert", "status"])
    parser.add_argument(
        "--target", type=Path, default=None, help="verl package root (default: installed verl)"
    )
    args = parser.parse_args(argv)
    try:
        file = _target_file(args.target)
        if args.command == "status":
            print(patch_state(args.target))
        elif args.command == "check":
            state = patch_state(args.target)
            if state != PATCHED:
                fix = (
                    _unknown_message(file, args.target)
                    if state == UNKNOWN
                    else f"run: {_apply_command(args.target)}"
                )
                print(f"not patched ({state}): {file}. {fix}", file=sys.stderr)
                return 1
            print(f"patched: {file}")
        elif args.command == "apply":
            print(f"patched {file}" if apply_patch(args.target) else f"already patched: {file}")
        else:
            print(f"reverted {file}" if revert_patch(args.target) else f"already original: {file}")
    except VerlPatchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
