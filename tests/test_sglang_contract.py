# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""What we send SGLang and read from it, checked against SGLang 0.5.6's own source (its wheel, read with ast).

* Launch: every command line ``build_sglang_args`` makes (FSDP config, Megatron config, tp > 1, every option)
  parses with the flag definitions of ``ServerArgs.add_cli_args`` into the values we meant.
* Requests: the real client and ParamSync talk to a recording HTTP server; every path + method they use is in
  ``http_server.py``'s route table, and every JSON body uses only fields of the io_struct dataclass that route
  builds, with JSON values of the annotated types (``sampling_params`` keys: ``SamplingParams.__init__``).
* Responses: the answers the recorder gives have only keys that SGLang's answering code writes, and the client
  works with them, including the answer of a request aborted while queued (no ``weight_version``).
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from aiohttp import web
from hydra import compose, initialize_config_dir
from sglang_source import (
    HTTP_SERVER,
    IO_STRUCT,
    MODEL_RUNNER,
    TOKENIZER_MANAGER,
    SGLangSource,
    body_problems,
    fetch_wheel,
)

from rllm_fully_async.bench.engine import Engine
from rllm_fully_async.paths import config_dir
from rllm_fully_async.rollout.client import RolloutClient
from rllm_fully_async.rollout.executor import ExecutorSettings
from rllm_fully_async.servers.rollout_servers import (
    INITIAL_WEIGHT_VERSION,
    build_sglang_args,
    is_healthy,
    spec_from_config,
)
from rllm_fully_async.sync.param_sync import (
    EventLoopThread,
    ParamSync,
    check_flattened_alignment,
    metadata_nbytes,
    split_into_buckets,
)


@pytest.fixture(scope="module")
def sglang() -> SGLangSource:
    try:
        return SGLangSource(fetch_wheel())
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)


