# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The embedded CPU engine, served for real on loopback and checked against the model itself."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rllm_fully_async.rollout.client import RolloutClient
from rllm_fully_async.servers.rollout_servers import CpuEngineProcess
from rllm_fully_async.sync.tensor_payload import serialize_named_tensors
from rllm_fully_async.sync.weight_update_group import (
    broadcast_tensor,
    destroy_weight_update_group,
    init_weight_update_group,
)
from rllm_fully_async.toy import model as toy_model

EOS = 2
LONG = {"max_new_tokens": 900, "ignore_eos": True, "temperature": 1.0}


# ---------------------------------------------------------------------------------------------- helpers


def post(url: str, path: str, body: dict, timeout: float = 60) -> tuple[int, object]:
    request = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as err:
        raw, status = err.read().decode(), err.code
    try:
        return status, json.loads(raw)
    except json.JSONDecodeError:
        return status, raw


def get(url: str, path: str) -> object:
    with urllib.request.urlopen(url + path, timeout=30) as response:
        return json.loads(response.read().decode())


def counters(url: str) -> dict:
    return get(url, "/get_server_info")["internal_states"][0]


def generate_many(url: str, bodies: list[dict]) -> list[dict]:
    """Send all bodies at once (real concurrency over HTTP) and return the JSON answers in order."""

    async def run() -> list[dict]:
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def one(body: dict) -> dict:
                async with session.post(url + "/generate", json=body) as response:
                    assert response.status == 200, await response.text()
                    return await response.json()

            return await asyncio.gather(*(one(body) for body in bodies))

    return asyncio.run(run())


class Background:
    """A POST running in a thread, so the test can act while it is in flight."""

    def __init__(self, url: str, path: str, body: dict):
        self.result: tuple[int, object] | None = None
        self._thread = threading.Thread(target=self._run, args=(url, path, body), daemon=True)
        self._thread.start()

    def _run(self, url: str, path: str, body: dict) -> None:
        self.result = post(url, path, body)

    def join(self, timeout: float = 60) -> tuple[int, object]:
        self._thread.join(timeout)
        assert self.result is not None, "request did not return in time"
        return self.result

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()


