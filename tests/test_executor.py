# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""RolloutExecutor against a real CPU engine serving the toy model, a real MessageQueue and real Ray.

The toy task: verl-format parquet rows asking arithmetic questions; the reward is 1 when the
response contains a digit. A rollout function written to a file injects failures where a test
needs them.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from rllm_fully_async.message_queue import MessageQueue
from rllm_fully_async.rollout.executor import RolloutExecutor, load_prompts
from rllm_fully_async.rollout.rollout_fn import (
    chat_prompt_ids,
    load_reward_fn,
    load_rollout_fn,
    single_turn_chat,
)
from rllm_fully_async.servers.rollout_servers import CpuEngineProcess

FAILING, FLAKY, OVERLONG = {103, 107}, 105, 112

REWARD_FN = """
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    return float(any(ch.isdigit() for ch in solution_str))
"""

ROLLOUT_FN = """
from rllm_fully_async.rollout.rollout_fn import single_turn_chat

calls = {}


async def rollout(client, tokenizer, *, extra_info, **kwargs):
    index = extra_info["index"]
    if extra_info["fail"]:
        raise RuntimeError(f"injected failure for index {index}")
    calls[index] = calls.get(index, 0) + 1
    if extra_info["flaky"] and calls[index] % 2 == 1:
        raise ConnectionError("flaky server")  # raised before any await: the retry follows at once
    return await single_turn_chat(client, tokenizer, extra_info=extra_info, **kwargs)


async def to_the_limit(client, tokenizer, *, sampling_params, **kwargs):
    # ignore_eos: every generation runs to max_new_tokens, so none can end before a pause reaches it
    params = {**sampling_params, "ignore_eos": True}
    return await single_turn_chat(client, tokenizer, sampling_params=params, **kwargs)
"""


def write_dataset(path: Path, num_rows: int) -> Path:
    rows = []
    for i in range(num_rows):
        index = 100 + i
        question = "Tell me a long story. " * 20 if index == OVERLONG else f"What is {i % 10}+{(3 * i) % 10}?"
        rows.append(
            {
                "data_source": "toy_digits",
                "prompt": [{"role": "user", "content": question}],
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": str((i % 10 + (3 * i) % 10) % 10)},
                "extra_info": {"index": index, "fail": index in FAILING, "flaky": index == FLAKY},
            }
        )
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("executor")
    (d / "reward.py").write_text(REWARD_FN)
    (d / "rollout.py").write_text(ROLLOUT_FN)
    return {
        "dir": d,
        "data": write_dataset(d / "train.parquet", 13),
        "small": write_dataset(d / "small.parquet", 4),
        "reward": d / "reward.py",
        "rollout": d / "rollout.py",
    }


@pytest.fixture(scope="module")
def engine(toy_model_dir):
    with CpuEngineProcess(str(toy_model_dir), num_threads=1) as server:
        yield server


def config(files, model_dir, data="data", epochs=1, n=4, max_response_length=8, **async_training) -> dict:
    return {
        "data": {
            "train_files": [str(files[data])],
            "prompt_key": "prompt",
            "max_prompt_length": 64,
            "max_response_length": max_response_length,
            "shuffle": True,
            "seed": 3,
        },
        "actor_rollout_ref": {
            "model": {"path": str(model_dir)},
            "rollout": {"n": n, "temperature": 1.0, "top_p": 1.0, "top_k": -1},
        },
        "trainer": {"total_epochs": epochs},
        "custom_reward_function": {"path": str(files["reward"]), "name": "compute_score"},
        "async_training": {
            "required_samples": 100,
            "staleness_threshold": 0.0,
            "trigger_parameter_sync_step": 1,
            "partial_rollout": True,
            "max_concurrency": 6,
            "max_retries": 1,
            # no per-sample deadline: the flaky prompt's retry must follow its failure without a task switch
            "sample_timeout_s": None,
            "rollout_fn": None,
            **async_training,
        },
    }


@pytest.fixture
def pipeline(ray_local, engine):
    """Start a (queue, executor) pair; both are killed after the test."""
    actors = []

    def start(cfg: dict, max_queue_size: int = 64):
        queue = MessageQueue.remote(max_queue_size)
        executor = RolloutExecutor.remote(cfg, [engine.url], queue)
        actors.extend([executor, queue])
        return queue, executor

    yield start
    for actor in actors:
        ray.kill(actor)


def drain(queue, num_groups: int, version: int = 0) -> list:
    groups, ended = [], False
    while not ended:
        batch, ended = ray.get(queue.get_batch.remote(num_groups, version, timeout_s=60))
        groups += batch
    return groups


