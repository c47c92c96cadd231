# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Apply, check and revert the verl 0.7.1 patch set that fully-async training needs.

``python -m rllm_fully_async.patches {apply,check,revert,status} [--target DIR]``, where DIR is the
root of a verl package (the directory holding ``workers/actor/``; default: the installed verl). The
set patches the FSDP actor (``dp_actor.py``) and the Megatron actor (``megatron_actor.py``). Each
file's state is recognised by its SHA-256, so a verl whose file is neither the pristine 0.7.1 text,
the patched text, nor the text of an earlier release of this patch is refused and left untouched.
Changes are computed in memory from the unified diffs in ``patches/``, checked against the expected
hashes for the whole set, then written atomically file by file (restoring the files already written
if a later write fails): the set is never half-applied, and the ``patch`` binary is not needed.
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
APPLY_COMMAND = "python -m rllm_fully_async.patches apply"

# File states. OUTDATED: patched by an earlier release of this patch; apply upgrades it.
ORIGINAL, PATCHED, OUTDATED, UNKNOWN = "original", "patched", "outdated", "unknown"

_HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


class VerlPatchError(RuntimeError):
    """The verl tree cannot be patched or reverted as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Hunk:
    old_start: int  # 1-based line number in the original file
    new_start: int  # 1-based line number in the patched file
    old_lines: tuple[str, ...]  # context and removed lines, newline included
    new_lines: tuple[str, ...]  # context and added lines, newline included


@dataclass(frozen=True)
class FilePatch:
    """One verl file of the set: its diff in ``patches/``, and the hashes that identify each state."""

    patch_file: str  # relative to patches/
    target: str  # relative to the verl package root
    original_sha256: str  # verl 0.7.1's released file
    patched_sha256: str  # that file with ``patch_file`` applied
    # Earlier releases of this patch: (diff relative to patches/, sha256 of the file it produced).
    previous: tuple[tuple[str, str], ...] = ()

    def state_of(self, data: bytes) -> str:
        digest = _sha256(data)
        if digest == self.original_sha256:
            return ORIGINAL
        if digest == self.patched_sha256:
            return PATCHED
        if any(digest == sha for _, sha in self.previous):
            return OUTDATED
        return UNKNOWN

    def hunks(self, patch_file: str | None = None) -> list[Hunk]:
        patch_file = patch_file or self.patch_file
        path, hunks = parse_patch((patches_dir() / patch_file).read_text(encoding="utf-8"))
        if path != f"verl/{self.target}":
            raise ValueError(f"{patch_file} patches {path}, expected verl/{self.target}")
        return hunks

    def patched_text(self, original: str) -> str:
        """The patched text from verl 0.7.1's original text."""
        return _apply_hunks(original, self.hunks(), reverse=False)

    def original_text(self, text: str) -> str:
        """verl 0.7.1's original text from the patched text, or from the text of an earlier patch."""
        digest = _sha256(text.encode("utf-8"))
        for patch_file, sha in self.previous:
            if digest == sha:
                return _apply_hunks(text, self.hunks(patch_file), reverse=True)
        return _apply_hunks(text, self.hunks(), reverse=True)


PATCH_SET: tuple[FilePatch, ...] = (
    FilePatch(
        patch_file="verl_dp_actor.patch",
        target="workers/actor/dp_actor.py",
        original_sha256="1a7d0d5551d5422b61068868062b013c968fc28ce605e9240708a13e3e625793",
        patched_sha256="0b2e858bf0a4ea4b2f7fc2acd1156b6a3e278d8786278cff1f983a33ebb06425",
        previous=(
            (
                "previous/verl_dp_actor.1.patch",
                "4afc0d02e0f0307fdb5bec900477b15b1c7b53916bf9b73b52039ff5a278446b",
            ),
        ),
    ),
    FilePatch(
        patch_file="verl_megatron_actor.patch",
        target="workers/actor/megatron_actor.py",
        original_sha256="ce41297088bca836914082d7c51c8915f50ba7486742ed7539dcf6546958f589",
        patched_sha256="c5b08561495a2da3a5bae6c3a256a24d4ff2cd20a4c2b9600de853d15800e5dc",
    ),
)
DP_ACTOR, MEGATRON_ACTOR = PATCH_SET


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


