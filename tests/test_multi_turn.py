# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Multi-turn tool rollouts against the real CPU engine: token-exact trajectories, tools off the event
loop, and a weight sync that lands while a tool runs."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch
from tool_model import build_tool_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from rllm_fully_async.message_queue import MessageQueue
from rllm_fully_async.rollout.client import RolloutClient
from rllm_fully_async.rollout.executor import RolloutExecutor
from rllm_fully_async.rollout.multi_turn import (
    NOT_GENERATED,
    make_tool_rollout,
    tool_prompt_ids,
    tool_turn_ids,
)
from rllm_fully_async.rollout.tools import Tool, parse_tool_call
from rllm_fully_async.servers.rollout_servers import CpuEngineProcess
from rllm_fully_async.toy import tool_task
from rllm_fully_async.toy.tool_task import CALCULATOR

PARAMS = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "max_new_tokens": 32}


@pytest.fixture(scope="module")
def tool_model_dir(tmp_path_factory) -> Path:
    return build_tool_model(tmp_path_factory.mktemp("tool_model"))


@pytest.fixture(scope="module")
def engine(tool_model_dir):
    with CpuEngineProcess(str(tool_model_dir), num_threads=1) as server:
        yield server


def kwargs(a: int, b: int) -> dict:
    return {
        "prompt": [{"role": "user", "content": f"{a}+{b}"}],
        "data_source": tool_task.DATA_SOURCE,
        "reward_model": {"ground_truth": str(a + b)},
        "sampling_params": dict(PARAMS),
        "reward_fn": tool_task.compute_score,
    }


def test_tool_call_parsing():
    call = parse_tool_call('\n{"name": "calculator", "arguments": {"expression": "2*3"}}\n', [CALCULATOR])
    assert (call.name, call.arguments, call.error) == ("calculator", {"expression": "2*3"}, None)
    assert parse_tool_call(" 3+4 ", [CALCULATOR]).arguments == {"expression": "3+4"}  # plain tag format
    assert (
        "unknown tool 'search'" in parse_tool_call('{"name": "search", "arguments": {}}', [CALCULATOR]).error
    )
    assert "not valid JSON" in parse_tool_call('{"name": ', [CALCULATOR]).error
    assert tool_task.calculator("3+4") == "7"
    with pytest.raises(ValueError):
        tool_task.calculator("__import__('os')")


def test_tool_turn_follows_the_chat_template():
    """With a Qwen2.5-style template the tool output is rendered as Qwen2.5 renders it."""
    from rllm_fully_async.toy.model import build_tokenizer

    tokenizer = build_tokenizer(tool_tokens=True)
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m.role == 'tool' %}"
        "{{ '<|im_start|>user\n<tool_response>\n' + m.content + '\n</tool_response><|im_end|>\n' }}"
        "{% else %}{{ '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
        "{% if tools %}{% endif %}"
    )  # fmt: skip
    ids = tool_turn_ids(tokenizer, [{"role": "user", "content": "3+4"}], "7", turn_ended_with_eos=False)
    expected = "<|im_end|>\n<|im_start|>user\n<tool_response>\n7\n</tool_response><|im_end|>\n"
    expected += "<|im_start|>assistant\n"
    assert tokenizer.decode(ids) == expected
    ids = tool_turn_ids(tokenizer, [{"role": "user", "content": "3+4"}], "7", turn_ended_with_eos=True)
    assert tokenizer.decode(ids) == expected.removeprefix("<|im_end|>")


