# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The CPU engine against hostile or careless requests, served for real on loopback: no payload runs code,
nobody without the API key reaches the control endpoints, a weight-update group cannot be formed around
the server, and one bad request fails only itself. After each, the weights are intact and it serves."""

from __future__ import annotations

import base64
import io
import json
import os
import pickle
import socket
import struct
import threading
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
import torch
from test_cpu_engine import PROMPTS, wait_until
from transformers import AutoModelForCausalLM

from rllm_fully_async.servers.rollout_servers import CpuEngineProcess
from rllm_fully_async.sync.tensor_payload import serialize_named_tensors

API_KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def call(url: str, path: str, body: dict | None = None, headers: dict | None = AUTH, timeout: float = 30):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url + path, data=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read().decode()
    try:
        return status, json.loads(raw)
    except json.JSONDecodeError:
        return status, raw


@pytest.fixture(scope="module")
def engine(toy_model_dir: Path):
    with CpuEngineProcess(str(toy_model_dir), num_threads=1, api_key=API_KEY) as proc:
        yield proc.url


def greedy(url: str) -> tuple[list[int], list[float]]:
    body = {
        "input_ids": PROMPTS[0],
        "return_logprob": True,
        "sampling_params": {"max_new_tokens": 6, "temperature": 0},
    }
    status, result = call(url, "/generate", body)
    assert status == 200, result
    return result["output_ids"], [lp for lp, _, _ in result["meta_info"]["output_token_logprobs"]]


# ------------------------------------------------------------------------------- crafted pickles


def _str(s: str) -> bytes:
    raw = s.encode()
    return b"\x8c" + bytes([len(raw)]) + raw  # SHORT_BINUNICODE


def _call_global(module: str, name: str, args: bytes, nargs: int) -> bytes:
    """A protocol-4 pickle that calls ``module.name(*args)`` when loaded."""
    tuple_op = {1: b"\x85", 2: b"\x86"}[nargs]
    return b"\x80\x04" + _str(module) + _str(name) + b"\x93" + args + tuple_op + b"R."


def crafted_payloads(marker: Path) -> dict[str, bytes]:
    """Payloads that got past an allow-list on pickle; each creates ``marker`` when its code runs."""

    class Touch:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    buffer = io.BytesIO()
    torch.save(Touch(), buffer)
    inner = buffer.getvalue()
    return {
        # a dotted name under an allowed module reaches os.system
        "dotted_name": _call_global("torch", "serialization.os.system", _str(f"touch {marker}"), 1),
        # torch's own storage loader: torch.load(weights_only=False) on bytes of the payload's choosing
        "storage_loader": _call_global(
            "torch.storage", "_load_from_bytes", b"B" + struct.pack("<I", len(inner)) + inner, 1
        ),
        # builtins reaching open: creates (or truncates) any file the server can write
        "builtins_open": _call_global("builtins", "open", _str(str(marker)) + _str("w"), 2),
        # a plain pickle of real tensors, as SGLang's own sender makes them
        "pickled_tensors": pickle.dumps([("model.norm.weight", torch.ones(64))]),
    }


def test_crafted_payloads_are_refused_and_run_no_code(engine: str, tmp_path: Path) -> None:
    before = greedy(engine)
    for name, payload in crafted_payloads(tmp_path / "pwned").items():
        body = {"serialized_named_tensors": [base64.b64encode(payload).decode()], "flush_cache": True}
        status, answer = call(engine, "/update_weights_from_tensor", body)
        assert status == 400 and "not a safetensors payload" in answer["message"], (name, answer)
        assert not (tmp_path / "pwned").exists(), f"{name}: the payload ran code in the engine"
    for garbage in ("not base64!", base64.b64encode(b"\x00" * 64).decode()):
        status, answer = call(engine, "/update_weights_from_tensor", {"serialized_named_tensors": [garbage]})
        assert status == 400, answer
    assert greedy(engine) == before, "a refused payload changed the weights"


def test_non_finite_weights_are_refused(engine: str, toy_model_dir: Path) -> None:
    before = greedy(engine)
    model = AutoModelForCausalLM.from_pretrained(toy_model_dir).eval()
    state = dict(model.state_dict())
    state["model.norm.weight"] = state["model.norm.weight"].clone()
    state["model.norm.weight"][3] = float("nan")
    body = {"serialized_named_tensors": [serialize_named_tensors(list(state.items()))]}
    status, answer = call(engine, "/update_weights_from_tensor", body)
    assert status == 400 and "'model.norm.weight' holds non-finite values" in answer["message"], answer
    assert greedy(engine) == before
    # the same weights, finite, are taken (safetensors round trip, tied embeddings included)
    body = {"serialized_named_tensors": [serialize_named_tensors(list(model.state_dict().items()))]}
    assert call(engine, "/update_weights_from_tensor", body)[0] == 200
    assert greedy(engine) == before


# ------------------------------------------------------------------------------- who may change weights


def test_the_api_key_locks_every_endpoint_but_health(engine: str) -> None:
    for path, body in [
        ("/generate", {"input_ids": PROMPTS[0], "sampling_params": {"max_new_tokens": 2}}),
        ("/update_weights_from_tensor", {"serialized_named_tensors": ["x"]}),
        (
            "/init_weights_update_group",
            {"master_address": "127.0.0.1", "master_port": 1, "rank_offset": 1, "world_size": 2},
        ),
        ("/pause_generation", {"mode": "abort"}),
        ("/get_server_info", None),
    ]:
        for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
            status, answer = call(engine, path, body, headers=headers)
            assert (status, answer) == (401, {"error": "Unauthorized"}), (path, headers)
    assert call(engine, "/health", headers=None)[0] == 200
    assert call(engine, "/get_server_info")[0] == 200


@pytest.mark.parametrize(("rank_offset", "world_size"), [(0, 1), (0, 2), (2, 2), (1, 1)])
def test_a_server_never_forms_a_group_as_rank_zero_or_out_of_range(
    engine: str, rank_offset, world_size
) -> None:
    before = greedy(engine)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    body = {"master_address": "127.0.0.1", "master_port": port, "rank_offset": rank_offset}
    body |= {"world_size": world_size, "group_name": "evil", "backend": "gloo"}
    status, answer = call(engine, "/init_weights_update_group", body)
    assert status == 400 and answer["success"] is False, answer
    assert "rank_offset" in answer["message"] or "world_size" in answer["message"]
    # nothing was formed: no group to destroy, no update through it
    status, answer = call(engine, "/destroy_weights_update_group", {"group_name": "evil"})
    assert status == 400 and "does not exist" in answer["message"]
    update = {"names": ["model.norm.weight"], "dtypes": ["float32"], "shapes": [[64]], "group_name": "evil"}
    assert call(engine, "/update_weights_from_distributed", update)[0] == 400
    assert greedy(engine) == before


def test_the_rendezvous_store_listens_on_the_given_address_only() -> None:
    from rllm_fully_async.sync.weight_update_group import init_weight_update_group

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    outcome: list = []

    def host() -> None:  # rank 0 alone in a world of 2 waits for rank 1, then times out
        try:
            init_weight_update_group("127.0.0.1", port, 0, 2, "rendezvous_test", "gloo", 5)
        except Exception as e:
            outcome.append(e)

    thread = threading.Thread(target=host, daemon=True)
    thread.start()

    def listening() -> list:
        return [
            c.laddr
            for c in psutil.Process().net_connections("tcp")
            if c.status == "LISTEN" and c.laddr.port == port
        ]

    wait_until(listening, what="the rendezvous store listening")
    assert {addr.ip for addr in listening()} == {"127.0.0.1"}
    thread.join(30)
    assert outcome, "rank 0 alone must time out"


# ------------------------------------------------------------------------------- one request fails itself


def test_a_batch_repeating_a_request_id_fails_alone(engine: str) -> None:
    before = greedy(engine)
    body = {
        "input_ids": [PROMPTS[0], PROMPTS[1]],
        "rid": ["same", "same"],
        "sampling_params": {"max_new_tokens": 3},
    }
    status, answer = call(engine, "/generate", body, timeout=20)
    assert status == 400 and "appear more than once" in json.dumps(answer), answer
    assert call(engine, "/health", headers=None, timeout=30)[0] == 200
    assert greedy(engine) == before
    status, _ = call(engine, "/generate", {**body, "rid": ["a1", "a2"]}, timeout=30)
    assert status == 200


def test_an_out_of_range_stop_token_does_not_abort_its_neighbours(engine: str) -> None:
    long = {"input_ids": PROMPTS[1], "rid": "neighbour"}
    long |= {"sampling_params": {"max_new_tokens": 300, "ignore_eos": True, "temperature": 1.0}}
    result: dict = {}

    def run() -> None:
        result["answer"] = call(engine, "/generate", long, timeout=120)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_until(lambda: call(engine, "/get_load")[1][0]["num_reqs"] >= 1, what="the neighbour running")
    bad = {"input_ids": PROMPTS[0], "sampling_params": {"max_new_tokens": 5, "min_new_tokens": 3}}
    bad["sampling_params"]["stop_token_ids"] = [10**6]
    status, answer = call(engine, "/generate", bad)
    assert status == 400 and "outside the vocabulary" in json.dumps(answer), answer
    thread.join(120)
    status, answer = result["answer"]
    assert status == 200 and answer["meta_info"]["finish_reason"] == {"type": "length", "length": 300}, answer


# ------------------------------------------------------------------------------- the key, end to end


def test_the_client_param_sync_and_launcher_carry_the_key(engine: str, toy_model_dir: Path) -> None:
    import asyncio

    from omegaconf import OmegaConf

    from rllm_fully_async.rollout.client import RolloutClient
    from rllm_fully_async.servers.rollout_servers import build_server_args, spec_from_config
    from rllm_fully_async.sync.param_sync import ParamSync

    async def generate(api_key: str | None) -> list[int]:
        async with RolloutClient([engine], api_key=api_key, max_attempts=1) as client:
            await client.pause()
            await client.resume()
            out = await client.generate(PROMPTS[0], {"max_new_tokens": 3, "temperature": 0})
            return list(out.token_ids)

    assert len(asyncio.run(generate(API_KEY))) == 3
    with pytest.raises(Exception, match="401|Unauthorized"):
        asyncio.run(generate(None))

    sync = ParamSync(None, [engine], None, api_key=API_KEY)
    try:
        sync._loop.run(sync._client.pause(), 30, "pause_generation")  # a control endpoint, with the key
        sync._loop.run(sync._client.resume(), 30, "continue_generation")
    finally:
        sync.close()

    cfg = OmegaConf.create(
        {
            "actor_rollout_ref": {"model": {"path": str(toy_model_dir)}, "rollout": {"name": "sglang"}},
            "rollout_servers": {"num_servers": 1, "api_key": API_KEY},
        }
    )
    for name in ("sglang", "cpu_engine"):
        cfg.actor_rollout_ref.rollout.name = name
        args = build_server_args(spec_from_config(cfg), 30000)
        assert args[args.index("--api-key") + 1] == API_KEY, args
