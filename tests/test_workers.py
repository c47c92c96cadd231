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
