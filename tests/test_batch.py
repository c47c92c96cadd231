# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Trajectory groups become the DataProto layout verl's PPO code expects."""

from __future__ import annotations

import torch
from verl.trainer.ppo.core_algos import AdvantageEstimator
from verl.trainer.ppo.ray_trainer import compute_advantage

from rllm_fully_async.rollout.trajectory import Sample, TrajectoryGroup
from rllm_fully_async.trainer.batch import build_batch

PAD = 3


def sample(prompt, response, reward, versions=(0, 0), mask=None):
    return Sample(
        prompt_ids=prompt,
        response_ids=response,
        response_logprobs=[-0.5] * len(response),
        reward=reward,
        finish_reason="stop",
        min_version=versions[0],
        max_version=versions[1],
        response_mask=mask,
    )


def groups():
    a = TrajectoryGroup(
        "7", 0, {"data_source": "toy"}, [sample([5, 6], [9], 1.0), sample([5, 6], [9, 9, 9], 0.0)], 0
    )
    b = TrajectoryGroup(
        "7",
        1,
        {"data_source": "toy"},
        [sample([5, 6, 7, 8], [10, 11], 1.0, (1, 2), mask=[1, 0]), sample([5, 6, 7, 8], [], 0.0, (2, 2))],
        1,
    )
    return [a, b]


def test_layout_padding_masks_and_scores():
    batch = build_batch(groups(), pad_token_id=PAD, trainer_version=2)
    t = batch.batch
    assert t["prompts"].tolist()[0] == [PAD, PAD, 5, 6]  # left-padded
    assert t["responses"].tolist()[1] == [9, 9, 9]  # right-padded to the longest response
    assert t["responses"].tolist()[0] == [9, PAD, PAD]
    assert t["input_ids"].shape == (4, 7)
    assert t["attention_mask"].tolist()[0] == [0, 0, 1, 1, 1, 0, 0]
    assert t["position_ids"].tolist()[0][2:5] == [0, 1, 2]
    assert t["response_mask"].tolist()[2] == [1, 0, 0]  # the rollout's own mask is kept
    assert t["response_mask"].tolist()[3] == [0, 0, 0]  # empty response
    assert t["rollout_log_probs"][0].tolist() == [-0.5, 0.0, 0.0]
    # the reward sits on the last response token only
    assert t["token_level_scores"].tolist()[2] == [0.0, 1.0, 0.0]
    assert t["token_level_scores"].sum().item() == 2.0
    assert list(batch.non_tensor_batch["uid"]) == ["0:7", "0:7", "1:7", "1:7"]
    assert list(batch.non_tensor_batch["staleness"]) == [2, 2, 1, 0]


def test_grpo_normalises_within_each_draw_of_a_prompt():
    batch = build_batch(groups(), pad_token_id=PAD, trainer_version=2)
    batch.batch["token_level_rewards"] = batch.batch["token_level_scores"]
    batch = compute_advantage(batch, adv_estimator=AdvantageEstimator.GRPO, num_repeat=2)
    adv = batch.batch["advantages"]
    per_sample = (adv * batch.batch["response_mask"]).sum(-1) / batch.batch["response_mask"].sum(-1).clamp(
        min=1
    )
    # same prompt uid, different epochs: two separate groups, each with a winner and a loser
    assert per_sample[0] > 0 > per_sample[1]
    assert per_sample[2] > 0
    assert torch.all(adv[3] == 0)
