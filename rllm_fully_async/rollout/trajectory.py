# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""What a rollout produces: one ``Sample`` per response, one ``TrajectoryGroup`` per prompt.

Every sample records the range of weight versions it was generated under (a partial rollout that
was interrupted by a weight sync spans two or more), so the trainer can measure staleness exactly.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple


@dataclass
class Sample:
    """One response to a prompt, with its behaviour-policy log-probs and reward."""

    prompt_ids: list[int]
    response_ids: list[int]
    response_logprobs: list[float]
    reward: float
    finish_reason: str
    min_version: int
    max_version: int
    num_aborts: int = 0
    # 1 = token produced by the policy; multi-turn rollouts may mask tool output with 0. Default: all 1.
    response_mask: list[int] | None = None
    # The weight version that generated each response token (-1 for tokens not generated, such as tool
    # output); optional, min_version / max_version are what staleness uses.
    token_versions: list[int] | None = None
    # Per-sample information a rollout function wants logged; must be picklable.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.response_mask is None:
            self.response_mask = [1] * len(self.response_ids)
        n = len(self.response_ids)
        if len(self.response_logprobs) != n or len(self.response_mask) != n:
            raise ValueError(
                f"Sample: response_ids ({n}), response_logprobs ({len(self.response_logprobs)}) and "
                f"response_mask ({len(self.response_mask)}) must have the same length"
            )
        if self.token_versions is not None and len(self.token_versions) != n:
            raise ValueError(
                f"Sample: token_versions ({len(self.token_versions)}) and response_ids ({n}) differ"
            )
        if self.min_version > self.max_version:
            raise ValueError(f"Sample: min_version {self.min_version} > max_version {self.max_version}")

    @property
    def version_span(self) -> int:
        """How many weight syncs happened while this sample was being generated."""
        return self.max_version - self.min_version


@dataclass
class SampleProgress:
    """What one sample has produced so far, where the executor can read it while the servers are paused.

    A rollout function that takes a ``progress`` argument records into it: ``generation`` is the
    generate call in progress (a ``client.GenerationOutput``, filled as tokens come back), ``state`` the
    function's own record (a multi-turn rollout keeps its finished turns and tool results there). The
    executor saves a copy with each checkpoint and, after a resume, hands it back, so the rollout
    function continues where it was instead of generating again.
    """

    generation: Any = None
    state: dict[str, Any] = field(default_factory=dict)
    # Generated tokens it held when it was restored from a checkpoint (0: a fresh start).
    restored_tokens: int = 0

    def snapshot(self) -> SampleProgress:
        return copy.deepcopy(self)

    @property
    def generated_versions(self) -> list[int]:
        """Weight versions of the tokens generated so far (the state's ``token_versions``, then the
        generation in progress); -1 marks tokens not generated."""
        versions = [v for v in self.state.get("token_versions", []) if v >= 0]
        if self.generation is not None:
            versions += [c.version for c in self.generation.chunks for _ in c.token_ids]
        return versions


class Prompt(NamedTuple):
    """A drawn dataset row: ``uid`` is the stable prompt id, ``datum`` the row itself."""

    uid: str
    epoch: int
    datum: dict[str, Any]


@dataclass
class TrajectoryGroup:
    """The ``n`` samples of one prompt, drawn in ``epoch``.

    ``uid`` is stable across epochs (the row's ``extra_info.index`` or its dataset position), so
    ``(epoch, uid)`` identifies one draw. ``datum`` is kept so the prompt can be re-queued.
    ``launch_version`` is the weight version when the prompt was admitted; ``created_at`` / ``finished_at``
    (wall clock) bracket its generation. They feed ``async/launch_lag_mean`` and ``async/group_latency_s_*``.
    """

    uid: str
    epoch: int
    datum: dict[str, Any]
    samples: list[Sample]
    launch_version: int
    created_at: float = field(default_factory=time.time)
    finished_at: float = field(default_factory=time.time)

    @property
    def key(self) -> tuple[int, str]:
        return (self.epoch, self.uid)

    @property
    def min_version(self) -> int:
        return min(s.min_version for s in self.samples)

    @property
    def max_version(self) -> int:
        return max(s.max_version for s in self.samples)
