# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The rollout client against real CPU engines (and the real sglang-router) on loopback.

Two engines are shared by the module; tests that change their weights or versions put them back.
Faults are real: a SIGKILLed engine, a socket server that accepts and never answers, closed ports.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rllm_fully_async.rollout.client import (
    GenerationOutput,
    NoServerAvailableError,
    RolloutClient,
    ServerProtocolError,
    ServerRequestError,
    parse_generate_response,
    parse_load,
    parse_weight_version,
)
from rllm_fully_async.servers.ports import free_port
from rllm_fully_async.servers.rollout_servers import CpuEngineProcess
from rllm_fully_async.sync.weight_update_group import (
    broadcast_tensor,
    destroy_weight_update_group,
    init_weight_update_group,
)
from rllm_fully_async.toy import model as toy_model

GREEDY = {"temperature": 0.0, "ignore_eos": True}
FAST = {"backoff_s": 0.1, "health_check_interval_s": 0.3, "health_timeout_s": 2.0}


def _get(url: str) -> dict | list:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _counters(url: str) -> dict:
    return _get(f"{url}/get_server_info")["internal_states"][0]


def _listening_pid(url: str) -> int:
    """The process serving ``url`` (to kill it the way a crash would)."""
    port = int(url.rsplit(":", 1)[1])
    listening = [c for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
    return next(c.pid for c in listening if c.laddr.port == port)


def _start_engines(model_dir: Path, ports: list[int | None]) -> list[CpuEngineProcess]:
    engines = [CpuEngineProcess(str(model_dir), port=p, num_threads=1) for p in ports]
    with ThreadPoolExecutor(len(engines)) as pool:
        list(pool.map(lambda e: e.start(timeout_s=120), engines))
    return engines


@pytest.fixture(scope="module")
def engines(toy_model_dir: Path) -> Iterator[list[CpuEngineProcess]]:
    """Two CPU engines serving the seed-0 toy model (a test that kills one replaces it in this list)."""
    started = _start_engines(toy_model_dir, [None, None])
    yield started
    for engine in started:
        engine.stop()


@pytest.fixture(scope="module")
def seed1_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return toy_model.ensure_built(tmp_path_factory.mktemp("toy_seed1"), seed=1)


async def _wait_until_generating(urls: list[str], min_tokens: int = 4, timeout_s: float = 60.0) -> None:
    """Until every engine has generated ``min_tokens`` more tokens. Call it right after creating the tasks:
    it reads the baseline before yielding to them."""
    baseline = [_counters(u)["generated_tokens"] for u in urls]
    deadline = time.monotonic() + timeout_s
    while any(_counters(u)["generated_tokens"] < b + min_tokens for u, b in zip(urls, baseline, strict=True)):
        assert time.monotonic() < deadline, "requests never started generating"
        await asyncio.sleep(0.02)


async def _until(predicate, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def _logprobs_under(model_dir: Path, context: list[int], continuation: list[int]) -> list[float]:
    """Log-probs of ``continuation`` after ``context`` under ``model_dir`` (one teacher-forced pass)."""
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([context + continuation])).logits[0]
    rows = torch.log_softmax(logits.float(), dim=-1)[len(context) - 1 : len(context) - 1 + len(continuation)]
    return rows.gather(1, torch.tensor(continuation)[:, None])[:, 0].tolist()


def test_generate_returns_versioned_chunks_and_matches_direct_generate(
    engines: list[CpuEngineProcess],
) -> None:
    url = engines[0].url
    prompt = [1, 40, 41, 42, 43]

    async def run() -> GenerationOutput:
        async with RolloutClient([url]) as client:
            return await client.generate(prompt, {"max_new_tokens": 12, **GREEDY})

    out = asyncio.run(run())
    assert out.finish_reason == "length" and out.num_aborts == 0
    assert len(out.token_ids) == len(out.logprobs) == 12
    assert [c.version for c in out.chunks] == [0] and out.min_version == out.max_version == 0
    assert out.chunks[0].token_ids == out.token_ids and out.chunks[0].logprobs == out.logprobs
    direct = _post(
        f"{url}/generate",
        {"input_ids": prompt, "sampling_params": {"max_new_tokens": 12, **GREEDY}, "return_logprob": True},
    )
    assert out.token_ids == direct["output_ids"]
    assert out.logprobs == pytest.approx([t[0] for t in direct["meta_info"]["output_token_logprobs"]])


def test_chat_applies_the_chat_template(engines: list[CpuEngineProcess], toy_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(toy_model_dir))
    messages = [{"role": "user", "content": "What is 2+3? Answer with one digit."}]

    async def run() -> GenerationOutput:
        async with RolloutClient([engines[0].url]) as client:
            return await client.chat(tokenizer, messages, {"max_new_tokens": 6, **GREEDY})

    out = asyncio.run(run())
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    assert out.prompt_ids == list(expected)
    assert out.text == tokenizer.decode(out.token_ids, skip_special_tokens=True)


def test_weight_sync_mid_generation_resumes_under_new_weights(
    engines: list[CpuEngineProcess], toy_model_dir: Path, seed1_model_dir: Path
) -> None:
    """Pause ▸ distributed (gloo) weight update to another model ▸ version 1 ▸ resume: partial rollouts."""
    urls = [e.url for e in engines]
    prompts = [[1, 50, 51, 52], [1, 60, 61, 62, 63]]
    new_weights = dict(AutoModelForCausalLM.from_pretrained(str(seed1_model_dir)).named_parameters())
    port = free_port()

    async def run() -> list[GenerationOutput]:
        async with RolloutClient(urls, **FAST) as client:
            trainer = asyncio.create_task(
                asyncio.to_thread(
                    init_weight_update_group, "127.0.0.1", port, 0, 3, "test_sync", "gloo", 60.0
                )
            )
            await client.init_weights_update_group("127.0.0.1", port, 3, "test_sync", "gloo")
            group = await trainer
            try:
                params = {"max_new_tokens": 200, "temperature": 1.0, "ignore_eos": True}
                tasks = [asyncio.create_task(client.generate(p, params)) for p in prompts]
                await _wait_until_generating(urls)
                await client.pause()
                await client.wait_idle(timeout_s=30)
                assert client.paused and client.in_flight == 0 and not any(t.done() for t in tasks)

                def send() -> None:
                    for tensor in new_weights.values():
                        broadcast_tensor(group, tensor.detach().contiguous(), src=0)

                sender = asyncio.create_task(asyncio.to_thread(send))
                await client.update_weights_from_distributed(
                    list(new_weights),
                    [str(t.dtype) for t in new_weights.values()],
                    [list(t.shape) for t in new_weights.values()],
                    "test_sync",
                )
                await sender
                await client.update_weight_version(1)
                await client.flush_cache()
                await client.resume()
                return await asyncio.gather(*tasks)
            finally:
                destroy_weight_update_group(group)
                await client.resume()
                await client.destroy_weights_update_group("test_sync")
                for url in urls:  # the engines are shared: back to the toy weights for the next test
                    body = {"model_path": str(toy_model_dir), "weight_version": "0"}
                    await asyncio.to_thread(_post, f"{url}/update_weights_from_disk", body)

    outs = asyncio.run(run())
    for prompt, out in zip(prompts, outs, strict=True):
        assert out.finish_reason == "length" and len(out.token_ids) == len(out.logprobs) == 200
        assert out.num_aborts == 1 and (out.min_version, out.max_version) == (0, 1)
        old, new = out.chunks
        assert old.token_ids and new.token_ids and old.token_ids + new.token_ids == out.token_ids
        # Tokens before the sync were sampled from the old model, tokens after it from the new one.
        assert old.logprobs == pytest.approx(_logprobs_under(toy_model_dir, prompt, old.token_ids), abs=1e-4)
        context = prompt + old.token_ids
        assert new.logprobs == pytest.approx(
            _logprobs_under(seed1_model_dir, context, new.token_ids), abs=1e-4
        )
        assert new.logprobs != pytest.approx(_logprobs_under(toy_model_dir, context, new.token_ids), abs=1e-2)
    assert all(_get(f"{u}/get_model_info")["weight_version"] == "0" for u in urls)


def test_without_partial_rollout_output_spans_one_version(engines: list[CpuEngineProcess]) -> None:
    url = engines[0].url
    prompt = [1, 70, 71, 72]
    params = {"max_new_tokens": 300, **GREEDY}

    async def run() -> tuple[GenerationOutput, GenerationOutput]:
        async with RolloutClient([url], **FAST) as client:
            task = asyncio.create_task(client.generate(prompt, params, partial_rollout=False))
            await _wait_until_generating([url])
            await client.pause()
            await client.wait_idle(timeout_s=30)
            await client.update_weight_version(5)
            await client.resume()
            try:
                out = await task
                reference = await client.generate(prompt, params)
            finally:
                await client.update_weight_version(0)
            return out, reference

    out, reference = asyncio.run(run())
    assert out.num_aborts == 1 and out.finish_reason == "length"
    assert [c.version for c in out.chunks] == [5] and out.min_version == out.max_version == 5
    assert out.token_ids == reference.token_ids  # started over from the prompt, same weights


def test_resume_on_abort_false_returns_the_partial_response(engines: list[CpuEngineProcess]) -> None:
    url = engines[0].url

    async def run() -> GenerationOutput:
        async with RolloutClient([url], **FAST) as client:
            task = asyncio.create_task(
                client.generate([1, 75, 76], {"max_new_tokens": 300, **GREEDY}, resume_on_abort=False)
            )
            await _wait_until_generating([url])
            await client.pause()
            try:
                return await asyncio.wait_for(task, 30)
            finally:
                await client.resume()

    out = asyncio.run(run())
    assert out.finish_reason == "abort" and out.num_aborts == 1
    assert 0 < len(out.token_ids) < 300 and len(out.logprobs) == len(out.token_ids)


def test_a_retracted_request_aborted_in_the_queue_keeps_its_tokens(engines: list[CpuEngineProcess]) -> None:
    """SGLang 0.5.6 answers a request aborted in its waiting queue (here: retracted there by a
    ``retract`` pause) with its tokens so far and no weight_version; the client keeps them, labelled with
    the version before the pause, and continues from them."""
    url = engines[0].url
    prompt = [1, 50, 51, 52]

    async def run() -> GenerationOutput:
        async with RolloutClient([url], **FAST) as client:
            task = asyncio.create_task(client.generate(prompt, {"max_new_tokens": 300, **GREEDY}))
            await _wait_until_generating([url], min_tokens=8)
            _post(f"{url}/pause_generation", {"mode": "retract"})  # the request goes back to the queue
            await client.pause()  # abort mode: the queued request is answered without a version
            await client.wait_idle()
            await client.resume()
            return await task

    out = asyncio.run(run())
    assert out.num_aborts == 1 and len(out.token_ids) == 300
    assert [c.version for c in out.chunks] == [0]
    direct = _post(
        f"{url}/generate", {"input_ids": prompt, "sampling_params": {"max_new_tokens": 300, **GREEDY}}
    )
    assert out.token_ids == direct["output_ids"]  # nothing generated before the pause was lost or redone


def test_response_parsing_of_sglang_shapes() -> None:
    assert parse_weight_version("default") == 0 and parse_weight_version("7") == 7
    with pytest.raises(ServerProtocolError, match="weight_version 'v2' is not an integer"):
        parse_weight_version("v2")
    assert parse_load({"load": 3}) == 3
    assert parse_load([{"num_reqs": 2, "num_waiting_reqs": 1}, {"num_reqs": 1, "num_waiting_reqs": 0}]) == 4
    with pytest.raises(ServerProtocolError, match="output_token_logprobs"):
        parse_generate_response({"output_ids": [1], "meta_info": {"finish_reason": {"type": "stop"}}})


def test_pause_gates_new_requests_until_resume(engines: list[CpuEngineProcess]) -> None:
    urls = [e.url for e in engines]

    async def run() -> None:
        async with RolloutClient(urls, **FAST) as client:
            await client.pause()
            sent_before = [s["sent"] for s in client.server_status()]
            served_before = [_counters(u)["prefill_passes"] for u in urls]
            tasks = [
                asyncio.create_task(client.generate([1, 80 + i], {"max_new_tokens": 8, **GREEDY}))
                for i in range(4)
            ]
            await _until(lambda: client.waiting["at_gate"] == 4, "the 4 requests held at the gate")
            assert not any(t.done() for t in tasks)
            assert [s["sent"] for s in client.server_status()] == sent_before and client.in_flight == 0
            assert [_counters(u)["prefill_passes"] for u in urls] == served_before
            await client.resume()
            outs = await asyncio.wait_for(asyncio.gather(*tasks), 60)
            assert all(len(o.token_ids) == 8 and o.num_aborts == 0 for o in outs)
            assert sum(s["sent"] for s in client.server_status()) == sum(sent_before) + 4

    asyncio.run(run())


def test_bad_requests_raise_without_retrying(engines: list[CpuEngineProcess]) -> None:
    async def run() -> None:
        async with RolloutClient([engines[0].url], **FAST) as client:
            with pytest.raises(ValueError, match="sampling_params\\['n'\\]"):
                await client.generate([1, 2], {"n": 2})
            with pytest.raises(ServerRequestError, match="outside the vocabulary"):
                await client.generate([1, 10**6], {"max_new_tokens": 2})
            assert client.server_status()[0]["sent"] == 1 and client.server_status()[0]["up"]

    asyncio.run(run())


def test_killed_server_requests_finish_on_survivor_and_restart_rejoins(
    engines: list[CpuEngineProcess], toy_model_dir: Path
) -> None:
    urls = [e.url for e in engines]
    victim_port = int(urls[1].rsplit(":", 1)[1])
    victim_pid = _listening_pid(urls[1])

    async def run() -> None:
        async with RolloutClient(urls, request_timeout_s=60, **FAST) as client:
            params = {"max_new_tokens": 150, "temperature": 1.0, "ignore_eos": True}
            tasks = [asyncio.create_task(client.generate([1, 90 + i], params)) for i in range(6)]
            await _wait_until_generating(urls)
            assert all(s["in_flight"] >= 1 for s in client.server_status())
            os.kill(victim_pid, signal.SIGKILL)
            outs = await asyncio.wait_for(asyncio.gather(*tasks), 120)
            assert all(o.finish_reason == "length" and len(o.token_ids) == 150 for o in outs)
            assert sum(o.num_failovers for o in outs) >= 1
            survivor, victim = client.server_status()
            assert survivor["up"] and not victim["up"] and victim["in_flight"] == 0

            engines[1].stop()
            engines[1] = (await asyncio.to_thread(_start_engines, toy_model_dir, [victim_port]))[
                0
            ]  # same URL
            deadline = time.monotonic() + 30
            while not client.server_status()[1]["up"]:
                assert time.monotonic() < deadline, "restarted server never came back into rotation"
                await asyncio.sleep(0.1)
            sent_before = client.server_status()[1]["sent"]
            more = await asyncio.gather(
                *(client.generate([1, 100 + i], {"max_new_tokens": 4, **GREEDY}) for i in range(4))
            )
            assert all(len(o.token_ids) == 4 for o in more)
            assert client.server_status()[1]["sent"] > sent_before

    asyncio.run(run())
    assert engines[1].url == urls[1]


@pytest.mark.parametrize("outage_timeout_s", [60.0, 0.0])
def test_with_every_server_down_requests_wait_for_a_restart(toy_model_dir: Path, outage_timeout_s: float):
    """The only server crashes mid-request and comes back on its port: within ``outage_timeout_s`` the
    requests wait for it and finish from their tokens so far; with 0 they fail at once."""
    [engine] = _start_engines(toy_model_dir, [None])
    port = int(engine.url.rsplit(":", 1)[1])
    restarted: list[CpuEngineProcess] = []

    async def run() -> None:
        async with RolloutClient([engine.url], outage_timeout_s=outage_timeout_s, **FAST) as client:
            params = {"max_new_tokens": 300, "temperature": 1.0, "ignore_eos": True}
            tasks = [asyncio.create_task(client.generate([1, 60 + i], params)) for i in range(3)]
            await _wait_until_generating([engine.url])
            os.kill(_listening_pid(engine.url), signal.SIGKILL)
            if not outage_timeout_s:
                for outcome in await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30):
                    assert isinstance(outcome, NoServerAvailableError)
                return
            await _until(lambda: client.waiting["for_server"] == 3, "the 3 requests waiting for a server")
            assert not any(t.done() for t in tasks), "the requests must wait while no server is up"
            restarted.extend(await asyncio.to_thread(_start_engines, toy_model_dir, [port]))
            outs = await asyncio.wait_for(asyncio.gather(*tasks), 120)
            assert all(o.finish_reason == "length" and len(o.token_ids) == 300 for o in outs)
            assert all(o.num_failovers >= 1 for o in outs)
            assert client.server_status()[0]["up"]

    try:
        asyncio.run(run())
    finally:
        for e in [engine, *restarted]:
            e.stop()


