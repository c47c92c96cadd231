# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Shared by the training-worker and weight-sync tests: a verl config, a PPO batch, greedy references."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig
from verl import DataProto


def actor_config(model_dir: Path, *overrides: str) -> DictConfig:
    """verl's own ``ppo_trainer`` config for an FSDP2 actor on CPU, big enough steps to move the weights."""
    with initialize_config_module("verl.trainer.config", version_base=None):
        return compose(
            "ppo_trainer",
            overrides=[
                f"actor_rollout_ref.model.path={model_dir}",
                "actor_rollout_ref.model.use_remove_padding=False",
                "actor_rollout_ref.actor.strategy=fsdp2",
                "actor_rollout_ref.actor.fsdp_config.dtype=float32",
                "actor_rollout_ref.actor.ppo_mini_batch_size=4",
                "actor_rollout_ref.actor.use_dynamic_bsz=True",
                "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=4096",
                "actor_rollout_ref.actor.optim.lr=0.01",
                "actor_rollout_ref.actor.checkpoint.save_contents=[model,hf_model]",
                "actor_rollout_ref.rollout.n=1",
                "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4",
                "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4",
                "trainer.device=cpu",
                "trainer.nnodes=1",
                "trainer.n_gpus_per_node=1",
                *overrides,
            ],
        )


def ppo_batch(seed: int = 0, batch: int = 4, prompt_len: int = 4, response_len: int = 6) -> DataProto:
    """A PPO mini-batch as the trainer builds it; non-zero advantages, so ``update_actor`` moves weights."""
    generator = torch.Generator().manual_seed(seed)
    prompts = torch.randint(4, 300, (batch, prompt_len), generator=generator)
    responses = torch.randint(4, 300, (batch, response_len), generator=generator)
    input_ids = torch.cat([prompts, responses], dim=1)
    attention_mask = torch.ones_like(input_ids)
    advantages = torch.tensor([1.0, -1.0] * (batch // 2)).unsqueeze(1).expand(batch, response_len)
    return DataProto.from_dict(
        tensors={
            "prompts": prompts,
            "responses": responses,
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": torch.cumsum(attention_mask, dim=1) - 1,
            "response_mask": torch.ones(batch, response_len),
            "old_log_probs": torch.zeros(batch, response_len),
            "advantages": advantages.contiguous(),
        },
        meta_info={"temperature": 1.0, "global_token_num": attention_mask.sum(-1).tolist()},
    )


@torch.no_grad()
def greedy_reference(model, prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], list[float]]:
    """Greedy tokens and their log-probs, computed with plain ``transformers`` (no KV cache, no batching)."""
    ids = torch.tensor([prompt_ids])
    tokens, logprobs = [], []
    for _ in range(max_new_tokens):
        logp = torch.log_softmax(model(ids).logits[0, -1].float(), dim=-1)
        token = int(logp.argmax())
        tokens.append(token)
        logprobs.append(float(logp[token]))
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return tokens, logprobs
