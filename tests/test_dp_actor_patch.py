# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The patched ``DataParallelPPOActor.update_policy`` on CPU, against a hand-computed whole-batch loss.

The patched, the original and the earlier-release-patched ``dp_actor.py`` are built from the installed
verl's file with the shipped patches and loaded as separate modules, so these tests hold whether or
not the installed verl is patched. The actor runs the real verl code on the toy model: gloo world size
1 (two gloo processes with FSDP2 for the multi-rank test), float32, padded inputs. A real optimizer's
step pre-hook records the gradients each step would apply.
"""

from __future__ import annotations

import importlib.util
import math
import socket
import subprocess
import sys
import time
from pathlib import Path
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

# verl enters torch.autocast with the float32 param dtype, which CPU autocast ignores with a warning.
pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast:UserWarning")


@pytest.fixture(scope="module", autouse=True)
def gloo_world():
    """A one-rank gloo process group, which DataParallelPPOActor needs even on one CPU process."""
    if dist.is_initialized():
        yield
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def dp_actor_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{'patched', 'original', 'earlier'} -> a copy of dp_actor.py ('earlier': the previous patch release)."""
    patch = patches.DP_ACTOR
    original = installed_original(patch)
    earlier = patches._apply_hunks(original, patch.hunks(patch.previous[-1][0]), reverse=False)
    texts = {"original": original, "patched": patch.patched_text(original), "earlier": earlier}
    folder = tmp_path_factory.mktemp("dp_actor")
    files = {}
    for name, text in texts.items():
        files[name] = folder / f"dp_actor_{name}.py"
        files[name].write_text(text, encoding="utf-8")
    return files


@pytest.fixture(scope="module")
def dp_actor(dp_actor_files: dict[str, Path]) -> dict[str, ModuleType]:
    """The files of ``dp_actor_files``, loaded as separate modules."""
    modules = {}
    for name, path in dp_actor_files.items():
        spec = importlib.util.spec_from_file_location(f"rllm_test_dp_actor_{name}", path)
        modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(modules[name])
    return modules


@pytest.fixture(scope="module")
def base_config():
    """verl's own composed ``ppo_trainer`` config, set up for a CPU float32 actor."""
    import verl
    from hydra import compose, initialize_config_dir

    config_dir = Path(verl.__file__).parent / "trainer" / "config"
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return compose(
            "ppo_trainer",
            overrides=[
                "actor_rollout_ref.rollout.n=1",
                "actor_rollout_ref.model.use_remove_padding=false",
                "actor_rollout_ref.actor.strategy=fsdp2",
                "actor_rollout_ref.actor.fsdp_config.dtype=float32",
                "actor_rollout_ref.actor.use_torch_compile=false",
                "actor_rollout_ref.actor.grad_clip=1e9",  # compare raw gradients, not clipped ones
            ],
        )


@pytest.fixture
def model(toy_model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        toy_model_dir, torch_dtype=torch.float32, attn_implementation="sdpa"
    )


def make_actor(module: ModuleType, base_config, model, **actor_overrides):
    """A DataParallelPPOActor with an SGD optimizer; returns (actor, gradients recorded at each step)."""
    from omegaconf import OmegaConf
    from verl.utils.config import omega_conf_to_dataclass

    actor_cfg = OmegaConf.merge(base_config.actor_rollout_ref.actor, actor_overrides)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: every call sees the same weights
    steps: list[list[torch.Tensor]] = []
    optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: steps.append([p.grad.detach().clone() for p in model.parameters()])
    )
    return module.DataParallelPPOActor(omega_conf_to_dataclass(actor_cfg), model, optimizer), steps


