# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The Megatron path on CPU, as far as it goes without Megatron's CUDA forward.

megatron-core imports on CPU and its model-parallel state initialises on gloo, so this builds verl's
real Megatron worker (up to ``init_model``, which builds CUDA models) and drives the patched
``MegatronPPOActor``'s mini-batching and update bookkeeping. Skipped where megatron-core is not
installed.
"""

from __future__ import annotations

import importlib.util
import math
import socket
from types import ModuleType

import pytest
import torch
import torch.distributed as dist
from verl import DataProto

from rllm_fully_async import patches

pytest.importorskip("megatron.core", reason="megatron-core is not installed")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module", autouse=True)
def megatron_world():
    """A one-rank gloo process group with Megatron's model-parallel groups (all of size 1)."""
    from megatron.core import parallel_state as mpu

    started = not dist.is_initialized()
    if started:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    mpu.initialize_model_parallel(tensor_model_parallel_size=1, pipeline_model_parallel_size=1)
    yield
    mpu.destroy_model_parallel()
    if started:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def megatron_config():
    from hydra import compose, initialize_config_module

    with initialize_config_module("verl.trainer.config", version_base=None):
        return compose(
            "ppo_megatron_trainer",
            overrides=[
                "actor_rollout_ref.rollout.n=1",
                "actor_rollout_ref.actor.ppo_mini_batch_size=2",
                "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
                "actor_rollout_ref.ref.megatron.param_offload=true",
            ],
        )