def wait_until(predicate, timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def reference_logprobs(model, prompt: list[int], output: list[int]) -> list[float]:
    """log-softmax of one full forward pass over prompt + output, at each output token."""
    with torch.inference_mode():
        logits = model(torch.tensor([prompt + output])).logits[0].float()
    logprobs = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
    return logprobs.gather(1, torch.tensor(output)[:, None]).squeeze(1).tolist()


def output_logprobs(result: dict) -> list[float]:
    return [lp for lp, _, _ in result["meta_info"]["output_token_logprobs"]]


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def engine(toy_model_dir: Path):
    with CpuEngineProcess(str(toy_model_dir), num_threads=1, extra_args=["--random-seed", "0"]) as proc:
        yield proc.url


@pytest.fixture(scope="module")
def hf_model(toy_model_dir: Path):
    return AutoModelForCausalLM.from_pretrained(toy_model_dir, attn_implementation="sdpa").eval()


PROMPTS = [[1, 40, 41, 42, 43, 44, 45], [1, 60, 9, 77], [1, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109]]


# ---------------------------------------------------------------------------------------------- generation


def test_greedy_matches_hf_generate_with_exact_logprobs(engine: str, hf_model) -> None:
    """Concurrent greedy requests (batched, left-padded) equal model.generate, token for token."""
    bodies = [
        {"input_ids": p, "sampling_params": {"max_new_tokens": 10, "temperature": 0}, "return_logprob": True}
        for p in PROMPTS
    ]
    results = generate_many(engine, bodies)
    for prompt, result in zip(PROMPTS, results, strict=True):
        with torch.inference_mode():
            expected = hf_model.generate(
                torch.tensor([prompt]), max_new_tokens=10, do_sample=False, pad_token_id=3, eos_token_id=EOS
            )[0, len(prompt) :].tolist()
        if EOS in expected:
            expected = expected[: expected.index(EOS) + 1]
        assert result["output_ids"] == expected
        assert output_logprobs(result) == pytest.approx(
            reference_logprobs(hf_model, prompt, expected), abs=1e-4
        )
        meta = result["meta_info"]
        assert meta["prompt_tokens"] == len(prompt) and meta["completion_tokens"] == len(expected)
        assert meta["weight_version"] == "0" and meta["cached_tokens"] == 0 and meta["e2e_latency"] > 0
        assert meta["input_token_logprobs"] == [[None, prompt[-1], None]]  # SGLang's default start


def test_prompt_logprobs_and_top_logprobs(engine: str, hf_model) -> None:
    prompt = PROMPTS[2]
    body = {"input_ids": prompt, "return_logprob": True, "logprob_start_len": 0, "top_logprobs_num": 3}
    status, result = post(
        engine, "/generate", {**body, "sampling_params": {"max_new_tokens": 4, "temperature": 0}}
    )
    assert status == 200
    meta = result["meta_info"]
    assert [tid for _, tid, _ in meta["input_token_logprobs"]] == prompt
    assert meta["input_token_logprobs"][0][0] is None  # SGLang: no log-prob for the first position
    expected = reference_logprobs(hf_model, prompt[:1], prompt[1:])
    assert [lp for lp, _, _ in meta["input_token_logprobs"][1:]] == pytest.approx(expected, abs=1e-4)
    for chosen, top in zip(meta["output_token_logprobs"], meta["output_top_logprobs"], strict=True):
        assert len(top) == 3 and top[0][1] == chosen[1] and top[0][0] == pytest.approx(chosen[0])
    assert meta["input_top_logprobs"][0] is None and len(meta["input_top_logprobs"]) == len(prompt)


def test_sampled_logprobs_are_the_models_and_seeds_reproduce(engine: str, hf_model) -> None:
    body = {"input_ids": PROMPTS[0], "return_logprob": True, "sampling_params": {"max_new_tokens": 12}}
    seeded = [
        {**body, "sampling_params": {**body["sampling_params"], "sampling_seed": seed}}
        for seed in (7, 7, 8, 9)
    ]
    first, again, other, third = generate_many(engine, seeded)
    assert first["output_ids"] == again["output_ids"]
    assert output_logprobs(first) == pytest.approx(output_logprobs(again), abs=1e-5)
    assert len({tuple(r["output_ids"]) for r in (first, other, third)}) == 3  # different seeds differ
    # Temperature 1: the returned log-probs are the raw model log-softmax at the sampled tokens.
    assert output_logprobs(first) == pytest.approx(
        reference_logprobs(hf_model, PROMPTS[0], first["output_ids"]), abs=1e-4
    )


def test_batch_request_text_input_and_parallel_samples(engine: str) -> None:
    status, batch = post(
        engine,
        "/generate",
        {
            "input_ids": PROMPTS[:2],
            "rid": "batch",
            "sampling_params": {"max_new_tokens": 3, "temperature": 0},
        },
    )
    assert status == 200 and [r["meta_info"]["id"] for r in batch] == ["batch_0", "batch_1"]
    status, parallel = post(
        engine, "/generate", {"text": "hello", "sampling_params": {"max_new_tokens": 4, "n": 3}}
    )
    assert status == 200 and len(parallel) == 3
    assert len({r["meta_info"]["id"] for r in parallel}) == 3
    assert all(r["meta_info"]["prompt_tokens"] == parallel[0]["meta_info"]["prompt_tokens"] for r in parallel)


def test_64_concurrent_requests_share_forward_passes(engine: str) -> None:
    before = counters(engine)
    bodies = [
        {"input_ids": [1, 10 + i % 50, 20], "sampling_params": {"max_new_tokens": 16, "ignore_eos": True}}
        for i in range(64)
    ]
    results = generate_many(engine, bodies)
    after = counters(engine)
    assert all(r["meta_info"]["completion_tokens"] == 16 for r in results)
    assert after["generated_tokens"] - before["generated_tokens"] == 64 * 16
    passes = after["forward_passes"] - before["forward_passes"]
    assert passes <= 64 * 16 / 8, f"{passes} forward passes for 64 x 16 tokens: requests were not batched"
    assert after["max_running_batch"] >= 32


def prompt_whose_greedy_next_token_is_eos(hf_model) -> list[int]:
    """Search two- then three-token prompts for one whose greedy continuation starts with EOS."""
    vocab = hf_model.config.vocab_size
    with torch.inference_mode():
        for first in (1, 202):
            for middle in [[]] + [[m] for m in range(4, vocab, 7)]:
                prompts = torch.tensor([[first, *middle, x] for x in range(4, vocab)])
                hits = (hf_model(prompts).logits[:, -1].argmax(-1) == EOS).nonzero()
                if len(hits):
                    return prompts[int(hits[0])].tolist()
    raise AssertionError("no prompt of the toy model continues with EOS under greedy decoding")


def test_stop_conditions_give_sglang_finish_reasons(engine: str, hf_model, toy_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(toy_model_dir)
    greedy = {"temperature": 0, "max_new_tokens": 8}
    # A prompt the toy model continues greedily with EOS: a real end-of-sequence stop.
    eos_prompt = prompt_whose_greedy_next_token_is_eos(hf_model)
    status, eos = post(engine, "/generate", {"input_ids": eos_prompt, "sampling_params": greedy})
    assert eos["output_ids"] == [EOS] and eos["meta_info"]["finish_reason"] == {
        "type": "stop",
        "matched": EOS,
    }
    assert eos["text"] == ""  # the matched stop token is trimmed from the text
    _, ignored = post(
        engine, "/generate", {"input_ids": eos_prompt, "sampling_params": {**greedy, "ignore_eos": True}}
    )
    assert ignored["output_ids"][0] == EOS and len(ignored["output_ids"]) == 8
    assert ignored["meta_info"]["finish_reason"] == {"type": "length", "length": 8}

    _, sampled = post(
        engine,
        "/generate",
        {"input_ids": PROMPTS[1], "sampling_params": {"max_new_tokens": 8, "sampling_seed": 1}},
    )
    tokens = sampled["output_ids"]
    stop_id = tokens[3]
    _, by_id = post(
        engine,
        "/generate",
        {
            "input_ids": PROMPTS[1],
            "sampling_params": {"max_new_tokens": 8, "sampling_seed": 1, "stop_token_ids": [stop_id]},
        },
    )
    assert by_id["output_ids"] == tokens[: tokens.index(stop_id) + 1]
    assert by_id["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop_id}

    # A stop string: the first generated piece of plain ASCII text (byte-level tokens may split UTF-8).
    stop_text = next(
        piece
        for piece in (tokenizer.decode([t]) for t in tokens[1:] if t not in tokenizer.all_special_ids)
        if piece.strip() and piece.isascii() and piece.isprintable()
    )
    _, by_text = post(
        engine,
        "/generate",
        {
            "input_ids": PROMPTS[1],
            "sampling_params": {"max_new_tokens": 8, "sampling_seed": 1, "stop": [stop_text]},
        },
    )
    assert by_text["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop_text}
    assert by_text["text"] == sampled["text"][: sampled["text"].index(stop_text)]
    _, by_length = post(
        engine,
        "/generate",
        {"input_ids": PROMPTS[1], "sampling_params": {"max_new_tokens": 2, "sampling_seed": 1}},
    )
    assert by_length["output_ids"] == tokens[:2]
    assert by_length["meta_info"]["finish_reason"] == {"type": "length", "length": 2}


# ---------------------------------------------------------------------------------------------- abort / pause


def test_abort_by_rid_returns_partial_tokens(engine: str) -> None:
    request = Background(
        engine, "/generate", {"input_ids": PROMPTS[0], "rid": "to-abort", "sampling_params": LONG}
    )
    wait_until(lambda: get(engine, "/get_load")[0]["num_reqs"] == 1, what="the request to run")
    tokens = counters(engine)["generated_tokens"]
    wait_until(lambda: counters(engine)["generated_tokens"] > tokens, what="a token generated for it")
    assert post(engine, "/abort_request", {"rid": "to-abort"})[0] == 200
    status, result = request.join()
    assert status == 200 and result["meta_info"]["id"] == "to-abort"
    assert result["meta_info"]["finish_reason"]["type"] == "abort"
    assert 0 < len(result["output_ids"]) < LONG["max_new_tokens"]


def test_pause_abort_returns_everything_and_gates_new_requests(engine: str) -> None:
    running = [
        Background(engine, "/generate", {"input_ids": p, "sampling_params": LONG, "return_logprob": True})
        for p in PROMPTS
    ]
    wait_until(lambda: get(engine, "/get_load")[0]["num_reqs"] == 3, what="3 running requests")
    status, body = post(engine, "/pause_generation", {"mode": "abort"})
    assert status == 200 and body == {"message": "Generation paused successfully.", "status": "ok"}
    # pause returns only once every in-flight request has been returned
    assert get(engine, "/get_load")[0]["num_reqs"] == 0
    for request in running:
        _, result = request.join(timeout=10)
        assert result["meta_info"]["finish_reason"]["type"] == "abort"
        assert len(result["meta_info"]["output_token_logprobs"]) == len(result["output_ids"]) < 900
    waiting = Background(
        engine, "/generate", {"input_ids": PROMPTS[0], "sampling_params": {"max_new_tokens": 2}}
    )
    wait_until(lambda: counters(engine)["requests_at_gate"] == 1, what="the request held at the gate")
    assert not waiting.done, "a request sent while paused must wait for continue_generation"
    assert post(engine, "/flush_cache", {})[0] == 200
    assert post(engine, "/continue_generation", {})[1]["status"] == "ok"
    status, result = waiting.join()
    assert status == 200 and result["meta_info"]["finish_reason"] == {"type": "length", "length": 2}


def test_health_is_503_while_starting_and_while_paused(toy_model_dir: Path, monkeypatch) -> None:
    """SGLang's /health: 503 while ServerStatus is Starting; while paused its one-token probe waits at the
    pause gate, so it answers 503 after SGLANG_HEALTH_CHECK_TIMEOUT."""
    from fastapi.testclient import TestClient

    from rllm_fully_async.cpu_engine import server as server_module
    from rllm_fully_async.cpu_engine.cli import parse_args

    monkeypatch.setattr(server_module, "HEALTH_CHECK_TIMEOUT_S", 1.0)
    server = server_module.CpuEngineServer(
        parse_args(["--model-path", str(toy_model_dir), "--num-threads", "1"])
    )
    with TestClient(server.app) as client:
        assert client.get("/health").status_code == 503  # starting
        server.starting = False
        assert client.get("/health").status_code == 200
        assert client.post("/pause_generation", json={"mode": "abort"}).status_code == 200
        assert client.get("/health").status_code == 503
        assert client.post("/continue_generation", json={}).status_code == 200
        assert client.get("/health").status_code == 200


def test_a_request_aborted_in_the_queue_is_answered_as_sglang_does(engine: str) -> None:
    """SGLang's TokenizerManager._handle_abort_req: tokens and logprobs so far, completion_tokens, and no
    weight_version (only outputs of the running batch carry one); /flush_cache works with only waiting
    requests (Scheduler._is_no_request looks at the running batch)."""
    body = {"input_ids": PROMPTS[2], "rid": "retracted", "sampling_params": LONG, "return_logprob": True}
    request = Background(engine, "/generate", body)
    wait_until(
        lambda: counters(engine)["generated_tokens"] > 0 and get(engine, "/get_load")[0]["num_reqs"] == 1
    )
    assert post(engine, "/pause_generation", {"mode": "retract"})[0] == 200
    assert post(engine, "/flush_cache", {})[0] == 200  # the retracted request waits; nothing runs
    assert post(engine, "/abort_request", {"rid": "retracted"})[0] == 200
    status, result = request.join()
    assert post(engine, "/continue_generation", {})[0] == 200
    meta = result["meta_info"]
    assert status == 200 and meta["finish_reason"] == {"type": "abort", "message": "Abort in waiting queue"}
    assert "weight_version" not in meta
    assert 0 < meta["completion_tokens"] == len(result["output_ids"]) == len(meta["output_token_logprobs"])


@pytest.mark.parametrize("mode", ["in_place", "retract"])
def test_pause_keeping_requests_resumes_them_unchanged(engine: str, mode: str) -> None:
    body = {
        "input_ids": PROMPTS[2],
        "sampling_params": {"max_new_tokens": 400, "ignore_eos": True, "sampling_seed": 5},
    }
    _, reference = post(engine, "/generate", body)
    request = Background(engine, "/generate", body)
    wait_until(
        lambda: counters(engine)["generated_tokens"] > 0 and get(engine, "/get_load")[0]["num_reqs"] == 1
    )
    assert post(engine, "/pause_generation", {"mode": mode})[0] == 200
    # a pause returns once the model's step in progress has finished: a second one returns after any step
    # the server could have started since the first, so equal counts mean no step ran while paused
    frozen = counters(engine)["generated_tokens"]
    assert post(engine, "/pause_generation", {"mode": "in_place"})[0] == 200
    assert counters(engine)["generated_tokens"] == frozen and not request.done
    assert post(engine, "/continue_generation", {})[0] == 200
    _, result = request.join()
    assert result["output_ids"] == reference["output_ids"]
    assert result["meta_info"]["total_retractions"] == (1 if mode == "retract" else 0)


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_requests_get_400_naming_the_field_and_the_engine_keeps_serving(engine: str) -> None:
    cases = [
        ({}, "text or input_ids"),
        ({"input_ids": "abc"}, "input_ids"),
        ({"input_ids": [1, 2], "sampling_params": {"temperature": "hot"}}, "temperature"),
        ({"input_ids": [1, 2], "sampling_params": {"top_p": 0}}, "top_p"),
        ({"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 1030}}, "context length"),
        ({"input_ids": list(range(5, 300)) * 4}, "context length"),
        ({"input_ids": [1, 99999]}, "vocabulary"),
        ({"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 4}, "stream": True}, "stream"),
    ]
    for body, needle in cases:
        status, answer = post(engine, "/generate", body)
        assert status == 400, (body, answer)
        assert needle in json.dumps(answer), (needle, answer)
    assert post(engine, "/update_weight_version", {"abort_all_requests": False})[0] == 400
    assert post(engine, "/pause_generation", {"mode": "sideways"})[0] == 400
    status, answer = post(
        engine, "/update_weights_from_distributed", {"names": ["x"], "dtypes": ["float32"], "shapes": [[1]]}
    )
    assert status == 400 and answer["success"] is False and "init_weights_update_group" in answer["message"]
    status, answer = post(
        engine, "/generate", {"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 2}}
    )
    assert status == 200 and answer["meta_info"]["completion_tokens"] == 2


def test_router_probes_both_engines_and_spreads_requests(engine: str, toy_model_dir: Path) -> None:
    with CpuEngineProcess(str(toy_model_dir), num_threads=1) as second, socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        with socket.socket() as prom:
            prom.bind(("127.0.0.1", 0))
            prom_port = prom.getsockname()[1]
        router = subprocess.Popen(
            [sys.executable, "-m", "sglang_router.launch_router", "--host", "127.0.0.1", "--port", str(port)]
            + ["--worker-urls", engine, second.url, "--policy", "round_robin"]
            + ["--prometheus-host", "127.0.0.1", "--prometheus-port", str(prom_port), "--log-level", "warn"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            router_url = f"http://127.0.0.1:{port}"

            def router_ready() -> bool:
                try:
                    status, _ = post(
                        router_url,
                        "/generate",
                        {"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 1}},
                    )
                    return status == 200
                except OSError:
                    return False

            wait_until(router_ready, timeout=30, what="the router to accept requests")
            before = [counters(url)["finished_requests"] for url in (engine, second.url)]
            bodies = [{"input_ids": [1, 5, i], "sampling_params": {"max_new_tokens": 2}} for i in range(6)]
            results = generate_many(router_url, bodies)
            after = [counters(url)["finished_requests"] for url in (engine, second.url)]
            assert all(r["meta_info"]["completion_tokens"] == 2 for r in results)
            assert [a - b for a, b in zip(after, before, strict=True)] == [3, 3]

            # The rollout client behind the router (rollout_servers.router_url): generation goes through
            # it, control calls to each server.
            async def through_router() -> list:
                async with RolloutClient([engine, second.url], router_url=router_url) as client:
                    outs = await asyncio.gather(
                        *(client.generate([1, 7, i], {"max_new_tokens": 2}) for i in range(4))
                    )
                    await client.update_weight_version(7)
                    return outs

            outs = asyncio.run(through_router())
            final = [counters(url)["finished_requests"] for url in (engine, second.url)]
            assert all(len(out.token_ids) == 2 for out in outs)
            assert [a - b for a, b in zip(final, after, strict=True)] == [2, 2]
            assert [get(url, "/get_weight_version")["weight_version"] for url in (engine, second.url)] == [
                "7"
            ] * 2
        finally:
            router.terminate()
            router.wait(timeout=10)


# ---------------------------------------------------------------------------------------------- weights


@pytest.fixture(scope="module")
def weights_engine(toy_model_dir: Path):
    with CpuEngineProcess(str(toy_model_dir), num_threads=1) as proc:
        yield proc.url


def _greedy(url: str, prompt: list[int]) -> dict:
    body = {
        "input_ids": prompt,
        "return_logprob": True,
        "sampling_params": {"max_new_tokens": 6, "temperature": 0},
    }
    status, result = post(url, "/generate", body)
    assert status == 200, result
    return result


def _assert_serves(url: str, model, version: str) -> None:
    result = _greedy(url, PROMPTS[0])
    with torch.inference_mode():
        expected = model.generate(
            torch.tensor([PROMPTS[0]]), max_new_tokens=6, do_sample=False, pad_token_id=3
        )
    expected = expected[0, len(PROMPTS[0]) :].tolist()
    if EOS in expected:
        expected = expected[: expected.index(EOS) + 1]
    assert result["output_ids"] == expected
    assert output_logprobs(result) == pytest.approx(reference_logprobs(model, PROMPTS[0], expected), abs=1e-4)
    assert result["meta_info"]["weight_version"] == version


def test_update_weights_from_distributed_over_gloo(weights_engine: str, tmp_path: Path) -> None:
    new_model = AutoModelForCausalLM.from_pretrained(toy_model.build(tmp_path / "seed1", seed=1)).eval()
    params = [(n, p.detach()) for n, p in new_model.named_parameters()]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    init = Background(
        weights_engine,
        "/init_weights_update_group",
        {"master_address": "127.0.0.1", "master_port": port, "rank_offset": 1, "world_size": 2}
        | {"group_name": "sync", "backend": "gloo"},
    )
    group = init_weight_update_group("127.0.0.1", port, 0, 2, "sync", backend="gloo", timeout_s=30)
    assert init.join() == (200, {"success": True, "message": "Succeeded to initialize custom process group."})
    try:
        # ParamSync's order: pause, push, bump the version, resume.
        assert post(weights_engine, "/pause_generation", {"mode": "abort"})[0] == 200
        update = Background(
            weights_engine,
            "/update_weights_from_distributed",
            {
                "names": [n for n, _ in params],
                "dtypes": [str(p.dtype).removeprefix("torch.") for _, p in params],
            }
            | {
                "shapes": [list(p.shape) for _, p in params],
                "group_name": "sync",
                "weight_version": "ignored",
            },
        )
        flushes = counters(weights_engine)["cache_flushes"]
        for _, tensor in params:
            broadcast_tensor(group, tensor.clone(), src=0)
        status, answer = update.join()
        assert counters(weights_engine)["cache_flushes"] == flushes + 1  # flush_cache defaults to true
        # Like SGLang 0.5.6, a weight_version passed while paused is not applied.
        assert status == 200 and answer == {
            "success": True,
            "message": "Succeeded to update parameter online.",
        }
        status, answer = post(weights_engine, "/update_weight_version", {"new_version": "1"})
        assert answer == {"success": True, "message": "Weight version updated to 1", "new_version": "1"}
        assert post(weights_engine, "/continue_generation", {})[0] == 200
        _assert_serves(weights_engine, new_model, "1")
        assert get(weights_engine, "/get_weight_version") == {"weight_version": "1"}
    finally:
        destroy_weight_update_group(group)
        status, answer = post(weights_engine, "/destroy_weights_update_group", {"group_name": "sync"})
        assert status == 200 and answer["success"] is True


def test_update_weights_from_disk_and_from_tensor(
    weights_engine: str, toy_model_dir: Path, tmp_path: Path
) -> None:
    disk_dir = toy_model.build(tmp_path / "seed2", seed=2)
    status, answer = post(
        weights_engine, "/update_weights_from_disk", {"model_path": str(disk_dir), "weight_version": "2"}
    )
    assert (
        status == 200
        and answer["success"] is True
        and answer["message"].endswith("Weight version updated to 2.")
    )
    _assert_serves(weights_engine, AutoModelForCausalLM.from_pretrained(disk_dir).eval(), "2")
    assert get(weights_engine, "/get_model_info")["model_path"] == str(disk_dir)

    original = AutoModelForCausalLM.from_pretrained(toy_model_dir).eval()
    payload = serialize_named_tensors(list(original.state_dict().items()))
    status, answer = post(
        weights_engine,
        "/update_weights_from_tensor",
        {"serialized_named_tensors": [payload], "weight_version": "3"},
    )
    assert status == 200 and answer == {"success": True, "message": "Success Weight version updated to 3."}
    _assert_serves(weights_engine, original, "3")

    wrong = serialize_named_tensors([("model.norm.weight", torch.zeros(3))])
    status, answer = post(
        weights_engine, "/update_weights_from_tensor", {"serialized_named_tensors": [wrong]}
    )
    assert status == 400 and "shape mismatch" in answer["message"]
    _assert_serves(weights_engine, original, "3")  # a rejected update leaves the weights alone


def test_an_update_flushing_the_cache_while_requests_run_in_place_is_refused(
    weights_engine: str, toy_model_dir: Path
) -> None:
    """SGLang 0.5.6 flushes after an update unless told not to, and asserts the flush worked: with requests
    paused in place (still running) its scheduler dies. The engine refuses; flush_cache=false works."""
    original = AutoModelForCausalLM.from_pretrained(toy_model_dir).eval()
    payload = {"serialized_named_tensors": [serialize_named_tensors(list(original.state_dict().items()))]}
    request = Background(weights_engine, "/generate", {"input_ids": PROMPTS[1], "sampling_params": LONG})
    wait_until(lambda: get(weights_engine, "/get_load")[0]["num_reqs"] == 1, what="the request to run")
    assert post(weights_engine, "/pause_generation", {"mode": "in_place"})[0] == 200
    try:
        assert post(weights_engine, "/flush_cache", {})[0] == 400
        status, answer = post(weights_engine, "/update_weights_from_tensor", payload)
        assert status == 400 and "Cache flush failed after updating weights" in answer["message"]
        status, answer = post(
            weights_engine, "/update_weights_from_tensor", {**payload, "flush_cache": False}
        )
        assert status == 200 and answer["success"] is True
    finally:
        assert post(weights_engine, "/continue_generation", {})[0] == 200
    status, result = request.join()
    assert status == 200 and result["meta_info"]["finish_reason"]["type"] in ("length", "stop")