def wait_until(predicate, timeout_s: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def balanced(c: dict) -> bool:
    return c["drawn"] == c["trained"] + c["filtered"] + c["queued"] + c["in_flight"]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def engine_load(url: str) -> tuple[int, int]:
    """(requests on the engine, of which waiting to be admitted)."""
    load = _get(f"{url}/get_load")[0]
    return load["num_reqs"], load["num_waiting_reqs"]


def engine_generated_tokens(url: str) -> int:
    return _get(f"{url}/get_server_info")["internal_states"][0]["generated_tokens"]


def set_server_version(url: str, version: int) -> None:
    body = json.dumps({"new_version": str(version), "abort_all_requests": False}).encode()
    request = urllib.request.Request(
        f"{url}/update_weight_version", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def test_every_prompt_drawn_grouped_retried_or_filtered(pipeline, files, toy_model_dir):
    epochs = 2
    cfg = config(files, toy_model_dir, epochs=epochs, rollout_fn=f"{files['rollout']}:rollout")
    queue, executor = pipeline(cfg)
    assert ray.get(executor.num_prompts_per_epoch.remote()) == 13
    run = executor.run.remote()
    groups = drain(queue, 4)
    stats = ray.get(run, timeout=60)

    expected = {str(100 + i) for i in range(13)} - {str(i) for i in FAILING | {OVERLONG}}
    assert sorted(g.key for g in groups) == sorted((e, uid) for e in range(epochs) for uid in expected)
    trained = ray.get(queue.trained_uids.remote())
    assert {e: set(trained[e]) for e in trained} == {e: expected for e in range(epochs)}
    assert all(count == 1 for per_epoch in trained.values() for count in per_epoch.values())

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(toy_model_dir)
    for g in groups:
        assert len(g.samples) == 4 and g.launch_version == 0
        assert g.datum["extra_info"]["index"] == int(g.uid)
        for s in g.samples:
            assert s.prompt_ids == chat_prompt_ids(tokenizer, g.datum["prompt"])
            assert 1 <= len(s.response_ids) <= 8 and len(s.response_logprobs) == len(s.response_ids)
            assert all(lp <= 0 for lp in s.response_logprobs) and s.response_mask == [1] * len(s.response_ids)
            text = tokenizer.decode(s.response_ids, skip_special_tokens=True)
            assert s.reward == float(any(ch.isdigit() for ch in text))
            assert (s.min_version, s.max_version, s.num_aborts) == (0, 0, 0)

    counts = ray.get(queue.counts.remote())
    assert counts["filtered_by_reason"] == {"rollout_failed": 2 * epochs, "prompt_too_long": epochs}
    assert counts == {**counts, "drawn": 13 * epochs, "trained": len(groups), "queued": 0, "in_flight": 0}
    assert balanced(counts) and counts["closed"]
    details = "\n".join(ray.get(queue.recent_filter_details.remote()))
    assert "RuntimeError: injected failure for index 103" in details
    assert "tokens > data.max_prompt_length=64" in details

    assert stats["max_in_flight"] == 6, "in flight must reach but never exceed max_concurrency"
    assert stats["sample_retries"] >= 4 * epochs  # every sample of the flaky prompt failed once
    assert stats["prompts_failed"] == 2 * epochs and stats["groups_done"] == len(groups)
    assert stats["samples_done"] >= 4 * len(groups) and stats["tokens_per_s"] > 0
    assert 0 < stats["idle_ratio"] < 1


def test_admission_stops_at_the_window_budget_until_a_sync(pipeline, files, toy_model_dir, engine):
    # budget = required 2 * (1 + 0) * trigger 1 = 2 groups per window
    cfg = config(files, toy_model_dir, n=2, required_samples=2, max_concurrency=8)
    queue, executor = pipeline(cfg)
    run = executor.run.remote()

    def counts():
        return ray.get(queue.counts.remote())

    wait_until(lambda: counts()["queued"] == 2, what="the first window's 2 groups")
    # the executor's own state says it cannot launch: no time to wait for a draw that cannot happen
    stats = ray.get(executor.stats.remote())
    assert stats["admission/throttled"] == 1.0 and stats["admission/remaining"] == 0
    assert counts()["drawn"] == 2

    # a sync while both groups are still queued: they count against the new window, nothing launches
    ray.get(executor.pause.remote())
    ray.get(executor.resume.remote(1))
    stats = ray.get(executor.stats.remote())
    assert stats["version"] == 1 and stats["admission/remaining"] == 0
    assert counts()["drawn"] == 2

    # the trainer takes them; after the next sync the window has room for 2 new prompts
    groups, _ = ray.get(queue.get_batch.remote(2, 1, timeout_s=10))
    assert len(groups) == 2
    ray.get(executor.pause.remote())
    ray.get(executor.resume.remote(2))
    wait_until(lambda: counts()["queued"] == 2, what="the second window's groups")
    stats = ray.get(executor.stats.remote())
    assert stats["admission/remaining"] == 0 and stats["version"] == 2
    assert stats["admission/throttled_s"] > 0
    c = counts()
    assert c["drawn"] == 4 and balanced(c)

    # budget used up, yet groups dropped as too stale are regenerated (they were admitted already)
    stale_uids = sorted(g.uid for g in ray.get(queue.state_dict.remote())["queued"])
    set_server_version(engine.url, 5)
    try:
        groups, _ = ray.get(queue.get_batch.remote(2, 5, 0, "drop", timeout_s=30))
    finally:
        set_server_version(engine.url, 0)
    assert sorted(g.uid for g in groups) == stale_uids and [g.min_version for g in groups] == [5, 5]
    c = counts()
    assert c["drawn"] == 4 and c["trained"] == 4 and balanced(c)
    assert ray.get(queue.metrics.remote())["queue/dropped_stale"] == 2

    ray.get(executor.stop.remote())
    final = ray.get(run, timeout=30)
    assert final["prompts_drawn"] == 4 and final["prompts_requeued_served"] == 2


@pytest.mark.parametrize("partial_rollout", [True, False])
def test_pause_resume_across_a_version_change(pipeline, files, toy_model_dir, engine, partial_rollout):
    # 4 prompts x 2 samples = 8 long generations, all in flight when the sync happens
    cfg = config(
        files,
        toy_model_dir,
        data="small",
        n=2,
        max_response_length=400,
        max_concurrency=8,
        partial_rollout=partial_rollout,
        rollout_fn=f"{files['rollout']}:to_the_limit",
    )
    queue, executor = pipeline(cfg)
    set_server_version(engine.url, 0)
    run = executor.run.remote()
    wait_until(lambda: ray.get(executor.stats.remote())["in_flight"] == 8, what="8 samples in flight")
    # all 8 running on the engine, then one more batched step: every one has tokens of version 0
    wait_until(lambda: engine_load(engine.url) == (8, 0), what="the engine running all 8")
    tokens = engine_generated_tokens(engine.url)
    wait_until(lambda: engine_generated_tokens(engine.url) >= tokens + 8, what="a step of all 8")
    ray.get(executor.pause.remote())
    set_server_version(engine.url, 1)  # what ParamSync does between pause and resume
    ray.get(executor.resume.remote(1))
    groups = drain(queue, 4, version=1)
    stats = ray.get(run, timeout=60)
    set_server_version(engine.url, 0)

    samples = [s for g in groups for s in g.samples]
    assert len(samples) == 8
    assert all(len(s.response_ids) == 400 for s in samples), "a resumed generation keeps its token budget"
    interrupted = [s for s in samples if s.num_aborts > 0]
    assert interrupted, "the pause must have interrupted running generations"
    if partial_rollout:
        assert all((s.min_version, s.max_version) == (0, 1) for s in interrupted)
        assert stats["partial_rollout_fraction"] == len(interrupted) / 8
    else:
        assert all(s.min_version == s.max_version for s in samples)
        assert all(s.min_version == 1 for s in interrupted)
        assert stats["partial_rollout_fraction"] == 0
    assert stats["paused_s"] > 0
    assert balanced(ray.get(queue.counts.remote()))


def test_checkpoint_mid_run_resumes_without_losing_or_repeating(pipeline, files, toy_model_dir):
    # All 4 prompts of epoch 0 are drawn at the start (8 slots), and their long generations (ignore_eos)
    # cannot finish before the draws: when the trainer has taken 2 groups, the other 2 are surely in progress.
    cfg = config(
        files,
        toy_model_dir,
        data="small",
        n=2,
        epochs=2,
        max_response_length=64,
        max_concurrency=8,
        rollout_fn=f"{files['rollout']}:to_the_limit",
    )
    queue, executor = pipeline(cfg, max_queue_size=2)
    queue2, executor2 = pipeline(cfg, max_queue_size=2)  # the resumed run's actors, starting meanwhile
    run = executor.run.remote()
    first, _ = ray.get(queue.get_batch.remote(2, 0, timeout_s=30))
    ray.get(executor.pause.remote())
    state = {"executor": ray.get(executor.state_dict.remote()), "queue": ray.get(queue.state_dict.remote())}
    ray.get(executor.resume.remote(0))  # as the trainer does after saving; then the run is lost
    ray.get(executor.stop.remote())
    ray.get(run, timeout=30)
    assert state["queue"]["in_flight"] or state["queue"]["queued"], "checkpoint should catch work in progress"

    ray.get(queue2.load_state_dict.remote(state["queue"]))
    ray.get(executor2.load_state_dict.remote(state["executor"]))
    run2 = executor2.run.remote()
    rest = drain(queue2, 2)
    ray.get(run2, timeout=60)

    expected = {"100", "101", "102", "103"}
    trained = ray.get(queue2.trained_uids.remote())
    assert {e: set(trained[e]) for e in trained} == {0: expected, 1: expected}
    assert all(count == 1 for per_epoch in trained.values() for count in per_epoch.values())
    assert len(first) + len(rest) == 2 * len(expected)
    c = ray.get(queue2.counts.remote())
    assert balanced(c) and c["drawn"] == 8 and c["filtered"] == 0


def test_loaders_give_clear_errors(files, tmp_path):
    assert load_rollout_fn(None) is single_turn_chat
    assert load_rollout_fn("rllm_fully_async.rollout.rollout_fn:single_turn_chat") is single_turn_chat
    with pytest.raises(ValueError, match="expected 'package.module:function'"):
        load_rollout_fn("rllm_fully_async.rollout.rollout_fn")
    with pytest.raises(AttributeError, match="no function 'nope'.*'rollout'"):
        load_rollout_fn(f"{files['rollout']}:nope")
    with pytest.raises(TypeError, match="must be an async function"):
        load_rollout_fn("rllm_fully_async.rollout.rollout_fn:chat_prompt_ids")

    from verl.utils.reward_score import default_compute_score

    assert load_reward_fn({"path": None, "name": "compute_score"}) is default_compute_score
    assert load_reward_fn({"path": str(files["reward"])})("s", "a 7", "7") == 1.0
    with pytest.raises(FileNotFoundError, match="custom_reward_function.path: file '/no/such.py'"):
        load_reward_fn({"path": "/no/such.py", "name": "compute_score"})
    with pytest.raises(AttributeError, match="custom_reward_function.name: .* has no function 'score'"):
        load_reward_fn({"path": str(files["reward"]), "name": "score"})

    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "just a string", "data_source": "x"}]), bad)
    with pytest.raises(ValueError, match="row 0 .* column 'prompt' must be a list of chat messages"):
        load_prompts([str(bad)], "prompt")
    with pytest.raises(KeyError, match="data.prompt_key='question' is not a column"):
        load_prompts([str(files["data"])], "question")
    prompts = load_prompts([str(files["data"])], "prompt")
    assert [p.uid for p in prompts[:3]] == ["100", "101", "102"]