def default_target() -> Path:
    """Root of the installed verl package, found without importing it."""
    spec = importlib.util.find_spec("verl")
    if spec is None or not spec.submodule_search_locations:
        raise VerlPatchError(f"verl is not installed; install it with: pip install verl=={VERL_VERSION}")
    return Path(list(spec.submodule_search_locations)[0])


def _root(target: Path | None) -> Path:
    root = Path(target) if target is not None else default_target()
    missing = [p.target for p in PATCH_SET if not (root / p.target).is_file()]
    if missing:
        nested = all((root / "verl" / p.target).is_file() for p in PATCH_SET)
        hint = f"; did you mean {root / 'verl'}?" if nested else ""
        raise VerlPatchError(f"{root} is not the root of a verl package (no {', '.join(missing)}){hint}")
    return root


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verl_version(target: Path | None = None) -> str:
    """The version string in ``verl/version/version`` of the target tree, or 'unknown'."""
    try:
        return (_root(target) / "version" / "version").read_text(encoding="utf-8").strip()
    except OSError:
        return "unknown"


def file_states(target: Path | None = None) -> dict[str, str]:
    """Each patched file (relative to the verl root) -> original, patched, outdated or unknown."""
    root = _root(target)
    return {p.target: p.state_of((root / p.target).read_bytes()) for p in PATCH_SET}


def patch_state(target: Path | None = None) -> str:
    """The whole set: 'patched' or 'original' when every file is; 'unknown' when any file is;
    otherwise 'outdated' (an earlier release of the patch, or a mix): ``apply`` brings it up to date."""
    states = set(file_states(target).values())
    if UNKNOWN in states:
        return UNKNOWN
    if len(states) == 1 and states != {OUTDATED}:
        return states.pop()
    return OUTDATED


def _apply_command(target: Path | None) -> str:
    return APPLY_COMMAND if target is None else f"{APPLY_COMMAND} --target {target}"


def _unknown_message(root: Path, target: Path | None) -> str:
    found = verl_version(root)
    unknown = [
        str(root / p.target) for p in PATCH_SET if p.state_of((root / p.target).read_bytes()) == UNKNOWN
    ]
    if found != VERL_VERSION:
        return (
            f"{', '.join(unknown)} is from verl {found}, but rllm_fully_async needs verl {VERL_VERSION}. "
            f"Install it with: pip install verl=={VERL_VERSION}, then run: {_apply_command(target)}"
        )
    return (
        f"{', '.join(unknown)} (verl {found}) matches neither verl {VERL_VERSION}'s original nor a "
        f"patched text; it was modified by hand or by another patch. Restore it with: "
        f"pip install --force-reinstall --no-deps verl=={VERL_VERSION}, then run: {_apply_command(target)}"
    )


def _write_atomically(file: Path, text: str | bytes) -> None:
    """Replace ``file`` in one rename, keeping its permissions: readers see the old or the new text."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    mode = file.stat().st_mode
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode & 0o7777)
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _new_text(patch: FilePatch, text: str, state: str, want: str) -> str:
    """The file's text in state ``want``, verified by its hash; ValueError if the diffs do not produce it."""
    original = text if state == ORIGINAL else patch.original_text(text)
    if _sha256(original.encode("utf-8")) != patch.original_sha256:
        raise ValueError(f"reverting it does not give verl {VERL_VERSION}'s original text")
    if want == ORIGINAL:
        return original
    new_text = patch.patched_text(original)
    if _sha256(new_text.encode("utf-8")) != patch.patched_sha256:
        raise ValueError("the result differs from the expected patched text")
    return new_text