def construct_worker(cls: type, config, role: str, monkeypatch: pytest.MonkeyPatch):
    """Run a Megatron worker's ``__init__`` on CPU; only the CUDA RNG seeding is skipped."""
    from verl.workers import megatron_workers

    set_seed = megatron_workers.set_random_seed
    monkeypatch.setattr(
        megatron_workers, "set_random_seed", lambda seed, only_rollout=False: set_seed(seed, True)
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # past our worker's CPU refusal
    # verl's Worker reads its rank from the environment (the process group already exists)
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return cls(config.actor_rollout_ref, role)


@pytest.mark.parametrize("offload", [True, False])
def test_actor_ref_worker_knows_whether_to_offload_the_reference(
    megatron_config, monkeypatch: pytest.MonkeyPatch, offload: bool
):
    from omegaconf import OmegaConf
    from verl.workers import megatron_workers

    from rllm_fully_async.trainer.workers import megatron_worker_class

    config = OmegaConf.merge(
        megatron_config, {"actor_rollout_ref": {"ref": {"megatron": {"param_offload": offload}}}}
    )
    worker = construct_worker(megatron_worker_class(), config, "actor_ref", monkeypatch)
    assert worker._is_actor and worker._is_ref and not worker._is_rollout
    assert worker._ref_is_offload_param is offload  # init_model reads it after building the reference

    # verl 0.7.1 itself sets it only for a ref-only worker
    upstream = construct_worker(
        megatron_workers.ActorRolloutRefWorker, config, "actor_rollout_ref", monkeypatch
    )
    assert not hasattr(upstream, "_ref_is_offload_param")


@pytest.fixture(scope="module")
def megatron_actor(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModuleType]:
    """{'patched', 'original'} -> megatron_actor.py built from the installed verl's file, as a module."""
    patch = patches.MEGATRON_ACTOR
    installed = (patches.default_target() / patch.target).read_text(encoding="utf-8")
    original = (
        patch.original_text(installed)
        if patch.state_of(installed.encode()) != patches.ORIGINAL
        else installed
    )
    folder = tmp_path_factory.mktemp("megatron_actor")
    modules = {}
    for name, text in {"original": original, "patched": patch.patched_text(original)}.items():
        path = folder / f"megatron_actor_{name}.py"
        path.write_text(text, encoding="utf-8")
        spec = importlib.util.spec_from_file_location(f"rllm_test_megatron_actor_{name}", path)
        modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(modules[name])
    return modules


class RecordingOptimizer:
    """Counts the optimizer steps ``update_policy`` takes (Megatron's optimizer needs CUDA)."""

    def __init__(self) -> None:
        self.steps = 0

    def zero_grad(self) -> None:
        pass

    def step(self):
        self.steps += 1
        return True, 1.5, None


def bare_actor(module: ModuleType, megatron_config, **actor_overrides):
    """A MegatronPPOActor without a model: the parts of it that run on CPU."""
    from omegaconf import OmegaConf
    from verl.utils.config import omega_conf_to_dataclass

    actor = object.__new__(module.MegatronPPOActor)
    actor_cfg = OmegaConf.merge(megatron_config.actor_rollout_ref.actor, actor_overrides)
    actor.config = omega_conf_to_dataclass(actor_cfg)
    actor.enable_routing_replay = False
    actor.actor_module = []
    actor.actor_optimizer = RecordingOptimizer()
    return actor


def batch_of(response_mask: torch.Tensor) -> DataProto:
    n, width = response_mask.shape
    ids = torch.randint(4, 300, (n, 3 + width))
    return DataProto.from_dict(
        tensors={
            "responses": ids[:, 3:],
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "position_ids": torch.arange(3 + width).expand(n, -1).contiguous(),
            "response_mask": response_mask,
            "old_log_probs": torch.zeros(n, width),
            "advantages": torch.zeros(n, width),
        },
        meta_info={"temperature": 1.0},
    )


def test_one_mini_batch_per_epoch(megatron_actor, megatron_config):
    batch = batch_of(torch.ones(8, 5))
    actor = bare_actor(megatron_actor["patched"], megatron_config, ppo_epochs=2, shuffle=False)
    assert [len(mb) for mb in actor.make_minibatch_iterator(batch)] == [8, 8]

    original = bare_actor(megatron_actor["original"], megatron_config, ppo_epochs=2, shuffle=False)
    assert [len(mb) for mb in original.make_minibatch_iterator(batch)] == [2] * 8


def fake_last_stage(shares: list[dict]):
    """The per-micro-batch outputs the last pipeline stage hands back: each loss term's micro-batch share."""

    def forward_backward_batch(data, **kwargs):
        return {"output": [[dict(share), None] for share in shares]}

    return forward_backward_batch


def test_update_counts_the_whole_batch_and_averages_metrics_over_epochs(
    megatron_actor, megatron_config, monkeypatch
):
    monkeypatch.setattr(torch.cpu, "empty_cache", lambda: None, raising=False)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    actor = bare_actor(megatron_actor["patched"], megatron_config, ppo_epochs=2, shuffle=False)
    # Two micro-batches whose shares of the whole-batch token-means add up to pg 0.5, entropy 3.0, KL 0.2.
    shares = [
        {"actor/pg_loss": [0.2], "actor/entropy": [1.0], "actor/kl_loss": 0.05, "actor/pg_clipfrac": [0.1]},
        {"actor/pg_loss": [0.3], "actor/entropy": [2.0], "actor/kl_loss": 0.15, "actor/pg_clipfrac": [0.3]},
    ]
    actor.forward_backward_batch = fake_last_stage(shares)

    metrics = actor.update_policy(actor.make_minibatch_iterator(batch_of(mask)))
    assert actor.actor_optimizer.steps == 2  # one per epoch
    info = actor.config.global_batch_info
    assert (info["dp_size"], info["batch_num_tokens"], info["global_batch_size"]) == (1, 8, 3)
    assert metrics["actor/pg_loss"] == pytest.approx(0.5)
    assert metrics["actor/entropy"] == pytest.approx(3.0)
    assert metrics["actor/kl_loss"] == pytest.approx(0.2)
    assert metrics["actor/pg_clipfrac"] == [0.1, 0.3, 0.1, 0.3]  # per-micro-batch metrics stay lists
    assert metrics["actor/grad_norm"] == [1.5, 1.5]


def test_update_without_response_tokens_skips_the_step(megatron_actor, megatron_config, monkeypatch):
    monkeypatch.setattr(torch.cpu, "empty_cache", lambda: None, raising=False)
    actor = bare_actor(megatron_actor["patched"], megatron_config, ppo_epochs=2, shuffle=False)
    actor.forward_backward_batch = fake_last_stage([{"actor/pg_loss": [math.nan]}])

    metrics = actor.update_policy(actor.make_minibatch_iterator(batch_of(torch.zeros(4, 3))))
    assert actor.actor_optimizer.steps == 0
    assert metrics == {"actor/pg_loss": 0.0, "actor/kl_loss": 0.0, "actor/grad_norm": [0.0]}