def test_dynamic_bsz_update_is_whole_batch_token_mean(dp_actor, base_config, model):
    batch = make_batch(SKEWED_PROMPTS, SKEWED_RESPONSES)
    ref_grads, ref_terms = reference(model, batch, ENTROPY_COEFF, KL_COEF)
    overrides = dict(
        use_dynamic_bsz=True,
        ppo_max_token_len_per_gpu=70,
        ppo_mini_batch_size=8,
        entropy_coeff=ENTROPY_COEFF,
        use_kl_loss=True,
        kl_loss_coef=KL_COEF,
        kl_loss_type=KL_TYPE,
    )

    actor, steps = make_actor(dp_actor["patched"], base_config, model, **overrides)
    metrics = actor.update_policy(batch)
    assert len(steps) == 1
    assert relative_error(steps[0], ref_grads) < 1e-5
    assert metrics["actor/entropy"] == pytest.approx(ref_terms["entropy"], rel=1e-5)
    assert metrics["actor/kl_loss"] == pytest.approx(ref_terms["kl"], rel=1e-5)

    actor, steps = make_actor(dp_actor["original"], base_config, model, **overrides)
    actor.update_policy(batch)
    assert len(steps) == 1
    assert relative_error(steps[0], ref_grads) > 0.05  # verl weighs micro-batches by sample count


def test_fixed_micro_batches_scale_by_tokens_and_step_once(dp_actor, base_config, model):
    # 8 samples, micro-batches of 3 (3, 3, 2 samples with unequal token counts), ppo_mini_batch_size 4:
    # verl would make 2 optimizer steps with each micro-batch weighted 1/gradient_accumulation.
    batch = make_batch(SKEWED_PROMPTS, [9, 1, 3, 30, 2, 2, 7, 4])
    ref_grads, ref_terms = reference(model, batch)
    overrides = dict(use_dynamic_bsz=False, ppo_micro_batch_size_per_gpu=3, ppo_mini_batch_size=4)

    actor, steps = make_actor(dp_actor["patched"], base_config, model, **overrides)
    metrics = actor.update_policy(batch)
    assert len(steps) == 1
    assert relative_error(steps[0], ref_grads) < 1e-5
    assert metrics["actor/pg_loss"] == pytest.approx(ref_terms["pg"], rel=1e-5, abs=1e-7)
    assert len(metrics["actor/grad_norm"]) == 1

    actor, steps = make_actor(dp_actor["original"], base_config, model, **overrides)
    actor.update_policy(batch)
    assert len(steps) == 2


def test_dynamic_bsz_larger_batch_than_mini_batch_steps_once(dp_actor, base_config, model):
    batch = make_batch([4] * 12, [3, 8, 1, 5, 2, 9, 4, 4, 6, 2, 7, 3])
    ref_grads, _ = reference(model, batch)
    actor, steps = make_actor(
        dp_actor["patched"],
        base_config,
        model,
        use_dynamic_bsz=True,
        ppo_max_token_len_per_gpu=20,
        ppo_mini_batch_size=2,
    )
    actor.update_policy(batch)
    assert len(steps) == 1
    assert relative_error(steps[0], ref_grads) < 1e-5


def test_micro_batch_without_response_tokens(dp_actor, base_config, model):
    # The first micro-batch (samples 0 and 1) has no response token; rollout_log_probs are present.
    batch = make_batch(SKEWED_PROMPTS, [4, 3, 5, 2, 6, 1, 3, 2], empty_mask_rows=(0, 1))
    ref_grads, ref_terms = reference(model, batch)
    overrides = dict(use_dynamic_bsz=False, ppo_micro_batch_size_per_gpu=2, ppo_mini_batch_size=8)

    actor, steps = make_actor(dp_actor["patched"], base_config, model, **overrides)
    metrics = actor.update_policy(batch)
    assert len(steps) == 1
    assert relative_error(steps[0], ref_grads) < 1e-5
    assert metrics["actor/pg_loss"] == pytest.approx(ref_terms["pg"], rel=1e-5, abs=1e-7)
    assert len(metrics["rollout_corr/kl"]) == 3  # only the three micro-batches with tokens
    for name, value in metrics.items():
        values = value if isinstance(value, list) else [value]
        assert all(math.isfinite(v) for v in values), name

    actor, _ = make_actor(dp_actor["original"], base_config, model, **overrides)
    with pytest.raises(Exception, match="at least one valid token"):
        actor.update_policy(batch)


