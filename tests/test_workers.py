# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Training workers: verl's FSDP2 worker on CPU under Ray, its weight metadata, and clear refusals."""

from __future__ import annotations

import pytest
import ray
import torch
from omegaconf import open_dict
from transformers import AutoModelForCausalLM
from worker_helpers import actor_config, ppo_batch

from rllm_fully_async.cluster.placement import PlacementError
from rllm_fully_async.trainer.workers import (
    MegatronUnavailableError,
    apply_cpu_overrides,
    create_actor_worker_group,
    megatron_worker_class,
    shutdown_worker_group,
)


@pytest.fixture(scope="module")
def actor_wg(ray_local, toy_model_dir):
    """Actor and reference policy in one process: the reference model is built the way role="ref" is."""
    wg = create_actor_worker_group(actor_config(toy_model_dir), role="actor_ref")
    wg.init_model()
    yield wg
    shutdown_worker_group(wg)


def test_weight_metadata_is_the_hf_state_dict_in_order(actor_wg, toy_model_dir):
    hf_state = AutoModelForCausalLM.from_pretrained(toy_model_dir).state_dict()
    expected = [(name, "float32", list(t.shape)) for name, t in hf_state.items()]

    (metadata,) = ray.get(actor_wg.get_weight_metadata())
    assert [tuple(entry) for entry in metadata] == expected
    assert any(name == "lm_head.weight" for name, _, _ in metadata)  # tied, but SGLang's loaders expect it

    (as_bf16,) = ray.get(actor_wg.get_weight_metadata("bfloat16"))
    assert {dtype for _, dtype, _ in as_bf16} == {"bfloat16"}


def test_reference_policy_runs_on_cpu_and_matches_the_untrained_actor(actor_wg):
    batch = ppo_batch()
    ref = actor_wg.compute_ref_log_prob(batch).batch["ref_log_prob"]
    actor = actor_wg.compute_log_prob(batch).batch["old_log_probs"]
    assert ref.shape == (4, 6) and bool(torch.isfinite(ref).all())
    # verl runs the reference policy in bfloat16 (ref.fsdp_config.dtype), this actor in float32.
    torch.testing.assert_close(ref.float(), actor, atol=0.05, rtol=0.02)


def test_broadcast_without_a_group_fails_on_every_rank(actor_wg):
    with pytest.raises(ray.exceptions.RayTaskError, match="no weight-update group 'missing'"):
        ray.get(actor_wg.broadcast_weights("missing", 16))


def test_cpu_overrides_refuse_fsdp1(toy_model_dir):
    config = actor_config(toy_model_dir, "actor_rollout_ref.actor.strategy=fsdp").actor_rollout_ref
    with pytest.raises(ValueError, match="actor_rollout_ref.actor.strategy=fsdp2"):
        apply_cpu_overrides(config)


def test_megatron_on_cpu_fails_clearly(toy_model_dir):
    config = actor_config(toy_model_dir, "actor_rollout_ref.actor.strategy=megatron")
    with pytest.raises(
        MegatronUnavailableError, match="actor_rollout_ref.actor.strategy=megatron.*trainer.device=cpu"
    ):
        create_actor_worker_group(config)
    try:
        import megatron.core  # noqa: F401
    except ImportError:
        with pytest.raises(MegatronUnavailableError, match="megatron-core is not installed"):
            megatron_worker_class()
    else:  # megatron-core present: the class builds (its constructor then needs CUDA)
        assert megatron_worker_class().__name__ == "MegatronActorRefWorker"


def test_bad_role_strategy_and_size_fail_before_starting_anything(ray_local, toy_model_dir):
    config = actor_config(toy_model_dir)
    with pytest.raises(ValueError, match="role='rollout'.*'actor', 'actor_ref', 'ref'"):
        create_actor_worker_group(config, role="rollout")
    with open_dict(config):
        config.actor_rollout_ref.actor.strategy = "deepspeed"
    with pytest.raises(ValueError, match="actor_rollout_ref.actor.strategy='deepspeed'"):
        create_actor_worker_group(config)
    with pytest.raises(PlacementError, match=r"training workers: 64 x \{CPU: 1\}.*\{CPU: 64\} on one node"):
        create_actor_worker_group(actor_config(toy_model_dir), num_workers=64)
    if not ray.available_resources().get("GPU"):
        with pytest.raises(PlacementError, match="no node has the resource 'GPU'.*trainer.n_gpus_per_node"):
            create_actor_worker_group(actor_config(toy_model_dir, "trainer.device=cuda"))


# Last in this module: it trains the shared actor, which the tests above expect untrained.
def test_train_step_moves_the_policy_towards_the_rewarded_response(actor_wg, toy_model_dir):
    """One FullyAsyncTrainer step on real workers: GRPO advantages within each group, verl's update, the
    step's metrics; then the rewarded response gained the most likelihood, the others lost overall."""
    from transformers import AutoTokenizer

    from rllm_fully_async.rollout.trajectory import Sample, TrajectoryGroup
    from rllm_fully_async.trainer.batch import build_batch
    from rllm_fully_async.trainer.fully_async_trainer import FullyAsyncTrainer

    tokenizer = AutoTokenizer.from_pretrained(toy_model_dir)
    overrides = ["actor_rollout_ref.rollout.n=4", "algorithm.adv_estimator=grpo"]
    config = actor_config(toy_model_dir, *overrides)
    with open_dict(config):
        config.async_training = {"required_samples": 2, "trigger_parameter_sync_step": 1}
    prompt = tokenizer.encode("Say 7")
    responses = [tokenizer.encode(text) for text in ("7", "3", "5", "1")]

    def group(uid: str, rewarded: int, min_version: int) -> TrajectoryGroup:
        samples = [
            Sample(prompt, r, [-1.0] * len(r), float(i == rewarded), "stop", min_version, 1)
            for i, r in enumerate(responses)
        ]
        return TrajectoryGroup(uid, 0, {"data_source": "toy"}, samples, launch_version=min_version)

    groups = [group("a", 0, 1), group("b", 0, 0)]
    trainer = FullyAsyncTrainer(config, tokenizer, actor_wg, None, None, None, total_training_steps=1)
    trainer.param_version = 1
    before = actor_wg.compute_log_prob(build_batch(groups, tokenizer.pad_token_id, 1)).batch["old_log_probs"]

    metrics = trainer._train_step(groups)

    after = actor_wg.compute_log_prob(build_batch(groups, tokenizer.pad_token_id, 1)).batch["old_log_probs"]
    mask = build_batch(groups, tokenizer.pad_token_id, 1).batch["response_mask"].bool()
    gain = ((after - before) * mask).sum(-1).view(2, 4)  # per sample, group by group
    assert (gain[:, 0] > 0).all(), gain  # the rewarded response of each group gains the most
    assert (gain[:, 0] > gain[:, 1:].max(dim=1).values).all() and gain[:, 1:].sum() < 0, gain
    assert metrics["training/global_step"] == 1 and metrics["async/batch_samples"] == 8
    assert metrics["reward/mean"] == 0.25 and metrics["async/staleness_mean"] == 0.5
    assert metrics["critic/advantages/max"] > 0 > metrics["critic/advantages/min"]
    assert torch.isfinite(torch.tensor(metrics["actor/pg_loss"])) and "actor/entropy" in metrics
    assert {"timing_s/step", "timing_s/old_log_prob", "timing_s/update_actor"} <= set(metrics)