def _config(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        return compose(config_name=name, overrides=["actor_rollout_ref.model.path=/models/qwen", *overrides])


# ---------------------------------------------------------------------------------------------- launch


LAUNCH_CASES = {
    "fsdp": ("fully_async_ppo_trainer", []),
    "megatron": ("fully_async_ppo_megatron_trainer", []),
    "tp2_every_option": (
        "fully_async_ppo_trainer",
        [
            "actor_rollout_ref.rollout.tensor_model_parallel_size=2",
            "actor_rollout_ref.rollout.gpu_memory_utilization=0.65",
            "actor_rollout_ref.rollout.dtype=float16",
            "actor_rollout_ref.rollout.max_model_len=4096",
            "actor_rollout_ref.model.trust_remote_code=true",
            "+rollout_servers.host=0.0.0.0",
            "+rollout_servers.api_key=s3cret",
            'rollout_servers.extra_args=["--max-running-requests","64","--chunked-prefill-size=2048"]',
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(LAUNCH_CASES))
def test_launch_command_lines_parse_with_sglang_server_args(sglang: SGLangSource, case: str) -> None:
    config_name, overrides = LAUNCH_CASES[case]
    spec = spec_from_config(_config(config_name, *overrides))
    listen = spec.host or "10.1.2.3"  # the launcher picks loopback or the node's IP when unset
    argv = build_sglang_args(spec, port=31234, host=listen)
    assert argv[:3] == [sys.executable, "-m", "sglang.launch_server"]
    # sglang/launch_server.py parses sys.argv[1:] with prepare_server_args, i.e. ServerArgs.add_cli_args.
    assert "prepare_server_args(sys.argv[1:])" in sglang.module_source("sglang/launch_server.py")
    args = sglang.parse_server_args(argv[3:])
    assert args.model_path == "/models/qwen"
    assert (args.host, args.port) == (listen, 31234)
    assert args.api_key == spec.api_key
    assert args.tensor_parallel_size == spec.tp_size  # ServerArgs.from_cli_args copies it into tp_size
    assert args.mem_fraction_static == pytest.approx(spec.gpu_memory_utilization)
    assert args.dtype == spec.dtype
    assert args.weight_version == str(INITIAL_WEIGHT_VERSION)
    assert args.skip_server_warmup is True
    assert args.context_length == spec.context_length
    assert args.trust_remote_code is spec.trust_remote_code
    if case == "tp2_every_option":
        assert (args.tensor_parallel_size, args.dtype, args.context_length, args.trust_remote_code) == (
            2,
            "float16",
            4096,
            True,
        )
        assert (args.max_running_requests, args.chunked_prefill_size) == (64, 2048)
        assert (args.host, args.api_key) == ("0.0.0.0", "s3cret")


def test_server_args_checks_reject_what_sglang_lacks(sglang: SGLangSource) -> None:
    """The launch check is strict: a misspelt flag or a value outside SGLang's choices fails."""
    with pytest.raises((SystemExit, argparse.ArgumentError)):
        sglang.parse_server_args(["--model-path", "m", "--weight-versions", "0"])
    with pytest.raises((SystemExit, argparse.ArgumentError)):
        sglang.parse_server_args(["--model-path", "m", "--dtype", "fp8"])


# ---------------------------------------------------------------------------------------------- requests


@dataclass
class Recorded:
    method: str
    path: str
    body: object


# Answers shaped as SGLang 0.5.6 writes them; test_answers_have_only_fields_sglang_writes checks each key.
def _generate_answer(token_ids: list[int], finish: dict, version: str | None) -> dict:
    meta = {
        "id": "rid",
        "finish_reason": finish,
        "completion_tokens": len(token_ids),
        "output_token_logprobs": [[-0.5, t, None] for t in token_ids],
        "input_token_logprobs": [],
    }
    if version is not None:  # only TokenizerManager._handle_batch_output writes it
        meta |= {"weight_version": version, "prompt_tokens": 3, "cached_tokens": 0}
    return {"text": "", "output_ids": list(token_ids), "meta_info": meta}


NORMAL_ANSWER = _generate_answer([7, 8], {"type": "length", "length": 2}, "3")
# TokenizerManager._handle_abort_req: a request aborted in the waiting queue (also one retracted there).
QUEUED_ABORT_ANSWER = _generate_answer(
    [5, 6, 9], {"type": "abort", "message": "Abort in waiting queue"}, None
)
LOAD_ANSWER = [{"rid": None, "http_worker_ipc": None, "dp_rank": 0, "num_reqs": 0, "num_waiting_reqs": 0,
                "num_tokens": 40}]  # fmt: skip
CONTROL_ANSWER = {"success": True, "message": "ok"}
SERVER_INFO_ANSWER = {"internal_states": [{}], "version": "0.5.6"}


class Recorder:
    """An HTTP server that records every request and answers as SGLang would on success."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.queued_aborts = 0  # /generate answers to give as queued aborts before normal ones

    async def handle(self, request: web.Request) -> web.StreamResponse:
        text = await request.text()
        body = json.loads(text) if text else None
        self.requests.append(Recorded(request.method, request.path, body))
        if request.path == "/generate":
            if self.queued_aborts:
                self.queued_aborts -= 1
                return web.json_response(QUEUED_ABORT_ANSWER)
            return web.json_response(NORMAL_ANSWER)
        if request.path == "/get_load":
            return web.json_response(LOAD_ANSWER)
        if request.path == "/server_info":
            return web.json_response(SERVER_INFO_ANSWER)
        if request.path in ("/health", "/abort_request"):
            return web.Response(status=200)
        if request.path == "/flush_cache":
            return web.Response(text="Cache flushed.\n")
        return web.json_response(CONTROL_ANSWER)


@pytest.fixture(scope="module")
def recorder() -> Iterator[tuple[Recorder, str]]:
    rec = Recorder()
    loop = EventLoopThread("sglang-recorder")
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    runner = web.AppRunner(app)

    async def start() -> int:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return site._server.sockets[0].getsockname()[1]

    port = loop.run(start(), 30, "starting the recorder")
    try:
        yield rec, f"http://127.0.0.1:{port}"
    finally:
        loop.run(runner.cleanup(), 30, "stopping the recorder")
        loop.close()


WEIGHTS = [("model.embed_tokens.weight", "bfloat16", [8, 4]), ("model.norm.weight", "bfloat16", [4]),
           ("lm_head.weight", "bfloat16", [8, 4])]  # fmt: skip


@pytest.fixture(scope="module")
def recorded(recorder: tuple[Recorder, str]) -> list[Recorded]:
    """Every request the client, ParamSync, the launcher's health probe and the benchmark's engine (which
    also measures SGLang on a GPU host) make, as they make them."""
    rec, url = recorder
    cfg = _config("fully_async_ppo_trainer", "data.train_files=/data/train.parquet")
    settings = ExecutorSettings.from_config(cfg)

    async def client_calls() -> None:
        async with RolloutClient([url], health_check_interval_s=3600) as client:
            await client.generate([1, 2, 3], settings.sampling_params)
            greedy = {"temperature": 0.0, "ignore_eos": True, "min_new_tokens": 1, "stop": ["\n"]}
            await client.generate([1, 2, 3], {**settings.sampling_params, **greedy})
            await client.pause()
            await client.resume(3)
            await client.init_weights_update_group("127.0.0.1", 29500, 2, "g", "nccl")
            await client.destroy_weights_update_group("g")
            await client._abort_quietly(client._servers[0], "rid-1")
            client._servers[0].up = False
            await client._probe_out_servers(client._servers)

    asyncio.run(client_calls())
    assert is_healthy(url)
    engine = Engine(url, "/ckpt/initial")
    try:
        engine.reset()
        deadline = time.monotonic() + 30
        while not any(r.path == "/server_info" for r in rec.requests):  # its monitor's first poll
            assert time.monotonic() < deadline, "the engine monitor never polled /server_info"
            time.sleep(0.05)
    finally:
        engine.monitor.stop()
    for load_format in (None, "flattened_bucket"):
        sync = ParamSync(None, [url], gate=None, load_format=load_format, bucket_size_mb=64 / 2**20)
        sync.buckets = list(split_into_buckets(WEIGHTS, metadata_nbytes, 64))
        check_flattened_alignment(sync.buckets)
        try:
            sync._loop.run(sync._push_buckets(), 30, "push")
            sync._loop.run(sync._publish(4), 30, "publish")
        finally:
            sync._loop.run(sync._client.close(), 10, "close")
            sync._loop.close()
    return list(rec.requests)


def test_every_route_we_call_exists_in_sglang(sglang: SGLangSource, recorded: list[Recorded]) -> None:
    routes = sglang.routes
    used = {(r.method, r.path) for r in recorded}
    missing = [(m, p) for m, p in sorted(used) if p not in routes or m not in routes[p].methods]
    assert not missing, f"routes SGLang {sglang.wheel.name} does not serve: {missing}"
    # A deprecated route (e.g. /get_server_info) logs a warning on every call and will go away.
    deprecated = sorted(
        p for _m, p in used if "deprecated" in ast.unparse(sglang.function(HTTP_SERVER, routes[p].handler))
    )
    assert not deprecated, f"routes SGLang {sglang.wheel.name} marks deprecated: {deprecated}"
    # Everything the sync and the rollout need was exercised.
    assert {p for _m, p in used} >= {
        "/generate", "/pause_generation", "/continue_generation", "/update_weights_from_disk",
        "/init_weights_update_group", "/destroy_weights_update_group", "/update_weights_from_distributed",
        "/update_weight_version", "/flush_cache", "/get_load", "/abort_request", "/health",
    }  # fmt: skip


def test_every_body_fits_its_io_struct_dataclass(sglang: SGLangSource, recorded: list[Recorded]) -> None:
    problems = []
    for r in recorded:
        route = sglang.routes[r.path]
        if route.body_class is None:
            if r.body not in (None, {}):
                problems.append(f"{r.path} takes no body, we send {r.body}")
            continue
        problems += [f"{r.path}: {p}" for p in body_problems(sglang, route.body_class, r.body or {})]
    assert not problems, "\n".join(problems)


def test_sampling_params_are_sglang_sampling_params(sglang: SGLangSource, recorded: list[Recorded]) -> None:
    from sglang_source import value_matches

    known = sglang.sampling_params_args()
    for r in recorded:
        if r.path == "/generate":
            params = r.body["sampling_params"]
            assert not set(params) - set(known), f"SamplingParams has no {sorted(set(params) - set(known))}"
            bad = {k: v for k, v in params.items() if not value_matches(v, known[k])}
            assert not bad, f"sampling_params of the wrong type for SamplingParams: {bad}"


def test_weight_sync_requests_as_sglang_receives_them(sglang: SGLangSource, recorded: list[Recorded]) -> None:
    """Per bucket no flush (SGLang's default is true); one /flush_cache after the version, per sync."""
    fields = sglang.dataclass_fields("UpdateWeightsFromDistributedReqInput")
    assert fields["flush_cache"].has_default  # default True in 0.5.6: we must send false explicitly
    updates = [r for r in recorded if r.path == "/update_weights_from_distributed"]
    assert len(updates) == 3 * 2  # buckets of at most 64 bytes: 64, 8, 64; in each load format
    assert all(r.body["flush_cache"] is False for r in updates)
    assert [r.body.get("load_format") for r in updates] == [None] * 3 + ["flattened_bucket"] * 3
    tail = [r.path for r in recorded if r.path in ("/update_weight_version", "/flush_cache")]
    assert tail == ["/update_weight_version", "/flush_cache"] * 2
    # Our pause mode is one of PauseGenerationReqInput's modes.
    pause = next(r for r in recorded if r.path == "/pause_generation")
    assert pause.body["mode"] in sglang.literal_choices("PauseGenerationReqInput")


def test_body_checks_reject_what_sglang_lacks(sglang: SGLangSource) -> None:
    """The request check is strict: a field 0.5.6 lacks, a wrong type or a missing field is reported."""
    ok = {"names": ["w"], "dtypes": ["bfloat16"], "shapes": [[2]], "flush_cache": False}
    assert body_problems(sglang, "UpdateWeightsFromDistributedReqInput", ok) == []
    assert body_problems(sglang, "UpdateWeightsFromDistributedReqInput", {**ok, "flush": False})
    assert body_problems(sglang, "UpdateWeightsFromDistributedReqInput", {**ok, "flush_cache": "no"})
    assert body_problems(sglang, "UpdateWeightVersionReqInput", {"version": "1"})
    assert "/flush_caches" not in sglang.routes


# ---------------------------------------------------------------------------------------------- responses


def test_answers_have_only_fields_sglang_writes(sglang: SGLangSource) -> None:
    """The answers the recorder gives (and the client reads) are what SGLang's answering code writes."""
    logprobs = "TokenizerManager.add_logprob_to_meta_info"
    normal = sglang.produced_keys(
        TOKENIZER_MANAGER, "TokenizerManager._handle_batch_output", follow=(logprobs,)
    )
    normal |= sglang.produced_keys("sglang/srt/managers/schedule_batch.py", "FINISH_LENGTH.to_json")
    aborted = sglang.produced_keys(
        TOKENIZER_MANAGER, "TokenizerManager._handle_abort_req", follow=(logprobs,)
    )
    for answer, produced in ((NORMAL_ANSWER, normal), (QUEUED_ABORT_ANSWER, aborted)):
        keys = set(answer) | set(answer["meta_info"]) | set(answer["meta_info"]["finish_reason"])
        assert keys <= produced, f"SGLang does not write {sorted(keys - produced)}"
    # The queued abort carries no weight version: the client must label its tokens itself.
    assert "weight_version" in normal and "weight_version" not in aborted
    assert set(LOAD_ANSWER[0]) == set(sglang.dataclass_fields("GetLoadReqOutput"))
    assert set(SERVER_INFO_ANSWER) <= sglang.produced_keys(HTTP_SERVER, sglang.routes["/server_info"].handler)
    for route in ("/update_weights_from_distributed", "/init_weights_update_group", "/update_weight_version",
                  "/destroy_weights_update_group", "/update_weights_from_disk"):  # fmt: skip
        handler = sglang.routes[route].handler
        assert {"success", "message"} <= sglang.produced_keys(HTTP_SERVER, handler), route
    assert IO_STRUCT  # the request side is checked above


def test_client_keeps_the_tokens_of_a_queued_abort(recorder: tuple[Recorder, str]) -> None:
    """SGLang answers a request aborted in its waiting queue without weight_version; no token is lost."""
    rec, url = recorder

    async def run():
        async with RolloutClient([url], health_check_interval_s=3600) as client:
            await client.resume(2)  # the servers generate under version 2
            rec.queued_aborts = 1
            return await client.generate([1, 2, 3], {"max_new_tokens": 10})

    out = asyncio.run(run())
    assert out.token_ids == [5, 6, 9, 7, 8]  # the aborted request's 3 tokens, then the resumed request's 2
    assert [(c.version, c.token_ids) for c in out.chunks] == [(2, [5, 6, 9]), (3, [7, 8])]
    assert out.num_aborts == 1
    resumed = [r for r in rec.requests if r.path == "/generate"][-1].body
    assert resumed["input_ids"] == [1, 2, 3, 5, 6, 9] and resumed["sampling_params"]["max_new_tokens"] == 7


def test_the_weight_update_rendezvous_is_sglangs(sglang: SGLangSource) -> None:
    """Server rank = rank_offset + tp_rank; SGLang joins at f"tcp://{master_address}:{master_port}" with the
    address we send verbatim, which must be where our rank 0 hosts the store (IPv6: bracketed)."""
    from rllm_fully_async.cluster.addresses import rendezvous_host, tcp_url

    init = ast.unparse(sglang.function(MODEL_RUNNER, "ModelRunner.init_weights_update_group"))
    assert "rank = rank_offset + self.tp_rank" in init
    assert "init_method=f'tcp://{master_address}:{master_port}'" in init
    for host in ("10.0.0.1", "::1"):
        assert f"tcp://{rendezvous_host(host)}:{29500}" == tcp_url(host, 29500)