def test_tool_trajectories_are_token_exact(engine, tool_model_dir):
    """Training tokens = generated tokens + the template's tool tokens; every turn was generated from exactly
    those tokens (teacher-forced log-probs of the checkpoint equal the behaviour log-probs)."""
    tokenizer = AutoTokenizer.from_pretrained(tool_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tool_model_dir)
    calls = []

    def counted(expression: str) -> str:
        calls.append(expression)
        return tool_task.calculator(expression)

    rollout = make_tool_rollout([Tool("calculator", counted, parameters=CALCULATOR.parameters)], max_turns=2)
    problems = [(a, b) for a in range(0, 8, 2) for b in range(2)]

    async def main():
        async with RolloutClient([engine.url]) as client:
            return await asyncio.gather(*(rollout(client, tokenizer, **kwargs(a, b)) for a, b in problems))

    samples = asyncio.run(main())
    with_calls = [s for s in samples if s.extra["tool_calls"]]
    assert len(with_calls) >= len(samples) // 2, [tokenizer.decode(s.response_ids) for s in samples]
    assert len(calls) == sum(len(s.extra["tool_calls"]) for s in samples), "each call ran exactly once"
    for (a, b), s in zip(problems, samples, strict=True):
        prompt = [{"role": "user", "content": f"{a}+{b}"}]
        assert s.prompt_ids == tool_prompt_ids(tokenizer, prompt, [CALCULATOR])
        for i, m in enumerate(s.response_mask):
            if m == 0:
                assert s.response_logprobs[i] == 0.0 and s.token_versions[i] == NOT_GENERATED
            else:
                assert s.response_logprobs[i] < 0 and s.token_versions[i] == 0
        if s.extra["tool_calls"]:
            first_tool = s.response_mask.index(0)
            end = (
                first_tool + s.response_mask[first_tool:].index(1)
                if 1 in s.response_mask[first_tool:]
                else None
            )
            output = s.extra["tool_calls"][0]["output"]
            ended_with_eos = s.response_ids[first_tool - 1] == tokenizer.eos_token_id
            expected = tool_turn_ids(tokenizer, prompt, output, ended_with_eos)
            assert s.response_ids[first_tool:end] == expected[: len(s.response_ids[first_tool:end])]
            assert s.response_ids[first_tool - 1] == tokenizer.convert_tokens_to_ids("</tool_call>")
        # replay: the checkpoint's log-probs of the generated tokens, given exactly these tokens
        ids = torch.tensor([s.prompt_ids + s.response_ids])
        with torch.no_grad():
            logits = model(ids).logits[0, len(s.prompt_ids) - 1 : -1]
        replay = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(s.response_ids)[:, None])[:, 0]
        generated = torch.tensor(s.response_mask, dtype=torch.bool)
        assert torch.allclose(replay[generated], torch.tensor(s.response_logprobs)[generated], atol=2e-3)
    assert sum(s.extra["operands_right"] for s in samples) >= 1


def test_a_slow_sync_tool_does_not_stall_other_requests(engine, tool_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tool_model_dir)
    release = threading.Event()

    def slow(expression: str) -> str:
        release.wait(60)  # a blocking tool, such as a sandbox run
        return tool_task.calculator(expression)

    rollout = make_tool_rollout([Tool("calculator", slow, parameters=CALCULATOR.parameters)], max_turns=2)

    async def main() -> tuple[float, bool]:
        async with RolloutClient([engine.url]) as client:
            blocked = asyncio.ensure_future(rollout(client, tokenizer, **kwargs(3, 4)))
            started = time.monotonic()
            others = await asyncio.gather(
                *(client.generate([1, 2, 3], {"max_new_tokens": 8}) for _ in range(4))
            )
            elapsed = time.monotonic() - started
            still_blocked = not blocked.done()
            release.set()
            sample = await blocked
            assert all(len(o.token_ids) >= 1 for o in others)
            return elapsed, still_blocked, sample

    elapsed, still_blocked, sample = asyncio.run(main())
    assert still_blocked and sample.extra["tool_calls"], "the tool was called and blocked meanwhile"
    assert elapsed < 30


