# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Rollout server launcher: SGLang command lines, config mapping, and the real lifecycle on CPU engines."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from rllm_fully_async.servers.ports import ephemeral_low, free_port, port_clash
from rllm_fully_async.servers.rollout_servers import (
    ExternalRolloutServers,
    RolloutServerError,
    RolloutServers,
    RolloutServerSpec,
    ServerHost,
    build_cpu_engine_args,
    build_sglang_args,
    is_healthy,
    server_weight_dtype,
    spec_from_config,
    start_rollout_servers,
)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too: its parent has not reaped it yet.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ", 1)[1][0] != "Z"


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_sglang_args_use_sglang_056_flags() -> None:
    spec = RolloutServerSpec(
        kind="sglang",
        model_path="/models/qwen",
        tp_size=2,
        gpu_memory_utilization=0.7,
        dtype="bfloat16",
        context_length=4096,
        trust_remote_code=True,
        extra_args=["--attention-backend", "fa3"],
    )
    args = build_sglang_args(spec, 31000)
    assert args[:3] == [sys.executable, "-m", "sglang.launch_server"]
    flags = {
        a: (b if not b.startswith("--") else None) for a, b in zip(args[3:], args[4:] + ["--"], strict=True)
    }
    assert flags["--model-path"] == "/models/qwen" and flags["--port"] == "31000"
    assert flags["--host"] == "127.0.0.1" and flags["--tp-size"] == "2"
    assert flags["--mem-fraction-static"] == "0.7" and flags["--dtype"] == "bfloat16"
    assert flags["--weight-version"] == "0" and flags["--context-length"] == "4096"
    assert flags["--skip-server-warmup"] is None and flags["--trust-remote-code"] is None
    assert "--enable-memory-saver" not in args
    assert args[-2:] == ["--attention-backend", "fa3"]

    plain = build_sglang_args(RolloutServerSpec(kind="sglang", model_path="m"), 1)
    assert "--context-length" not in plain and "--trust-remote-code" not in plain


