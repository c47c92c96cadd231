# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""GPU acceptance on one node: SGLang + FSDP trainer + NCCL weight sync, a short GSM8K run, Megatron.

Run with ``bash tests/gpu/run.sh`` (or ``pytest -m gpu``); see tests/gpu/conftest.py for what it needs.
Every test skips on a machine without it, naming what is missing.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from gpu_requirements import missing_gpu_stack
from hydra import compose, initialize_config_dir

from rllm_fully_async.paths import config_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared worker helpers
from worker_helpers import greedy_reference, ppo_batch  # noqa: E402

_MISSING = missing_gpu_stack()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")]

NEW_TOKENS = 12
QUESTIONS = ["What is 12 times 7?", "Name the largest planet of the solar system."]
# The trainer's weights cross NCCL in float32 into a float32 server, so the server's greedy tokens after a
# sync equal those of the trained checkpoint under plain transformers (torch_native attention, no graphs).
SERVER_ARGS = ["--attention-backend", "torch_native", "--disable-cuda-graph"]


def has_flash_attn() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def has_megatron() -> bool:
    return (
        importlib.util.find_spec("megatron") is not None
        and importlib.util.find_spec("megatron.core") is not None
    )


def gpu_config(name: str, model_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        return compose(
            name,
            overrides=[
                f"actor_rollout_ref.model.path={model_dir}",
                f"actor_rollout_ref.model.use_remove_padding={has_flash_attn()}",
                "trainer.n_gpus_per_node=1",
                "rollout_servers.num_servers=1",
                "actor_rollout_ref.rollout.n=1",
                "actor_rollout_ref.actor.ppo_mini_batch_size=4",
                "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
                "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4",
                "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4",
                "actor_rollout_ref.actor.checkpoint.save_contents=[model,hf_model]",
                *overrides,
            ],
        )


@pytest.mark.parametrize("load_format", [None, "flattened_bucket"])
def test_nccl_weight_sync_changes_greedy_output_to_the_trained_weights(
    ray_local, model_dir, tmp_path, load_format
):
    """Greedy output before a sync is the checkpoint's; after an update and a NCCL sync, the trained one's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rllm_fully_async.bench.client_gate import ClientGate
    from rllm_fully_async.servers.rollout_servers import RolloutServers, RolloutServerSpec
    from rllm_fully_async.sync.param_sync import ParamSync
    from rllm_fully_async.trainer.workers import create_actor_worker_group, shutdown_worker_group

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
        for q in QUESTIONS
    ]
    cfg = gpu_config(
        "fully_async_ppo_trainer",
        model_dir,
        "actor_rollout_ref.actor.fsdp_config.dtype=float32",
        "actor_rollout_ref.actor.optim.lr=1e-4",
    )
    spec = RolloutServerSpec(
        kind="sglang",
        model_path=str(model_dir),
        gpu_memory_utilization=0.5,
        dtype="float32",
        log_dir=str(tmp_path / "server"),
        extra_args=SERVER_ARGS,
    )
    with RolloutServers(spec) as servers:
        actor_wg = create_actor_worker_group(cfg, role="actor", num_workers=1)
        gate = ClientGate(servers.urls)
        sync = ParamSync(
            actor_wg,
            servers.urls,
            gate,
            backend="nccl",
            bucket_size_mb=128,
            timeout_s=300,
            load_format=load_format,
        )
        try:
            actor_wg.init_model()
            sync.init_group()

            def greedy(prompt):
                params = {"temperature": 0.0, "max_new_tokens": NEW_TOKENS, "ignore_eos": True}
                return gate.submit(gate.client.generate(prompt, params)).result(timeout=120)

            original = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
            before = [greedy(p) for p in prompts]
            for prompt, out in zip(prompts, before, strict=True):
                assert out.token_ids == greedy_reference(original, prompt, NEW_TOKENS)[0]

            # The unchanged weights, pushed: nothing may change (names, order, dtype and shapes all right).
            sync.sync(1)
            assert [greedy(p).token_ids for p in prompts] == [o.token_ids for o in before]

            metrics = actor_wg.update_actor(ppo_batch(batch=4)).meta_info["metrics"]
            assert all(
                math.isfinite(v) and v > 0
                for v in torch.tensor(metrics["actor/grad_norm"]).flatten().tolist()
            )
            actor_wg.save_checkpoint(str(tmp_path / "ckpt"))
            trained = AutoModelForCausalLM.from_pretrained(
                tmp_path / "ckpt" / "huggingface", torch_dtype=torch.float32
            )
            stats = sync.sync(2)
            assert stats.version == 2 and stats.bytes > 1e9  # ~0.5 B float32 parameters

            for prompt, old in zip(prompts, before, strict=True):
                out = greedy(prompt)
                tokens, logprobs = greedy_reference(trained, prompt, NEW_TOKENS)
                assert out.token_ids == tokens
                torch.testing.assert_close(
                    torch.tensor(out.logprobs), torch.tensor(logprobs), atol=2e-2, rtol=0
                )
                assert [c.version for c in out.chunks] == [2]
                assert max(abs(a - b) for a, b in zip(out.logprobs, old.logprobs, strict=True)) > 1e-3
        finally:
            sync.close()
            gate.close()
            shutdown_worker_group(actor_wg)


def test_fully_async_gsm8k_few_steps(model_dir, gsm8k_dir, tmp_path):
    """`python -m rllm_fully_async.main` on GSM8K: a trainer GPU, a SGLang server, three steps, all synced."""
    cmd = [
        sys.executable, "-m", "rllm_fully_async.main", "--config-name", "fully_async_ppo_trainer",
        f"actor_rollout_ref.model.path={model_dir}",
        f"actor_rollout_ref.model.use_remove_padding={has_flash_attn()}",
        f"data.train_files={gsm8k_dir}/train.parquet", f"data.val_files={gsm8k_dir}/test.parquet",
        "data.max_prompt_length=512", "data.max_response_length=256",
        "trainer.n_gpus_per_node=1", "rollout_servers.num_servers=1",
        "actor_rollout_ref.actor.ppo_mini_batch_size=8", "actor_rollout_ref.rollout.n=4",
        "actor_rollout_ref.rollout.gpu_memory_utilization=0.5",
        "trainer.total_training_steps=3", "trainer.test_freq=-1", "trainer.save_freq=-1",
        "async_training.trigger_parameter_sync_step=1",  # a weight sync after each of the 3 steps
        "trainer.logger=[console,file]", f"trainer.default_local_dir={tmp_path}/ckpt",
        f"rollout_servers.log_dir={tmp_path}/servers", f"hydra.run.dir={tmp_path}/hydra",
    ]  # fmt: skip
    env = {**os.environ, "VERL_FILE_LOGGER_PATH": str(tmp_path / "metrics.jsonl")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-6000:]
    steps = [
        json.loads(line)["data"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if line
    ]
    steps = [s for s in steps if "async/trained" in s]
    assert len(steps) == 3, [sorted(s) for s in steps]
    for step in steps:
        assert math.isfinite(step["actor/pg_loss"]) and 0.0 <= step["reward/mean"] <= 1.0
        assert step["async/param_sync_transfer_s"] > 0
        assert step["async/drawn"] == (
            step["async/trained"] + step["async/filtered"] + step["async/queued"] + step["async/in_flight"]
        )
    assert "param syncs: 3" in proc.stdout, proc.stdout[-3000:]


@pytest.mark.skipif(not has_megatron(), reason="needs megatron-core: bash install/gpu-megatron-sglang.sh")
def test_megatron_actor_ref_worker_builds_and_exports_hf_weights(ray_local, model_dir):
    """verl's Megatron worker as actor + reference (the case verl 0.7.1 crashed on) builds and exports every
    Hugging Face tensor of the checkpoint for weight sync."""
    from safetensors import safe_open

    from rllm_fully_async.trainer.workers import create_actor_worker_group, shutdown_worker_group

    cfg = gpu_config(
        "fully_async_ppo_megatron_trainer", model_dir, "actor_rollout_ref.actor.use_kl_loss=True"
    )
    actor_wg = create_actor_worker_group(cfg, role="actor_ref", num_workers=1)
    try:
        actor_wg.init_model()
        names = {name for name, _, _ in ray_local.get(actor_wg.get_weight_metadata(None))[0]}
        checkpoint = set()
        for path in model_dir.glob("*.safetensors"):
            with safe_open(str(path), "pt") as f:
                checkpoint |= set(f.keys())
        assert checkpoint <= names, sorted(checkpoint - names)[:10]
    finally:
        shutdown_worker_group(actor_wg)
