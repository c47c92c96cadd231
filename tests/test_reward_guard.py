# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
# ruff: noqa: F811  (the fixtures imported from test_executor are parameters of the tests below)
"""Faulty reward and rollout functions, against a real CPU engine, a real MessageQueue and real Ray:
a reward that is not a finite number is filtered with its function's name and never trained on; a
function that never returns fails its sample at the deadline, naming the function; a failing validation
sample is counted, not fatal."""

from __future__ import annotations

import math

import pytest
import ray
from omegaconf import OmegaConf
from test_executor import balanced, config, drain, engine, files, pipeline, wait_until  # noqa: F401 (fixtures)
from transformers import AutoTokenizer

from rllm_fully_async.rollout.reward_guard import InvalidReward, WatchedReward, check_reward
from rllm_fully_async.trainer.fully_async_trainer import FullyAsyncTrainer
from rllm_fully_async.trainer.validation import Validator

FAULTY = """
import math, threading

def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    index = extra_info["index"]
    if index == 101:
        return float("nan")
    if index == 102:
        return None
    if index == 104:
        return {"score": math.inf, "acc": 1.0}
    if index == 106:
        return "1.0"
    if index == 108:
        raise ValueError("no ground truth for this one")
    return float(any(ch.isdigit() for ch in solution_str))


def hanging_score(data_source, solution_str, ground_truth, extra_info=None):
    if extra_info["index"] == 109:
        threading.Event().wait(60)  # never returns within the test's deadline
    return 1.0
"""

ROLLOUTS = """
import asyncio
from rllm_fully_async.rollout.rollout_fn import single_turn_chat

async def nan_sample(client, tokenizer, *, extra_info, **kwargs):
    sample = await single_turn_chat(client, tokenizer, extra_info=extra_info, **kwargs)
    if extra_info["index"] == 103:
        sample.reward = float("nan")
    return sample

async def stuck(client, tokenizer, *, extra_info, **kwargs):
    if extra_info["index"] == 105:
        await asyncio.sleep(3600)
    return await single_turn_chat(client, tokenizer, extra_info=extra_info, **kwargs)
"""


@pytest.fixture(scope="module")
def faulty(files):
    d = files["dir"]
    (d / "faulty_reward.py").write_text(FAULTY)
    (d / "faulty_rollouts.py").write_text(ROLLOUTS)
    return d


def test_reward_values_are_checked():
    assert check_reward(1, "f") == 1.0 and check_reward(0.5, "f") == 0.5
    for bad in (math.nan, math.inf, None, "1", True, [1.0]):
        with pytest.raises(InvalidReward, match="'f'|f returned"):
            check_reward(bad, "f")

    def score(**_):
        return {"score": math.nan}

    with pytest.raises(InvalidReward, match="reward function .*score' returned the non-finite reward nan"):
        WatchedReward(score)()


def test_non_finite_and_non_numeric_rewards_are_filtered_never_trained(
    pipeline, files, faulty, toy_model_dir
):
    cfg = config(
        files, toy_model_dir, rollout_fn=f"{faulty / 'faulty_rollouts.py'}:nan_sample", max_retries=1
    )
    cfg["custom_reward_function"] = {"path": str(faulty / "faulty_reward.py"), "name": "compute_score"}
    queue, executor = pipeline(cfg)
    run = executor.run.remote()
    groups = drain(queue, 4)
    ray.get(run, timeout=60)

    invalid = {"101", "102", "103", "104", "106"}
    assert {g.uid for g in groups} == {"100", "105", "107", "109", "110", "111"}  # 108 raises, 112 too long
    assert all(math.isfinite(s.reward) for g in groups for s in g.samples)
    counts = ray.get(queue.counts.remote())
    assert counts["filtered_by_reason"]["invalid_reward"] == len(invalid)
    assert balanced(counts) and counts["trained"] == len(groups)
    details = "\n".join(ray.get(queue.recent_filter_details.remote()))
    assert "reward function 'compute_score' returned the non-finite reward nan" in details
    assert "reward function 'compute_score' returned NoneType None, not a number" in details
    assert "reward function 'compute_score' returned the non-finite reward inf" in details
    assert "reward function 'compute_score' returned str '1.0', not a number" in details
    assert "rollout function 'nan_sample' (Sample.reward) returned the non-finite reward nan" in details


def test_a_function_that_never_returns_fails_its_sample_at_the_deadline_naming_it(
    pipeline,
    files,
    faulty,
    toy_model_dir,
):
    cfg = config(
        files,
        toy_model_dir,
        n=2,
        rollout_fn=f"{faulty / 'faulty_rollouts.py'}:stuck",
        max_retries=0,
        sample_timeout_s=15,  # far above a normal sample even on a loaded machine
    )
    cfg["custom_reward_function"] = {"path": str(faulty / "faulty_reward.py"), "name": "hanging_score"}
    queue, executor = pipeline(cfg)
    run = executor.run.remote()
    # while they hang, the executor says where (what a trainer's queue timeout reports)
    wait_until(
        lambda: (
            "in reward function 'hanging_score'" in ray.get(executor.activity.remote())
            or "in rollout function 'stuck'" in ray.get(executor.activity.remote())
        ),
        what="a hung sample named in activity()",
    )
    # the trainer's queue timeout message quotes it, with the queue's counts
    trainer = FullyAsyncTrainer.__new__(FullyAsyncTrainer)
    trainer.executor, trainer.queue = executor, queue
    message = trainer._rollout_activity()
    assert "samples generating" in message, message
    assert "queue: {" in message and "'in_flight':" in message
    groups = drain(queue, 4)
    ray.get(run, timeout=60)
    assert {g.uid for g in groups} == {str(100 + i) for i in range(12)} - {"105", "109"}
    counts = ray.get(queue.counts.remote())
    assert counts["filtered_by_reason"] == {"rollout_failed": 2, "prompt_too_long": 1} and balanced(counts)
    details = "\n".join(ray.get(queue.recent_filter_details.remote()))
    assert (
        "reward function 'hanging_score' did not return within async_training.sample_timeout_s=15.0s"
        in details
    )
    assert "rollout function 'stuck' did not return within async_training.sample_timeout_s=15.0s" in details


def test_a_failing_validation_sample_is_counted_not_fatal(files, faulty, toy_model_dir, engine):
    cfg = config(files, toy_model_dir, sample_timeout_s=30)
    cfg["data"]["val_files"] = [str(files["small"])]
    cfg["actor_rollout_ref"]["rollout"]["val_kwargs"] = {
        "n": 2,
        "do_sample": False,
        "temperature": 0,
        "top_p": 1.0,
        "top_k": -1,
    }
    cfg["custom_reward_function"] = {"path": str(faulty / "faulty_reward.py"), "name": "compute_score"}
    validator = Validator(OmegaConf.create(cfg), [engine.url], AutoTokenizer.from_pretrained(toy_model_dir))
    metrics = validator.run(3)
    # rows 100..103 of the small set: 101 (NaN) and 102 (None) fail, 100 and 103 score
    assert metrics["val/errors"] == 4 and metrics["val/errors/toy_digits"] == 4
    assert 0.0 <= metrics["val-core/toy_digits/reward/mean@2"] <= 1.0
    assert metrics["val/param_version"] == 3
