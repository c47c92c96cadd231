# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Each off-policy correction changes the PPO loss as its definition says, on a hand-computed case.

The path is the trainer's: verl's ``compute_rollout_correction_and_add_to_batch`` with the run's
``algorithm.rollout_correction``, then the policy loss the actor worker looks up in verl's registry.

The case: two responses of two tokens, proximal probabilities 0.5 everywhere; behaviour weights
``w = pi_prox / pi_behav`` of (0.5, 3) and (1.25, 8); advantages +1 and -0.25; the current policy equals
the proximal one except on token (0, 1), where its ratio is 1.5 (PPO clips it to 1.2). Per-token PPO
losses before any weight: (-1, -1.2) and (0.25, 0.25).
"""

from __future__ import annotations

import math

import pytest
import torch
from hydra import compose, initialize_config_dir
from verl import DataProto
from verl.trainer.ppo.core_algos import get_policy_loss_fn
from verl.trainer.ppo.rollout_corr_helper import compute_rollout_correction_and_add_to_batch
from verl.utils.config import omega_conf_to_dataclass

from rllm_fully_async.paths import config_dir
from rllm_fully_async.trainer.off_policy import CORRECTIONS, share_correction_with_loss

PROX = torch.full((2, 2), math.log(0.5))
BEHAVIOUR_WEIGHTS = torch.tensor([[0.5, 3.0], [1.25, 8.0]])
ADVANTAGES = torch.tensor([[1.0, 1.0], [-0.25, -0.25]])

# Hand-computed token-mean losses (denominator: the response tokens left after any rejection).
EXPECTED = {
    # no weights: (-1 - 1.2 + 0.25 + 0.25) / 4
    "none": -1.7 / 4,
    # token weights truncated at 2: (0.5, 2), (1.25, 2)
    "token_is": (-1 * 0.5 - 1.2 * 2 + 0.25 * 1.25 + 0.25 * 2) / 4,
    # sequence weights = products 1.5 and 10, truncated at 2
    "seq_is": (-1 * 1.5 - 1.2 * 1.5 + 0.25 * 2 + 0.25 * 2) / 4,
    # sequence 1's ratio 10 leaves the band [0.5, 2]: rejected, so only sequence 0's two tokens count
    "seq_is_rs": (-1 * 1.5 - 1.2 * 1.5) / 2,
    # token weights capped at 5: the token with weight 8 is dropped (weight 0) but stays in the denominator
    "decoupled_ppo": (-1 * 0.5 - 1.2 * 3.0 + 0.25 * 1.25 + 0.0) / 4,
}


def _actor_and_correction(name: str):
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        cfg = compose(config_name="fully_async_ppo_cpu", overrides=CORRECTIONS[name])
    share_correction_with_loss(cfg)
    return omega_conf_to_dataclass(cfg.actor_rollout_ref.actor), cfg.algorithm.rollout_correction


def _loss(name: str, log_prob: torch.Tensor) -> tuple[torch.Tensor, DataProto]:
    actor, correction = _actor_and_correction(name)
    batch = DataProto.from_dict(
        tensors={
            "old_log_probs": PROX.clone(),
            "rollout_log_probs": PROX - BEHAVIOUR_WEIGHTS.log(),
            "response_mask": torch.ones(2, 2),
        }
    )
    batch, _metrics = compute_rollout_correction_and_add_to_batch(batch, correction)
    loss_fn = get_policy_loss_fn(actor.policy_loss.loss_mode)
    loss, _ = loss_fn(
        old_log_prob=batch.batch["old_log_probs"],
        log_prob=log_prob,
        advantages=ADVANTAGES,
        response_mask=batch.batch["response_mask"],
        loss_agg_mode=actor.loss_agg_mode,
        config=actor,
        rollout_is_weights=batch.batch.get("rollout_is_weights"),
    )
    return loss, batch


def _current() -> torch.Tensor:
    current = PROX.clone()
    current[0, 1] += math.log(1.5)
    return current.requires_grad_(True)


@pytest.mark.parametrize("name", sorted(CORRECTIONS))
def test_each_correction_gives_the_hand_computed_loss(name):
    loss, _ = _loss(name, _current())
    assert loss.item() == pytest.approx(EXPECTED[name], abs=1e-6)


def test_corrections_disagree_where_their_definitions_do():
    values = {name: round(EXPECTED[name], 6) for name in CORRECTIONS}
    assert len(set(values.values())) == len(values)  # every mode changes this loss differently


def test_decoupled_ppo_drops_tokens_over_the_cap_and_clips_against_the_proximal_policy():
    current = _current()
    loss, batch = _loss("decoupled_ppo", current)
    loss.backward()
    grad = current.grad
    assert grad[1, 1].item() == 0.0  # behaviour weight 8 > cap 5: no gradient at all
    # token (1, 0): d/dlogp of 0.25 * 1.25 * exp(logp - prox) at ratio 1, over 4 tokens
    assert grad[1, 0].item() == pytest.approx(0.25 * 1.25 / 4)
    assert grad[0, 1].item() == 0.0  # ratio 1.5 to the proximal policy is clipped (A > 0): PPO's trust region
    assert grad[0, 0].item() == pytest.approx(-1 * 0.5 / 4)
    assert batch.batch["response_mask"].sum().item() == 4  # nothing rejected: dropping is by weight only


def test_decoupled_ppo_refuses_to_run_without_behaviour_weights():
    actor, _ = _actor_and_correction("decoupled_ppo")
    with pytest.raises(ValueError, match="rollout_is=token"):
        loss_fn = get_policy_loss_fn("decoupled_ppo")
        loss_fn(PROX, PROX, ADVANTAGES, torch.ones(2, 2), "token-mean", actor, None)


def test_a_batch_that_rejection_empties_still_gets_its_data_metrics():
    """Sequence ratios of 10 and 0.05 both leave seq_is_rs's band [0.5, 2]: every token is rejected. verl's
    compute_data_metrics fails on that empty mask; the trainer's metrics describe what was generated."""
    from verl.trainer.ppo.metric_utils import compute_data_metrics

    from rllm_fully_async.trainer.fully_async_trainer import generated_data_metrics

    _, correction = _actor_and_correction("seq_is_rs")
    generated = torch.ones(2, 2)
    log_ratio = torch.tensor([[math.log(2.0), math.log(5.0)], [math.log(0.5), math.log(0.1)]])
    batch = DataProto.from_dict(
        tensors={
            "old_log_probs": PROX.clone(),
            "rollout_log_probs": PROX - log_ratio,
            "response_mask": generated.clone(),
            "responses": torch.tensor([[5, 6], [7, 8]]),
            "attention_mask": torch.ones(2, 5, dtype=torch.long),
            "token_level_scores": torch.tensor([[0.0, 1.0], [0.0, 0.0]]),
            "token_level_rewards": torch.tensor([[0.0, 1.0], [0.0, 0.0]]),
            "advantages": ADVANTAGES.clone(),
            "returns": ADVANTAGES.clone(),
        }
    )
    batch, _ = compute_rollout_correction_and_add_to_batch(batch, correction)
    assert batch.batch["response_mask"].sum().item() == 0  # the whole batch is rejected
    with pytest.raises(RuntimeError):
        compute_data_metrics(batch=batch, use_critic=False)

    metrics = generated_data_metrics(batch, generated)
    assert metrics["critic/score/mean"] == pytest.approx(0.5)
    assert metrics["critic/advantages/max"] == pytest.approx(1.0)
    assert metrics["response_length/mean"] == pytest.approx(2.0)
    assert batch.batch["response_mask"].sum().item() == 0  # the loss mask is left as the correction set it