def test_a_resumed_run_continues_the_partial_generations_of_its_checkpoint(
    pipeline, engine, files, toy_model_dir
):
    """Nothing generated before a checkpoint is generated again: finished samples of unfinished groups are
    kept, and every partial generation continues from its saved tokens, log-probs and versions."""
    cfg = config(
        files,
        toy_model_dir,
        data="small",
        n=2,
        max_response_length=200,
        max_concurrency=8,
        rollout_fn=f"{files['rollout']}:to_the_limit",
    )
    queue, executor = pipeline(cfg, max_queue_size=4)
    queue2, executor2 = pipeline(cfg, max_queue_size=4)
    run = executor.run.remote()
    wait_until(lambda: ray.get(executor.stats.remote())["in_flight"] == 8, 60, "8 samples in flight")
    tokens = engine_generated_tokens(engine.url)  # then a few steps of all 8; none of 200 tokens ends so soon
    wait_until(lambda: engine_generated_tokens(engine.url) >= tokens + 32, what="4 tokens for each of the 8")
    ray.get(executor.pause.remote())
    state = {"executor": ray.get(executor.state_dict.remote()), "queue": ray.get(queue.state_dict.remote())}
    ray.get(executor.stop.remote())  # the run is lost, its servers' pause lifted as a restart would
    ray.get(run, timeout=30)
    ray.get(executor.resume.remote(0))

    saved = {
        (key, i): list(p.generation.token_ids)
        for key, entry in state["executor"]["partial"].items()
        for i, p in enumerate(entry["progress"])
        if p is not None and p.generation is not None and p.generation.token_ids
    }
    assert saved, "the checkpoint must hold partial generations"
    assert all(len(tokens) < 200 for tokens in saved.values())

    ray.get(queue2.load_state_dict.remote(state["queue"]))
    ray.get(executor2.load_state_dict.remote(state["executor"]))
    run2 = executor2.run.remote()
    groups = {g.key: g for g in drain(queue2, 2)}
    stats = ray.get(run2, timeout=60)
    for (key, i), tokens in saved.items():
        sample = groups[key].samples[i]
        assert sample.response_ids[: len(tokens)] == tokens, "the resumed sample carries the saved tokens"
        assert len(sample.response_ids) == 200, "and generates only the rest of its budget"
    assert stats["resumed_tokens"] == sum(len(t) for t in saved.values())
    assert stats["resumed_samples"] >= len(saved)
    c = ray.get(queue2.counts.remote())
    assert balanced(c) and c["trained"] == 4 and c["filtered"] == 0