def set_server_version(url: str, version: int) -> None:
    body = json.dumps({"new_version": str(version), "abort_all_requests": False}).encode()
    request = urllib.request.Request(
        f"{url}/update_weight_version", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


GATED_TOOLS = """
import os, time
from rllm_fully_async.rollout.multi_turn import make_tool_rollout
from rllm_fully_async.rollout.tools import Tool
from rllm_fully_async.toy.tool_task import CALCULATOR, calculator

DIR = {dir!r}


def gated(expression):
    with open(os.path.join(DIR, "calls.log"), "a") as f:
        f.write(expression + "\\n")
    while not os.path.exists(os.path.join(DIR, "release")):  # held until the test has synced
        time.sleep(0.02)
    return calculator(expression)


rollout = make_tool_rollout([Tool("calculator", gated, parameters=CALCULATOR.parameters)], max_turns=2)
"""


def test_a_weight_sync_during_a_tool_call_neither_loses_nor_repeats_it(
    ray_local, engine, tool_model_dir, tmp_path
):
    (tmp_path / "tools.py").write_text(GATED_TOOLS.format(dir=str(tmp_path)))
    rows = [
        {
            "data_source": tool_task.DATA_SOURCE,
            "prompt": [{"role": "user", "content": f"{a}+{b}"}],
            "reward_model": {"ground_truth": str(a + b)},
            "extra_info": {"index": i},
        }
        for i, (a, b) in enumerate([(1, 2), (3, 4), (2, 5)])
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    cfg = {
        "data": {"train_files": [str(tmp_path / "train.parquet")], "max_prompt_length": 64,
                 "max_response_length": 32, "seed": 1},
        "actor_rollout_ref": {"model": {"path": str(tool_model_dir)}, "rollout": {"n": 2}},
        "trainer": {"total_epochs": 1},
        "custom_reward_function": {"path": tool_task.__file__, "name": "compute_score"},
        "async_training": {"required_samples": 100, "max_concurrency": 8, "max_retries": 0,
                           "rollout_fn": f"{tmp_path / 'tools.py'}:rollout"},
    }  # fmt: skip
    set_server_version(engine.url, 0)
    queue = MessageQueue.remote(8)
    executor = RolloutExecutor.remote(cfg, [engine.url], queue)
    try:
        run = executor.run.remote()
        log = tmp_path / "calls.log"
        deadline = time.monotonic() + 60
        while not (log.exists() and len(log.read_text().splitlines()) >= 3):
            assert time.monotonic() < deadline, "the model should call the calculator"
            time.sleep(0.05)
        ray.get(executor.pause.remote())  # lands while those tools run
        called_before_sync = set(log.read_text().splitlines())  # their call tokens predate the sync
        set_server_version(engine.url, 1)
        ray.get(executor.resume.remote(1))
        (tmp_path / "release").touch()
        groups, ended = [], False
        while not ended:
            batch, ended = ray.get(queue.get_batch.remote(3, 1, timeout_s=60))
            groups += batch
        ray.get(run, timeout=60)
    finally:
        set_server_version(engine.url, 0)
        ray.kill(executor)
        ray.kill(queue)
    samples = [s for g in groups for s in g.samples]
    assert len(samples) == 6
    recorded = [c["arguments"]["expression"] for s in samples for c in s.extra["tool_calls"]]
    assert sorted(recorded) == sorted(log.read_text().splitlines()), "every call ran once and was kept"
    # A sample still writing its first turn at the pause makes its call after the sync: not one of these.
    paused = [
        s for s in samples
        if s.extra["tool_calls"] and s.max_version == 1
        and s.extra["tool_calls"][0]["arguments"]["expression"] in called_before_sync
    ]  # fmt: skip
    assert len(paused) >= 3
    for s in paused:
        first_tool = s.response_mask.index(0)
        assert set(s.token_versions[:first_tool]) == {0}, "the call was generated before the sync"
        after = [
            v for v, m in zip(s.token_versions[first_tool:], s.response_mask[first_tool:], strict=True) if m
        ]
        assert after and set(after) == {1}, "the answer was generated after it, from the same context"
        assert s.min_version == 0 and 1 - s.min_version == 1  # staleness counts the oldest generated token