def test_hanging_server_times_out_and_request_retries_elsewhere(engines: list[CpuEngineProcess]) -> None:
    """An injected fault: a socket server that accepts every connection and never answers."""
    received: list[bytes] = []

    async def run() -> list[GenerationOutput]:
        async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            received.append(await reader.readline())
            await asyncio.sleep(3600)

        server = await asyncio.start_server(hang, "127.0.0.1", 0)
        hang_url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            async with RolloutClient([hang_url, engines[0].url], request_timeout_s=1.5, **FAST) as client:
                start = time.monotonic()
                outs = await asyncio.gather(
                    *(client.generate([1, 110 + i], {"max_new_tokens": 6, **GREEDY}) for i in range(2))
                )
                assert time.monotonic() - start < 20
                status = client.server_status()
                assert not status[0]["up"] and "Timeout" in status[0]["last_error"] and status[1]["up"]
                return outs
        finally:
            server.close()

    outs = asyncio.run(run())
    assert all(len(o.token_ids) == 6 for o in outs) and sum(o.num_failovers for o in outs) >= 1
    assert any(line.startswith(b"POST /generate") for line in received)


def test_all_servers_down_raises_naming_every_url() -> None:
    urls = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]  # bound, then closed: nothing listens

    async def run() -> None:
        async with RolloutClient(urls, max_attempts=3, backoff_s=0.05, health_timeout_s=1.0) as client:
            with pytest.raises(NoServerAvailableError) as excinfo:
                await asyncio.wait_for(client.generate([1, 2, 3], {"max_new_tokens": 4}), 30)
            assert all(u in str(excinfo.value) for u in urls) and "3 times" in str(excinfo.value)
            with pytest.raises(NoServerAvailableError):
                await client.pause()

    asyncio.run(run())


