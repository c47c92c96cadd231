# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The benchmark: its arithmetic, and a smoke run of the whole path (tiny sizes, no sweeps)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import numpy as np
import pytest

from rllm_fully_async.bench.analysis import ideal_bounds
from rllm_fully_async.bench.cli import parse_args
from rllm_fully_async.bench.components import raw_gloo_broadcast_s
from rllm_fully_async.bench.engine import Engine
from rllm_fully_async.bench.placement import Placement
from rllm_fully_async.bench.task import long_tail_lengths


def test_lengths_are_long_tailed_clipped_and_reproducible():
    lengths = long_tail_lengths(4000, median=32, sigma=1.0, low=4, high=256, seed=3)
    assert lengths == long_tail_lengths(4000, median=32, sigma=1.0, low=4, high=256, seed=3)
    assert min(lengths) >= 4 and max(lengths) == 256
    assert 28 <= np.median(lengths) <= 36
    assert np.mean(lengths) > 1.3 * np.median(lengths)  # a heavy right tail pulls the mean up
    assert np.percentile(lengths, 99) > 5 * np.median(lengths)


def test_ideal_bounds_follow_the_overlap_model():
    """Generation 2000 tokens/s; the async run trains 64 samples of 50 tokens in 3.2 s and syncs 0.4 s every
    4 steps; the sync run's samples have 40 tokens, it trains in 3.0 s and generates a batch in 3.2 s."""
    cpu = {"engine": {"cpu_share_when_runnable": 1.0}, "trainer worker": {"cpu_share_when_runnable": 1.0}}
    gen = {"tokens_per_s": 2000.0, "cpu": cpu}
    sync = {"samples_per_step": 64, "tokens_per_sample": 40.0, "train_s_per_step": 3.0, "cpu": cpu,
            "wait_s_per_step": 3.2, "samples_per_s": 9.0, "param_sync": {"total_s_mean": 0.2}}  # fmt: skip
    run = {"samples_per_step": 64, "tokens_per_sample": 50.0, "samples_per_s": 18.0, "train_s_per_step": 3.2,
           "trigger_parameter_sync_step": 4, "param_sync": {"total_s_mean": 0.4}, "cpu": cpu}  # fmt: skip
    b = ideal_bounds(gen, sync, run)
    assert b["G"] == pytest.approx(40.0) and b["T"] == pytest.approx(64 / 3.3)
    assert b["ideal_async"] == pytest.approx(64 / 3.3)
    assert b["T_sync"] == pytest.approx(20.0)
    assert b["ideal_sync"] == pytest.approx(1 / (1 / 50 + 1 / 20))
    assert b["G_lockstep"] == pytest.approx(20.0) and b["long_tail_penalty"] == pytest.approx(2.5)
    assert b["ideal_sync_with_tail"] == pytest.approx(10.0)
    assert b["overlap_efficiency"] == pytest.approx(18.0 / (64 / 3.3))
    assert b["speedup"] == pytest.approx(2.0)
    assert b["ideal_speedup_with_tail"] == pytest.approx(64 / 3.3 / 10.0)


def test_bad_sweep_name_is_refused():
    with pytest.raises(SystemExit):
        parse_args(["--sweeps", "staleness,nonsense"])


def test_raw_gloo_broadcast_is_timed():
    placement = Placement.choose((), ())
    assert 0 < raw_gloo_broadcast_s(1 << 20, placement, repeats=2) < 30


def _smoke(out, *args: str) -> tuple[dict, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "rllm_fully_async.bench", "--smoke", "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "RAY_DEDUP_LOGS": "0"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "bench.json").read_text()), proc.stdout


def test_engine_url_without_model_path_is_refused():
    with pytest.raises(SystemExit):
        parse_args(["--engine-url", "http://127.0.0.1:30000"])


def test_smoke_run_writes_results_and_plots(tmp_path):
    out = tmp_path / "bench"
    result, stdout = _smoke(out)
    runs, bounds = result["runs"], result["bounds"]
    assert {"sync", "async"} <= set(runs)
    assert runs["sync"]["mode"] == "sync" and runs["async"]["mode"] == "async"
    for run in runs.values():
        assert run["samples_per_s"] > 0 and run["steps"] == result["settings"]["steps"]
        assert {kind for kind, *_ in run["spans"]} >= {"wait", "train", "sync"}
    assert bounds["G"] > 0 and bounds["T"] > 0
    assert bounds["ideal_async"] == pytest.approx(min(bounds["G"], bounds["T"]))
    assert result["components"]["queue"]["typical_groups"]["message_queue"]["groups_per_s"] > 0
    assert (out / "timeline.png").stat().st_size > 0
    assert "overlap efficiency" in stdout


def test_smoke_run_against_a_running_server(tmp_path, toy_model_dir):
    """``--engine-url``: the path a GPU host takes with its SGLang server; here the CPU engine, unpinned."""
    from rllm_fully_async.servers.rollout_servers import CpuEngineProcess

    engine = CpuEngineProcess(str(toy_model_dir), num_threads=1).start(timeout_s=120)
    try:
        args = ("--engine-url", engine.url, "--model-path", str(toy_model_dir), "--no-components")
        result, stdout = _smoke(tmp_path / "bench", *args)
        load = json.loads(urllib.request.urlopen(f"{engine.url}/get_server_info").read())
    finally:
        engine.stop()
    assert result["placement"] is None and result["settings"]["engine_url"] == engine.url
    assert result["runs"]["async"]["samples_per_s"] > 0 and result["bounds"]["G"] > 0
    assert load["internal_states"][0]["generated_tokens"] > 0  # the runs generated on that server
    assert f"rollout server {engine.url}, nothing pinned" in stdout


def test_engine_starts_on_its_cores_and_leaves_the_caller_where_it_was(toy_model_dir):
    own = os.sched_getaffinity(0)
    cores = [min(own)]
    engine = Engine.start_on(cores, str(toy_model_dir))
    try:
        assert os.sched_getaffinity(engine.pids[0]) == set(cores)
        assert os.sched_getaffinity(0) == own
    finally:
        engine.stop()
