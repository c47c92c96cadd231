# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""ParamSync end to end on CPU: real verl FSDP2 workers under Ray, real CPU engines, gloo broadcast."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request

import psutil
import pytest
import torch
from transformers import AutoModelForCausalLM
from worker_helpers import actor_config, greedy_reference, ppo_batch

from rllm_fully_async.bench.client_gate import ClientGate
from rllm_fully_async.rollout.client import parse_weight_version
from rllm_fully_async.servers.rollout_servers import CpuEngineProcess
from rllm_fully_async.sync.param_sync import (
    ParamSync,
    ParamSyncError,
    check_flattened_alignment,
    metadata_nbytes,
    split_into_buckets,
)
from rllm_fully_async.trainer.workers import create_actor_worker_group, shutdown_worker_group

PROMPTS = [[5, 6, 7, 8, 9], [40, 41, 42], [100, 17, 250, 3, 12, 99, 7]]
NEW_TOKENS = 6


def test_buckets_respect_the_size_and_keep_order():
    metadata = [("a", "float32", [4]), ("b", "bfloat16", [8]), ("c", "float32", [10]), ("d", "float32", [1])]
    assert [metadata_nbytes(m) for m in metadata] == [16, 16, 40, 4]
    buckets = list(split_into_buckets(metadata, metadata_nbytes, bucket_bytes=32))
    assert [[name for name, _, _ in b] for b in buckets] == [["a", "b"], ["c"], ["d"]]


def test_a_misaligned_flattened_bucket_is_refused_naming_the_tensor():
    check_flattened_alignment([[("a", "float32", [3]), ("b", "bfloat16", [3]), ("c", "bfloat16", [1])]])
    with pytest.raises(
        ValueError, match=r"'c' \(float32\) would start at byte 6 .*weight_sync_load_format=null"
    ):
        check_flattened_alignment([[("a", "float32", [1]), ("b", "bfloat16", [1]), ("c", "float32", [2])]])


@pytest.fixture(scope="module")
def engine(toy_model_dir):
    with CpuEngineProcess(str(toy_model_dir), num_threads=1) as server:
        yield server


def _server_greedy(gate: ClientGate, prompt: list[int]):
    params = {"temperature": 0.0, "max_new_tokens": NEW_TOKENS, "ignore_eos": True}
    return gate.submit(gate.client.generate(prompt, params)).result(timeout=60)


def _cache_flushes(url: str) -> int:
    with urllib.request.urlopen(f"{url}/get_server_info", timeout=10) as response:
        return json.loads(response.read())["internal_states"][0]["cache_flushes"]


def _weight_version(url: str) -> str:
    with urllib.request.urlopen(f"{url}/get_weight_version", timeout=10) as response:
        return json.loads(response.read())["weight_version"]


@pytest.fixture(scope="module")
def actor_wg(ray_local, toy_model_dir):
    """Two FSDP2 ranks over gloo: every full tensor is an all-gather of two shards."""
    wg = create_actor_worker_group(actor_config(toy_model_dir), role="actor", num_workers=2)
    wg.init_model()
    yield wg
    shutdown_worker_group(wg)


@pytest.mark.parametrize("load_format", [None, "flattened_bucket"])
def test_sync_makes_the_server_generate_with_the_trained_weights(actor_wg, engine, tmp_path, load_format):
    """One real update_actor, one sync; the server then generates exactly what the trainer's weights do."""
    old_version = parse_weight_version(_weight_version(engine.url))
    version = old_version + 1
    gate = ClientGate([engine.url])
    sync = ParamSync(
        actor_wg,
        [engine.url],
        gate,
        backend="gloo",
        bucket_size_mb=0.25,
        timeout_s=60,
        load_format=load_format,
    )
    try:
        sync.init_group()
        before = [_server_greedy(gate, p) for p in PROMPTS]

        metrics = actor_wg.update_actor(ppo_batch()).meta_info["metrics"]
        assert all(norm > 0 for norm in torch.tensor(metrics["actor/grad_norm"]).flatten().tolist())
        actor_wg.save_checkpoint(str(tmp_path / "ckpt"))  # rank 0 gathers a Hugging Face copy
        trained = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt" / "huggingface")

        # A long generation in flight when the sync starts is aborted, then resumed under the new version.
        long_run = gate.submit(
            gate.client.generate(PROMPTS[0], {"temperature": 1.0, "max_new_tokens": 400, "ignore_eos": True})
        )
        deadline = time.monotonic() + 30
        while gate.client.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.01)

        stats = sync.sync(version)

        assert stats.version == version
        assert stats.bytes == sum(metadata_nbytes(m) for m in sync.metadata) > 500_000
        assert 0 < stats.transfer_s < stats.total_s < 60
        assert stats.pause_s > 0 and stats.resume_s > 0
        assert abs(stats.pause_s + stats.transfer_s + stats.resume_s - stats.total_s) < 1e-3
        assert len(sync.buckets) > 1  # 0.25 MB buckets: the 0.58 MB model goes in several requests
        assert stats.broadcasts == (len(sync.buckets) if load_format else len(sync.metadata))
        assert _weight_version(engine.url) == str(version)

        interrupted = long_run.result(timeout=120)
        assert interrupted.num_aborts >= 1
        assert [chunk.version for chunk in interrupted.chunks] == [old_version, version]
        assert len(interrupted.token_ids) == 400

        for prompt, old in zip(PROMPTS, before, strict=True):
            out = _server_greedy(gate, prompt)
            tokens, logprobs = greedy_reference(trained, prompt, NEW_TOKENS)
            assert out.token_ids == tokens
            torch.testing.assert_close(torch.tensor(out.logprobs), torch.tensor(logprobs), atol=1e-4, rtol=0)
            assert [c.version for c in out.chunks] == [version]
            # ... and that is not what the server generated before the sync.
            assert max(abs(a - b) for a, b in zip(out.logprobs, old.logprobs, strict=True)) > 1e-3
    finally:
        sync.close()
        gate.close()