def test_cpu_engine_args() -> None:
    spec = RolloutServerSpec(kind="cpu", model_path="/m", num_threads=2, extra_args=["--max-batch-size", "8"])
    args = build_cpu_engine_args(spec, 4242)
    assert args[:3] == [sys.executable, "-m", "rllm_fully_async.cpu_engine"]
    assert args[args.index("--port") + 1] == "4242" and args[args.index("--num-threads") + 1] == "2"
    assert args[args.index("--weight-version") + 1] == "0" and args[-2:] == ["--max-batch-size", "8"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "vllm"}, "kind='vllm' must be one of"),
        ({"kind": "sglang", "extra_args": ["--port", "1"]}, "extra_args sets --port"),
        ({"kind": "sglang", "extra_args": ["--tp=2"]}, "set tp_size instead"),
        ({"kind": "cpu", "tp_size": 2}, "no tensor parallelism"),
        ({"kind": "cpu", "dtype": "int8"}, "dtype='int8'"),
        ({"kind": "sglang", "num_servers": 0}, "num_servers=0"),
        ({"kind": "sglang", "gpu_memory_utilization": 1.5}, "gpu_memory_utilization=1.5"),
        ({"kind": "cpu", "num_cpus_per_server": 0}, "num_cpus_per_server=0"),
    ],
)
def test_spec_rejects_bad_values_naming_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", "\\[")):
        RolloutServerSpec(model_path="m", **kwargs)


def _run_config(**rollout_servers) -> OmegaConf:
    return OmegaConf.create(
        {
            "actor_rollout_ref": {
                "model": {"path": "/models/qwen", "trust_remote_code": False},
                "rollout": {
                    "name": "sglang",
                    "tensor_model_parallel_size": 2,
                    "gpu_memory_utilization": 0.6,
                    "dtype": "bfloat16",
                    "max_model_len": None,
                },
            },
            "rollout_servers": {
                "urls": None,
                "num_servers": 3,
                "startup_timeout_s": 100,
                "extra_args": ["--log-level", "warning"],
                "num_threads": None,
                **rollout_servers,
            },
        }
    )


def test_weight_sync_sends_the_servers_dtype(toy_model_dir) -> None:
    """bf16 SGLang servers get bf16; "auto" follows SGLang's rule (fp32 checkpoint -> fp16); the CPU engine
    runs the checkpoint's dtype."""
    cfg = _run_config()
    assert server_weight_dtype(cfg) == "bfloat16"
    cfg.actor_rollout_ref.rollout.dtype = "half"
    assert server_weight_dtype(cfg) == "float16"
    cfg.actor_rollout_ref.model.path = str(toy_model_dir)  # saved in float32
    cfg.actor_rollout_ref.rollout.dtype = "auto"
    assert server_weight_dtype(cfg) == "float16"
    cfg.actor_rollout_ref.rollout.name = "cpu_engine"
    assert server_weight_dtype(cfg) == "float32"
    cfg.actor_rollout_ref.rollout.name = "sglang"
    cfg.actor_rollout_ref.rollout.dtype = "fp8"
    with pytest.raises(ValueError, match="actor_rollout_ref.rollout.dtype='fp8'"):
        server_weight_dtype(cfg)


def test_spec_from_config_reads_verl_and_rollout_server_keys() -> None:
    spec = spec_from_config(_run_config(max_restarts=1))
    assert (spec.kind, spec.model_path, spec.num_servers, spec.tp_size) == ("sglang", "/models/qwen", 3, 2)
    assert (spec.gpu_memory_utilization, spec.dtype, spec.startup_timeout_s) == (0.6, "bfloat16", 100.0)
    assert spec.extra_args == ["--log-level", "warning"] and spec.max_restarts == 1
    assert spec.bundle == {"CPU": 1.0, "GPU": 2.0}

    cfg = _run_config(num_threads=2, num_cpus_per_server=0.5)
    cfg.actor_rollout_ref.rollout.name = "cpu_engine"
    cpu = spec_from_config(cfg)
    assert (cpu.kind, cpu.tp_size, cpu.dtype, cpu.num_threads) == ("cpu", 1, "auto", 2)
    assert cpu.bundle == {"CPU": 0.5}

    cfg.actor_rollout_ref.rollout.name = "vllm"
    with pytest.raises(ValueError, match="actor_rollout_ref.rollout.name='vllm'"):
        spec_from_config(cfg)


def test_external_urls_are_waited_for_not_started() -> None:
    cfg = _run_config(urls=["http://127.0.0.1:9/"], startup_timeout_s=1)
    with pytest.raises(RolloutServerError, match=r"'http://127.0.0.1:9'\] did not answer /health within 1 s"):
        start_rollout_servers(cfg)
    servers = ExternalRolloutServers(["http://127.0.0.1:9"])
    assert servers.check() == ["http://127.0.0.1:9"]
    with pytest.raises(RolloutServerError, match="started outside this run"):
        servers.restart_dead()


def _generate(url: str) -> list[int]:
    body = {"input_ids": [1, 5, 6], "sampling_params": {"max_new_tokens": 3, "temperature": 0.0}}
    request = urllib.request.Request(
        f"{url}/generate", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["output_ids"]


def test_cpu_lifecycle_start_kill_detect_restart_stop(ray_local, toy_model_dir: Path, tmp_path: Path) -> None:
    import ray

    spec = RolloutServerSpec(
        kind="cpu",
        model_path=str(toy_model_dir),
        num_threads=1,
        num_cpus_per_server=0.5,
        max_restarts=1,
        log_dir=str(tmp_path),
    )
    servers = RolloutServers(spec)
    try:
        (url,) = servers.start(timeout_s=180)
        assert is_healthy(url) and len(_generate(url)) == 3 and servers.check() == []
        (first_pid,) = servers.pids()

        os.kill(first_pid, signal.SIGKILL)
        _wait_for(lambda: servers.check() == [url], 30, "killed server not detected")
        assert servers.restart_dead(timeout_s=180) == [url]
        assert servers.urls == [url] and servers.check() == [] and len(_generate(url)) == 3
        (second_pid,) = servers.pids()
        assert second_pid != first_pid and not _pid_alive(first_pid)
        assert servers.log_tail(0).count("=== launching on port") == 2

        # The server dies with its host actor, so a lost actor never leaves a server behind.
        ray.kill(servers._hosts[0])
        _wait_for(lambda: not _pid_alive(second_pid), 30, "server outlived its host actor")
        assert servers.check() == [url] and servers.pids() == [None]
        with pytest.raises(RolloutServerError, match="host actor died .* max_restarts=1"):
            servers.restart_dead(timeout_s=10)  # a second death is over the budget
    finally:
        servers.stop()
    assert servers.pids() == [] and not _pid_alive(second_pid)


def _sglang_available() -> bool:
    return importlib.util.find_spec("sglang") is not None and torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _sglang_available(), reason="needs sglang and a CUDA GPU")
def test_sglang_server_lifecycle_on_gpu(ray_local, toy_model_dir: Path, tmp_path: Path) -> None:
    """One real SGLang server: start, generate, weight version, kill, restart, stop."""
    model_path = os.environ.get("RLLM_TEST_SGLANG_MODEL", str(toy_model_dir))
    spec = RolloutServerSpec(
        kind="sglang",
        model_path=model_path,
        gpu_memory_utilization=0.3,
        dtype="float32" if model_path == str(toy_model_dir) else "auto",
        max_restarts=1,
        log_dir=str(tmp_path),
        extra_args=["--attention-backend", "torch_native", "--disable-cuda-graph"],
    )
    with RolloutServers(spec) as servers:
        (url,) = servers.urls
        assert len(_generate(url)) == 3
        with urllib.request.urlopen(f"{url}/get_model_info", timeout=30) as response:
            assert json.loads(response.read())["weight_version"] == "0"
        os.kill(servers.pids()[0], signal.SIGKILL)
        _wait_for(lambda: servers.check() == [url], 60, "killed SGLang server not detected")
        assert servers.restart_dead() == [url] and len(_generate(url)) == 3


def test_free_ports_lie_below_the_ephemeral_range_and_are_free() -> None:
    """Outgoing connections take their local ports from the ephemeral range, so a port below it cannot be
    taken by one between choosing it and the server binding it."""
    low = ephemeral_low()
    for _ in range(20):
        port = free_port("127.0.0.1")
        assert port < low
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_server_whose_port_was_taken_before_it_bound_says_so(toy_model_dir: Path, tmp_path: Path) -> None:
    """The launcher retries such a start on another port without counting it as a restart; this checks
    that the engine's failure is recognised, and that another failure is not mistaken for it."""
    spec = RolloutServerSpec(kind="cpu", model_path=str(toy_model_dir), num_threads=1, log_dir=str(tmp_path))
    host = ServerHost(spec, 0)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        host.launch(holder.getsockname()[1])
        _wait_for(lambda: host.exit_code() is not None, 120, "the engine to fail on a port in use")
    assert host.exit_code() != 0 and host.lost_its_port()
    host.launch(free_port())
    host.stop()
    assert not host.lost_its_port(), "a stopped server did not lose its port"
    assert port_clash("OSError: [Errno 98] Address already in use") and not port_clash("CUDA out of memory")