def test_batch_without_response_tokens_skips_the_step(dp_actor, base_config, model):
    batch = make_batch([4, 5, 6, 4], [3, 2, 4, 1], empty_mask_rows=(0, 1, 2, 3))
    before = [p.detach().clone() for p in model.parameters()]
    actor, steps = make_actor(
        dp_actor["patched"], base_config, model, use_dynamic_bsz=False, ppo_micro_batch_size_per_gpu=2
    )
    actor.actor_optimizer.param_groups[0]["lr"] = 0.1  # a step, if one were taken, would move the weights

    metrics = actor.update_policy(batch)
    assert metrics == {"actor/pg_loss": 0.0, "actor/kl_loss": 0.0, "actor/grad_norm": [0.0]}
    assert steps == []
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


def test_metrics_are_token_means_averaged_over_epochs(dp_actor, base_config, model):
    """ppo_epochs=2: each metric is the batch's token-mean, not a sum over epochs; pg_loss without entropy."""
    batch = make_batch(SKEWED_PROMPTS, [9, 1, 3, 30, 2, 2, 7, 4])
    _, terms = reference(model, batch)
    batch.batch["old_log_probs"] = terms["log_prob"]  # ratio 1 in both epochs (lr 0): no clipping
    ref_grads, ref_terms = reference(model, batch, ENTROPY_COEFF, KL_COEF)
    overrides = dict(
        ppo_epochs=2,
        use_dynamic_bsz=True,
        ppo_max_token_len_per_gpu=40,
        entropy_coeff=ENTROPY_COEFF,
        use_kl_loss=True,
        kl_loss_coef=KL_COEF,
        kl_loss_type=KL_TYPE,
    )

    actor, steps = make_actor(dp_actor["patched"], base_config, model, **overrides)
    metrics = actor.update_policy(batch)
    assert len(steps) == 2 and len(metrics["actor/grad_norm"]) == 2
    assert all(relative_error(step, ref_grads) < 1e-5 for step in steps)
    assert metrics["actor/entropy"] == pytest.approx(ref_terms["entropy"], rel=1e-5)
    assert metrics["actor/entropy"] <= math.log(model.config.vocab_size)
    assert metrics["actor/pg_loss"] == pytest.approx(ref_terms["pg"], rel=1e-5, abs=1e-7)
    assert metrics["actor/kl_loss"] == pytest.approx(ref_terms["kl"], rel=1e-5)

    # The earlier patch summed the epochs and folded the entropy bonus into pg_loss.
    actor, _ = make_actor(dp_actor["earlier"], base_config, model, **overrides)
    earlier = actor.update_policy(batch)
    assert earlier["actor/entropy"] == pytest.approx(2 * ref_terms["entropy"], rel=1e-5)
    assert earlier["actor/pg_loss"] == pytest.approx(
        2 * (ref_terms["pg"] - ENTROPY_COEFF * ref_terms["entropy"]), rel=1e-5, abs=1e-7
    )


# Rank 0 gets four long responses, rank 1 four short ones: with 40 tokens per micro-batch, rank 0
# alone would run 4 micro-batches and rank 1 one.
TWO_RANK_PROMPTS = [5, 4, 6, 5, 4, 6, 5, 4]
TWO_RANK_RESPONSES = [30, 28, 25, 30, 2, 1, 3, 2]
TWO_RANK_MAX_TOKENS = 40


