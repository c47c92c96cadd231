# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Turn finished trajectory groups into the ``DataProto`` verl's PPO code expects.

Layout follows verl's rollout output: prompts left-padded, responses right-padded, ``input_ids`` their
concatenation, ``response_mask`` marking policy tokens, ``rollout_log_probs`` from the behaviour policy,
``token_level_scores`` holding each sample's reward on its last response token, and one ``uid`` per
group so GRPO-style estimators normalise within the group.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from verl import DataProto
from verl.utils.model import compute_position_id_with_mask

from rllm_fully_async.rollout.staleness import staleness
from rllm_fully_async.rollout.trajectory import TrajectoryGroup


def _pad(
    rows: Sequence[Sequence[float]], width: int, value: float, dtype: torch.dtype, left: bool
) -> torch.Tensor:
    out = torch.full((len(rows), width), value, dtype=dtype)
    for i, row in enumerate(rows):
        if len(row) == 0:
            continue
        values = torch.tensor(list(row), dtype=dtype)
        if left:
            out[i, width - len(row) :] = values
        else:
            out[i, : len(row)] = values
    return out


def build_batch(
    groups: Sequence[TrajectoryGroup], pad_token_id: int, trainer_version: int, temperature: float = 1.0
) -> DataProto:
    """Assemble ``groups`` into one batch; sample order is group by group."""
    samples = [(group, sample) for group in groups for sample in group.samples]
    if not samples:
        raise ValueError("build_batch needs at least one sample")

    prompts = [s.prompt_ids for _, s in samples]
    responses = [s.response_ids for _, s in samples]
    prompt_width = max(len(p) for p in prompts)
    response_width = max(1, max(len(r) for r in responses))

    prompt_ids = _pad(prompts, prompt_width, pad_token_id, torch.long, left=True)
    prompt_mask = _pad([[1] * len(p) for p in prompts], prompt_width, 0, torch.long, left=True)
    response_ids = _pad(responses, response_width, pad_token_id, torch.long, left=False)
    response_attention = _pad([[1] * len(r) for r in responses], response_width, 0, torch.long, left=False)
    response_mask = _pad([s.response_mask for _, s in samples], response_width, 0, torch.long, left=False)
    rollout_log_probs = _pad(
        [s.response_logprobs for _, s in samples], response_width, 0.0, torch.float32, False
    )

    scores = torch.zeros((len(samples), response_width), dtype=torch.float32)
    for i, (group, sample) in enumerate(samples):
        if not math.isfinite(sample.reward):  # the executor filters these; one would poison the whole step
            raise ValueError(f"sample of prompt uid={group.uid!r} has the non-finite reward {sample.reward}")
        if sample.response_ids:
            scores[i, len(sample.response_ids) - 1] = float(sample.reward)

    attention_mask = torch.cat([prompt_mask, response_attention], dim=1)
    batch = DataProto.from_dict(
        tensors={
            "prompts": prompt_ids,
            "responses": response_ids,
            "input_ids": torch.cat([prompt_ids, response_ids], dim=1),
            "attention_mask": attention_mask,
            "position_ids": compute_position_id_with_mask(attention_mask),
            "response_mask": response_mask,
            "rollout_log_probs": rollout_log_probs,
            "token_level_scores": scores,
        },
        non_tensors={
            # one GRPO group per draw: the same prompt may appear from two epochs in one batch
            "uid": np.array([f"{g.epoch}:{g.uid}" for g, _ in samples], dtype=object),
            "data_source": np.array(
                [g.datum.get("data_source", "unknown") for g, _ in samples], dtype=object
            ),
            "staleness": np.array([staleness(trainer_version, s) for _, s in samples], dtype=np.int64),
            "num_aborts": np.array([s.num_aborts for _, s in samples], dtype=np.int64),
            "finish_reason": np.array([s.finish_reason for _, s in samples], dtype=object),
        },
        meta_info={"temperature": temperature},
    )
    batch.meta_info["global_token_num"] = attention_mask.sum(dim=-1).tolist()
    return batch
