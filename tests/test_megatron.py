# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The Megatron path on CPU, as far as it goes without Megatron's CUDA model.

megatron-core imports on CPU and its model-parallel state initialises on gloo. This builds verl's
real Megatron worker (up to ``init_model``, which builds CUDA models), and runs the patched and the
original ``MegatronPPOActor.update_policy`` with verl's real ``forward_backward_batch`` and loss
function; the two CUDA-only pieces stand in: the toy Hugging Face model answers GPTModel's call, and a
CPU loop keeps megatron-core's schedule contract. Skipped where megatron-core is not installed.
"""

from __future__ import annotations

import importlib.util
import socket
from types import ModuleType

import pytest
import torch
import torch.distributed as dist
from actor_reference import (
    ENTROPY_COEFF,
    KL_COEF,
    KL_TYPE,
    SKEWED_PROMPTS,
    SKEWED_RESPONSES,
    installed_original,
    make_batch,
    reference,
    relative_error,
)
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
    original = installed_original(patch)
    folder = tmp_path_factory.mktemp("megatron_actor")
    modules = {}
    for name, text in {"original": original, "patched": patch.patched_text(original)}.items():
        path = folder / f"megatron_actor_{name}.py"
        path.write_text(text, encoding="utf-8")
        spec = importlib.util.spec_from_file_location(f"rllm_test_megatron_actor_{name}", path)
        modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(modules[name])
    return modules


class HFAsGPTModel(torch.nn.Module):
    """The toy Hugging Face model behind Megatron ``GPTModel``'s call signature (GPTModel needs CUDA).

    verl's bshd forward (``model_forward_gen``) removes the left padding, calls
    ``model(input_ids=, position_ids=, attention_mask=)`` for logits and hands them to the actor's
    logits processor (Megatron's vocab-parallel log-probs and entropy); this module answers that call.
    """

    def __init__(self, hf_model) -> None:
        super().__init__()
        self.hf_model = hf_model
        self.pre_process = self.post_process = True
        self.config = type("Config", (), {"sequence_parallel": False, "fp8": None})()

    def forward(self, input_ids, position_ids, attention_mask):
        return self.hf_model(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=attention_mask.long(),
            use_cache=False,
        ).logits

    def zero_grad_buffer(self) -> None:  # Megatron DDP's name for zeroing the gradients
        self.hf_model.zero_grad(set_to_none=True)


def cpu_schedule(*, forward_step_func, data_iterator, model, num_microbatches, forward_only, **_):
    """megatron-core's no-pipelining schedule without its CUDA bookkeeping (a CUDA token counter).

    Its contract for a loss function returning (loss, metrics), from ``forward_step_calc_loss``:
    loss *= context-parallel size (1 here), loss /= num_microbatches, then backward per micro-batch.
    """
    reduced = []
    for _ in range(num_microbatches):
        output, loss_func = forward_step_func(data_iterator, model[0])
        loss, metrics = loss_func(output)
        if not forward_only:
            (loss / num_microbatches).backward()
        reduced.append(metrics)
    return reduced


class RecordingOptimizer:
    """Records the gradients of each step ``update_policy`` takes (Megatron's optimizer needs CUDA)."""

    def __init__(self, model) -> None:
        self.model = model
        self.grads: list[list[torch.Tensor]] = []

    def zero_grad(self) -> None:
        self.model.zero_grad(set_to_none=True)

    def step(self):
        self.grads.append([p.grad.detach().clone() for p in self.model.parameters()])
        return True, 1.5, None


def make_actor(module: ModuleType, megatron_config, model_dir, monkeypatch, **actor_overrides):
    """A MegatronPPOActor on the toy model: verl's real forward_backward_batch and loss function."""
    from megatron.core.transformer import TransformerConfig
    from omegaconf import OmegaConf
    from transformers import AutoConfig, AutoModelForCausalLM
    from verl.utils.config import omega_conf_to_dataclass

    monkeypatch.setattr(torch.cpu, "empty_cache", lambda: None, raising=False)
    monkeypatch.setattr(module, "get_forward_backward_func", lambda: cpu_schedule)
    hf_model = AutoModelForCausalLM.from_pretrained(
        model_dir, torch_dtype=torch.float32, attn_implementation="sdpa"
    )
    actor = object.__new__(module.MegatronPPOActor)  # its __init__ reads Megatron CUDA-model state
    overrides = {"shuffle": False, "megatron": {"use_remove_padding": False}, **actor_overrides}
    actor.config = omega_conf_to_dataclass(
        OmegaConf.merge(megatron_config.actor_rollout_ref.actor, overrides)
    )
    actor.actor_module = [HFAsGPTModel(hf_model)]
    actor.actor_optimizer = RecordingOptimizer(hf_model)
    actor.hf_config = AutoConfig.from_pretrained(model_dir)
    actor.tf_config = TransformerConfig(num_layers=2, hidden_size=64, num_attention_heads=4)
    actor.enable_routing_replay = False
    actor.use_fused_kernels = False
    actor.mtp_config = None
    return actor, hf_model


def update(actor, batch: DataProto) -> dict:
    return actor.update_policy(actor.make_minibatch_iterator(batch.select(deepcopy=True)))


def test_one_mini_batch_per_epoch(megatron_actor, megatron_config, toy_model_dir, monkeypatch):
    batch = make_batch([4] * 8, [3] * 8)
    actor, _ = make_actor(
        megatron_actor["patched"], megatron_config, toy_model_dir, monkeypatch, ppo_epochs=2
    )
    assert [len(mb) for mb in actor.make_minibatch_iterator(batch)] == [8, 8]

    original, _ = make_actor(
        megatron_actor["original"], megatron_config, toy_model_dir, monkeypatch, ppo_epochs=2
    )
    assert [len(mb) for mb in original.make_minibatch_iterator(batch)] == [2] * 8  # ppo_mini_batch_size 2


def test_update_gradient_and_metrics_are_whole_batch_token_means(
    megatron_actor, megatron_config, toy_model_dir, monkeypatch
):
    overrides = dict(
        ppo_epochs=2,
        use_dynamic_bsz=True,
        ppo_max_token_len_per_gpu=70,  # two micro-batches: the 60-token response and the rest
        ppo_mini_batch_size=8,
        entropy_coeff=ENTROPY_COEFF,
        use_kl_loss=True,
        kl_loss_coef=KL_COEF,
        kl_loss_type=KL_TYPE,
    )
    actor, hf_model = make_actor(
        megatron_actor["patched"], megatron_config, toy_model_dir, monkeypatch, **overrides
    )
    batch = make_batch(SKEWED_PROMPTS, SKEWED_RESPONSES)
    _, terms = reference(hf_model, batch)
    batch.batch["old_log_probs"] = terms["log_prob"]  # ratio 1 in both epochs (no step moves weights)
    ref_grads, ref_terms = reference(hf_model, batch, ENTROPY_COEFF, KL_COEF)

    metrics = update(actor, batch)
    grads = actor.actor_optimizer.grads
    assert len(grads) == 2  # one step per epoch
    assert all(relative_error(step, ref_grads) < 1e-4 for step in grads)
    info = actor.config.global_batch_info
    assert (info["dp_size"], info["batch_num_tokens"], info["global_batch_size"]) == (1, 74, 8)
    assert metrics["actor/pg_loss"] == pytest.approx(ref_terms["pg"], rel=1e-4, abs=1e-6)
    assert metrics["actor/entropy"] == pytest.approx(ref_terms["entropy"], rel=1e-4)
    assert metrics["actor/kl_loss"] == pytest.approx(ref_terms["kl"], rel=1e-4)
    assert len(metrics["actor/pg_clipfrac"]) == 4  # per-micro-batch metrics stay lists (2 epochs x 2)
    assert metrics["actor/grad_norm"] == [1.5, 1.5]

    original, _ = make_actor(
        megatron_actor["original"], megatron_config, toy_model_dir, monkeypatch, **overrides
    )
    update(original, batch)
    # verl weighs each micro-batch's own token-mean equally
    assert relative_error(original.actor_optimizer.grads[0], ref_grads) > 0.05


def test_micro_batch_without_response_tokens(megatron_actor, megatron_config, toy_model_dir, monkeypatch):
    # Fixed micro-batches of 2: the first (samples 0 and 1) has no response token; rollout_log_probs present.
    overrides = dict(ppo_micro_batch_size_per_gpu=2, ppo_mini_batch_size=8)
    actor, hf_model = make_actor(
        megatron_actor["patched"], megatron_config, toy_model_dir, monkeypatch, **overrides
    )
    batch = make_batch(SKEWED_PROMPTS, [4, 3, 5, 2, 6, 1, 3, 2], empty_mask_rows=(0, 1))
    _, terms = reference(hf_model, batch)
    batch.batch["old_log_probs"] = terms["log_prob"]
    ref_grads, ref_terms = reference(hf_model, batch)

    metrics = update(actor, batch)
    assert relative_error(actor.actor_optimizer.grads[0], ref_grads) < 1e-4
    assert metrics["actor/pg_loss"] == pytest.approx(ref_terms["pg"], rel=1e-4, abs=1e-6)
    assert len(metrics["rollout_corr/kl"]) == 3  # only the three micro-batches with tokens

    original, _ = make_actor(
        megatron_actor["original"], megatron_config, toy_model_dir, monkeypatch, **overrides
    )
    with pytest.raises(Exception, match="at least one valid token"):
        update(original, batch)


def test_update_without_response_tokens_skips_the_step(
    megatron_actor, megatron_config, toy_model_dir, monkeypatch
):
    actor, hf_model = make_actor(
        megatron_actor["patched"], megatron_config, toy_model_dir, monkeypatch, ppo_epochs=2
    )
    batch = make_batch([4, 5, 6, 4], [3, 2, 4, 1], empty_mask_rows=(0, 1, 2, 3))

    metrics = update(actor, batch)
    assert actor.actor_optimizer.grads == []
    assert metrics == {"actor/pg_loss": 0.0, "actor/kl_loss": 0.0, "actor/grad_norm": [0.0]}
    assert all(p.grad is None for p in hf_model.parameters())  # no forward or backward ran