@pytest.fixture
def router(engines: list[CpuEngineProcess]) -> Iterator[str]:
    """The real sglang-router in front of both engines."""
    port = free_port()
    cmd = [sys.executable, "-m", "sglang_router.launch_router", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--worker-urls", *[e.url for e in engines], "--policy", "round_robin", "--log-level", "warn"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _get(f"{url}/get_model_info")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "sglang-router did not start"
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_router_spreads_generation_and_control_reaches_every_worker(
    engines: list[CpuEngineProcess], router: str
) -> None:
    """sglang-router forwards /generate but not /pause_generation: the client pauses the workers itself."""
    urls = [e.url for e in engines]
    before = [_counters(u) for u in urls]

    async def run() -> list[GenerationOutput]:
        async with RolloutClient(urls, router_url=router, **FAST) as client:
            params = {"max_new_tokens": 120, "temperature": 1.0, "ignore_eos": True}
            tasks = [asyncio.create_task(client.generate([1, 120 + i], params)) for i in range(6)]
            await _wait_until_generating(urls)
            await client.pause()
            await client.wait_idle(timeout_s=30)
            assert all(_get(f"{u}/get_load")[0]["num_reqs"] == 0 for u in urls)
            await client.resume()
            outs = await asyncio.wait_for(asyncio.gather(*tasks), 120)
            assert client.server_status()[0]["url"] == router and client.server_status()[0]["sent"] >= 6
            return outs

    outs = asyncio.run(run())
    after = [_counters(u) for u in urls]
    assert all(len(o.token_ids) == 120 for o in outs) and sum(o.num_aborts for o in outs) >= 2
    for b, a in zip(before, after, strict=True):
        assert a["aborted_requests"] > b["aborted_requests"]  # the pause reached this worker
        assert a["finished_requests"] > b["finished_requests"]  # the router sent it work


def test_concurrent_requests_spread_over_servers(engines: list[CpuEngineProcess]) -> None:
    async def run() -> list[int]:
        async with RolloutClient([e.url for e in engines], **FAST) as client:
            await asyncio.gather(
                *(client.generate([1, 130 + i], {"max_new_tokens": 16, **GREEDY}) for i in range(8))
            )
            return [s["sent"] for s in client.server_status()]

    assert asyncio.run(run()) == [4, 4]