def run_two_ranks(
    dp_actor_file: Path,
    model_dir: Path,
    folder: Path,
    batch: DataProto,
    deadline_s: float,
    collective_timeout_s: float,
    *overrides: str,
) -> list[int | None]:
    """Both ranks' exit codes (None: still running at the deadline, then killed)."""
    batch_file = folder / "batch.pt"
    torch.save({"tensors": dict(batch.batch.items()), "meta_info": batch.meta_info}, batch_file)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    helper = Path(__file__).with_name("two_rank_fsdp_actor.py")
    procs = []
    for rank in range(2):
        command = [
            sys.executable,
            str(helper),
            "--rank",
            str(rank),
            "--world-size",
            "2",
            "--port",
            str(port),
            "--dp-actor",
            str(dp_actor_file),
            "--model",
            str(model_dir),
            "--batch",
            str(batch_file),
            "--out",
            str(folder),
            "--collective-timeout",
            str(collective_timeout_s),
            *overrides,
        ]
        log = open(folder / f"rank{rank}.log", "w")  # noqa: SIM115 - closed with the process below
        procs.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log))
    end = time.monotonic() + deadline_s
    codes: list[int | None] = []
    for proc, _ in procs:
        try:
            codes.append(proc.wait(timeout=max(0.1, end - time.monotonic())))
        except subprocess.TimeoutExpired:
            codes.append(None)
    for proc, log in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    return codes


@pytest.mark.slow
def test_two_fsdp_ranks_with_unequal_tokens_agree_and_train_on_the_global_token_mean(
    dp_actor_files, toy_model_dir, model, tmp_path
):
    batch = make_batch(TWO_RANK_PROMPTS, TWO_RANK_RESPONSES)
    batch.meta_info.update(micro_batch_size=2, use_dynamic_bsz=True, max_token_len=TWO_RANK_MAX_TOKENS)
    ref_grads, ref_terms = reference(model, batch, ENTROPY_COEFF, KL_COEF)
    overrides = (
        "use_dynamic_bsz=true",
        f"ppo_max_token_len_per_gpu={TWO_RANK_MAX_TOKENS}",
        "ppo_mini_batch_size=4",
        f"entropy_coeff={ENTROPY_COEFF}",
        "use_kl_loss=true",
        f"kl_loss_coef={KL_COEF}",
        f"kl_loss_type={KL_TYPE}",
    )
    codes = run_two_ranks(dp_actor_files["patched"], toy_model_dir, tmp_path, batch, 240, 60, *overrides)
    logs = "\n".join((tmp_path / f"rank{r}.log").read_text()[-3000:] for r in range(2))
    assert codes == [0, 0], logs

    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert [r["steps"] for r in results] == [1, 1]
    assert relative_error(results[0]["grads"][0], ref_grads) < 1e-5
    mask = batch.batch["response_mask"].bool()
    log_probs = torch.cat([r["log_probs"] for r in results])
    torch.testing.assert_close(log_probs[mask], ref_terms["log_prob"][mask], rtol=1e-5, atol=1e-5)
    # verl averages each metric over the ranks: that mean is the whole-batch token-mean
    for name, term in (("actor/pg_loss", "pg"), ("actor/entropy", "entropy"), ("actor/kl_loss", "kl")):
        mean = sum(r["metrics"][name] for r in results) / 2
        assert mean == pytest.approx(ref_terms[term], rel=1e-5, abs=1e-7), name


@pytest.mark.slow
def test_two_fsdp_ranks_with_unequal_tokens_fail_with_the_earlier_patch(
    dp_actor_files, toy_model_dir, tmp_path
):
    """The earlier patch sized micro-batches per rank: the ranks' FSDP collectives do not match."""
    batch = make_batch(TWO_RANK_PROMPTS, TWO_RANK_RESPONSES)
    batch.meta_info.update(micro_batch_size=2, use_dynamic_bsz=True, max_token_len=TWO_RANK_MAX_TOKENS)
    overrides = ("use_dynamic_bsz=true", f"ppo_max_token_len_per_gpu={TWO_RANK_MAX_TOKENS}")
    codes = run_two_ranks(dp_actor_files["earlier"], toy_model_dir, tmp_path, batch, 120, 15, *overrides)
    logs = "\n".join((tmp_path / f"rank{r}.log").read_text() for r in range(2))
    # Hung in a collective: gloo's 15 s collective timeout fired, or the deadline killed the rank.
    assert None in codes or "Timed out" in logs, logs[-3000:]