BYPASS = [
    "algorithm.rollout_correction.bypass_mode=true",
    "algorithm.rollout_correction.rollout_rs=seq_sum_k1",
    "algorithm.rollout_correction.rollout_rs_threshold='0.5_2.0'",
]


def test_bypass_mode_reaches_the_workers_loss_and_rejects_there():
    """verl switches to its bypass-mode loss on the driver's config mid-step, after the workers were built;
    the loss a worker builds from the run's config must already be it. In bypass mode the PPO ratio is to
    the behaviour policy: with the current policy at the proximal one, ratios (0.5, 3) and (1.25, 8).
    Sequence 1's ratio 10 leaves the band [0.5, 2] and is rejected; sequence 0 (A = +1) gives
    -min(0.5, 0.8) and -min(3, 1.2) over its 2 tokens."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        cfg = compose(config_name="fully_async_ppo_cpu", overrides=BYPASS)
    share_correction_with_loss(cfg)
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)  # what a training worker builds
    assert actor.policy_loss.loss_mode == "bypass_mode"
    loss, _ = get_policy_loss_fn(actor.policy_loss.loss_mode)(
        old_log_prob=PROX - BEHAVIOUR_WEIGHTS.log(), log_prob=PROX.clone(), advantages=ADVANTAGES,
        response_mask=torch.ones(2, 2), loss_agg_mode=actor.loss_agg_mode, config=actor,
    )  # fmt: skip
    assert loss.item() == pytest.approx((-0.5 - 1.2) / 2)


def test_decoupled_ppo_with_bypass_mode_is_refused_naming_both_keys():
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        cfg = compose(config_name="fully_async_ppo_cpu", overrides=CORRECTIONS["decoupled_ppo"] + BYPASS[:1])
    with pytest.raises(ValueError, match="loss_mode=decoupled_ppo.*bypass_mode=false"):
        share_correction_with_loss(cfg)