def _transform(target: Path | None, want: str) -> list[Path]:
    """Bring every file of the set to state ``want``; the files changed (none when all already were).

    Dry run first for the whole set (compute and verify every new text), then write; if a write fails,
    the files already written get their previous bytes back.
    """
    root = _root(target)
    planned: list[tuple[Path, bytes, str]] = []  # (file, old bytes, new text)
    for patch in PATCH_SET:
        file = root / patch.target
        data = file.read_bytes()
        state = patch.state_of(data)
        if state == UNKNOWN:
            raise VerlPatchError(_unknown_message(root, target))
        if state == want:
            continue
        try:
            planned.append((file, data, _new_text(patch, data.decode("utf-8"), state, want)))
        except ValueError as err:  # a damaged or stale patch file, never the verl file (its hash matched)
            raise VerlPatchError(
                f"{patch.patch_file} does not apply to {file}: {err}; reinstall rllm_fully_async"
            ) from err
    written: list[tuple[Path, bytes]] = []
    try:
        for file, old, new_text in planned:
            _write_atomically(file, new_text)
            written.append((file, old))
    except BaseException as err:
        for file, old in reversed(written):
            _write_atomically(file, old)
        if isinstance(err, PermissionError):
            raise VerlPatchError(
                f"cannot write {err.filename or root}: {err}; nothing was changed. "
                "Run the command as a user who owns the verl install"
            ) from err
        raise
    return [file for file, _, _ in planned]


def apply_patch(target: Path | None = None) -> bool:
    """Patch verl 0.7.1 (or upgrade an earlier patch); True if a file changed, False if all were patched."""
    return bool(_transform(target, PATCHED))


def revert_patch(target: Path | None = None) -> bool:
    """Restore verl 0.7.1's original files; True if a file changed, False if all were original."""
    return bool(_transform(target, ORIGINAL))


def require_patched_verl(target: Path | None = None) -> None:
    """Raise VerlPatchError, naming the problem and the fix command, unless verl is patched.

    ``target`` defaults to the installed verl. The trainer calls this at startup: unpatched verl
    trains, but with per-mini-batch steps and mis-weighted micro-batches, which is wrong without any
    visible error.
    """
    try:
        root = _root(target)
    except VerlPatchError as err:
        raise VerlPatchError(f"rllm_fully_async cannot start: {err}") from None
    state = patch_state(target)
    if state == ORIGINAL:
        raise VerlPatchError(
            f"rllm_fully_async cannot start: verl {VERL_VERSION} at {root} is not patched "
            f"(fully-async updates need one optimizer step per batch and a whole-batch token-mean loss). "
            f"Fix: {_apply_command(target)}"
        )
    if state == OUTDATED:
        raise VerlPatchError(
            f"rllm_fully_async cannot start: verl {VERL_VERSION} at {root} carries an earlier or partial "
            f"version of the rllm_fully_async patch set ({_describe(file_states(target))}). "
            f"Fix: {_apply_command(target)}"
        )
    if state == UNKNOWN:
        raise VerlPatchError(f"rllm_fully_async cannot start: {_unknown_message(root, target)}")


def _describe(states: dict[str, str]) -> str:
    return ", ".join(f"{name}: {state}" for name, state in states.items())


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
        root = _root(args.target)
        if args.command == "status":
            print(patch_state(args.target))
            for name, state in file_states(args.target).items():
                print(f"  {name}: {state}")
        elif args.command == "check":
            state = patch_state(args.target)
            if state != PATCHED:
                fix = (
                    _unknown_message(root, args.target)
                    if state == UNKNOWN
                    else f"run: {_apply_command(args.target)}"
                )
                print(f"not patched ({_describe(file_states(args.target))}): {root}. {fix}", file=sys.stderr)
                return 1
            print(f"patched: {root}")
        elif args.command == "apply":
            changed = _transform(args.target, PATCHED)
            print(f"patched {', '.join(map(str, changed))}" if changed else f"already patched: {root}")
        else:
            changed = _transform(args.target, ORIGINAL)
            print(f"reverted {', '.join(map(str, changed))}" if changed else f"already original: {root}")
    except VerlPatchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