def test_a_dead_server_fails_the_sync_quickly(actor_wg, engine, toy_model_dir):
    doomed = CpuEngineProcess(str(toy_model_dir), num_threads=1).start()
    # The gate pauses the live engine; the weights go to the doomed one, which dies before the sync.
    gate = ClientGate([engine.url])
    sync = ParamSync(actor_wg, [doomed.url], gate, group_name="doomed", bucket_size_mb=1, timeout_s=20)
    try:
        sync.init_group()
        doomed.stop()
        start = time.monotonic()
        with pytest.raises(ParamSyncError, match="update_weights_from_distributed failed.*" + doomed.url):
            sync.sync(5)
        assert time.monotonic() - start < 20
    finally:
        gate.resume(0)
        start = time.monotonic()
        sync.close()  # best effort: logs what it could not tear down, never hangs
        assert time.monotonic() - start < 2 * 20 + 15
        gate.close()
        doomed.stop()


def _pid_listening_on(url: str) -> int:
    port = int(url.rsplit(":", 1)[1])
    return next(
        c.pid
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    )


def test_a_frozen_server_times_out_naming_the_step(actor_wg, engine, toy_model_dir):
    """A server that accepts connections but never answers: the sync raises instead of hanging."""
    frozen = CpuEngineProcess(str(toy_model_dir), num_threads=1).start()
    pid = _pid_listening_on(frozen.url)
    gate = ClientGate([engine.url])
    sync = ParamSync(actor_wg, [frozen.url], gate, group_name="frozen", bucket_size_mb=1, timeout_s=5)
    try:
        sync.init_group()
        os.kill(pid, signal.SIGSTOP)
        start = time.monotonic()
        with pytest.raises(
            TimeoutError, match=r"update_weights_from_distributed did not finish.*" + frozen.url
        ):
            sync.sync(7)
        assert time.monotonic() - start < 5 + 5
    finally:
        os.kill(pid, signal.SIGKILL)
        gate.resume(0)
        start = time.monotonic()
        sync.close()
        assert time.monotonic() - start < 2 * 5 + 15
        gate.close()
        frozen.stop()


def test_sync_sends_the_servers_dtype_with_bounded_buckets_in_flight(actor_wg, engine):
    """fp32 master weights go to a bf16 rollout as bf16 bytes; rank 0 keeps at most 1 bucket in flight; the
    servers flush their cache once per sync, not once per bucket."""
    version = parse_weight_version(_weight_version(engine.url)) + 1
    gate = ClientGate([engine.url])
    sync = ParamSync(
        actor_wg,
        [engine.url],
        gate,
        backend="gloo",
        bucket_size_mb=0.05,
        timeout_s=60,
        dtype="bfloat16",
        load_format="flattened_bucket",
        max_buckets_in_flight=1,
    )
    try:
        sync.init_group()
        assert {dtype for _name, dtype, _shape in sync.metadata} == {"bfloat16"}
        flushes = _cache_flushes(engine.url)
        stats = sync.sync(version)
        assert (
            _cache_flushes(engine.url) == flushes + 1
        )  # buckets say flush_cache=false; one flush at the end
        numel = sum(torch.Size(shape).numel() for _name, _dtype, shape in sync.metadata)
        assert stats.bytes == 2 * numel  # 2 bytes per weight on the wire, not fp32's 4
        assert len(sync.buckets) > 5 and stats.broadcasts == len(sync.buckets)
        assert stats.peak_buckets_in_flight == 1
        assert _weight_version(engine.url) == str(version)
        out = _server_greedy(gate, PROMPTS[0])
        assert len(out.token_ids) == NEW_TOKENS and [c.version for c in out.chunks] == [version]
    finally:
        sync.close()
        gate.close()
