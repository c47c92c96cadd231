# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Benchmarks: fully-async against the synchronous baseline, against the ideal overlap bound, and the
costs that eat into it.

    python -m rllm_fully_async.bench [--out DIR] [--sweeps staleness,trigger,partial|none] [--no-components]
    python -m rllm_fully_async.bench --smoke    # every path at toy sizes, in about a minute
    python -m rllm_fully_async.bench --learning [--smoke]   # time to a target reward (bench/learning.py)

Everything runs for real on CPU: the embedded engine over HTTP, verl's FSDP worker, Ray actors, gloo.
Generation and training get disjoint cores (``--gen-cores``, ``--train-cores``), which models separate
rollout and training devices; each side's host work shares its side's cores (the rollout executor and the
queue with the engine; the driver and Ray's daemons with the training worker). Response lengths are
long-tailed (lognormal), enforced per prompt through ``max_new_tokens`` with ``ignore_eos``, so a
lock-step batch waits for its slowest sample.

One invocation, one engine, one Ray session:

* G, the generation-only rate: the rollout executor feeds the engine and nobody trains;
* the synchronous baseline (``async_training.mode=sync``); its lock-step phases give T, the training-only
  rate (data always ready), and the lock-step generation rate with its long tail;
* the fully-async run with the same task, model, data order and sample budget, and sweeps over
  ``staleness_threshold``, ``trigger_parameter_sync_step`` and ``partial_rollout``;
* components: the MessageQueue against ``ray.util.queue.Queue``, and weight sync against a raw gloo
  broadcast of the same bytes, for several model sizes.

It prints a table and writes ``bench.json`` and PNG plots into ``--out``. BENCHMARKS.md explains the method.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np

from rllm_fully_async.bench.analysis import check_bars, ideal_bounds
from rllm_fully_async.bench.components import bench_queue, bench_weight_sync
from rllm_fully_async.bench.engine import Engine
from rllm_fully_async.bench.placement import Placement, pin_this_process
from rllm_fully_async.bench.report import plot, render_table
from rllm_fully_async.bench.run import async_overrides, measure_generation, run_pipeline
from rllm_fully_async.bench.settings import (
    STALENESS_SWEEP,
    SWEEPS,
    TRIGGER_SWEEP,
    BenchSettings,
    log,
    smoke_settings,
)
from rllm_fully_async.bench.task import build_task

# ------------------------------------------------------------------------------------------------ main


def sweep_plan(settings: BenchSettings) -> dict[str, list[tuple[str, float, int, bool]]]:
    """Sweep name -> runs ``(label, staleness, trigger, partial)``, each varying one key from the default."""
    s, k, p = settings.staleness_threshold, settings.trigger_parameter_sync_step, settings.partial_rollout
    plan = {
        "staleness": [(f"staleness={x:g}", x, k, p) for x in STALENESS_SWEEP],
        "trigger": [(f"trigger={x}", s, x, p) for x in TRIGGER_SWEEP],
        "partial": [(f"partial={'on' if x else 'off'}", s, k, x) for x in (True, False)],
    }
    return {name: plan[name] for name in settings.sweeps}


def run_benchmark(settings: BenchSettings) -> dict[str, Any]:
    """Everything, in one Ray session with one engine; returns what goes into bench.json."""
    import ray

    placement = (
        Placement.choose(settings.gen_cores, settings.train_cores) if settings.embedded_engine else None
    )
    loadavg_start = os.getloadavg()
    task = build_task(settings)
    # Ray starts its workers at niceness 15, below the engine's 0: on the generation core the rollout
    # executor would then wait for the engine's forward passes before it could admit the next request. On
    # separate rollout hosts nothing competes like this, so every process here runs at the same priority.
    os.environ["RAY_worker_niceness"] = "0"
    ray_options = {"include_dashboard": False, "log_to_driver": False,
                   "runtime_env": {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}}  # fmt: skip
    if placement is None:
        ray.init(**ray_options)
        engine = Engine(settings.engine_url, task.model_path)
    else:
        # Ray's daemons and every actor inherit this process's mask, the training cores; the engine starts
        # on the generation cores meanwhile, and the executor and the queue move there when they exist.
        pin_this_process(placement.train_cores)
        with ThreadPoolExecutor(1) as pool:
            starting = pool.submit(Engine.start_on, placement.gen_cores, task.model_path)
            ray.init(address="local", num_cpus=max(4, len(placement.train_cores)), **ray_options)
            engine = starting.result()
    log(f"engine at {engine.url}, ray up")
    result: dict[str, Any] = {
        "settings": asdict(settings), "placement": asdict(placement) if placement else None,
        "machine": {"cpus": os.cpu_count(), "loadavg_start": loadavg_start, "python": sys.version.split()[0]},
        "task": {"response_length_mean": float(np.mean(task.lengths)), "p50": float(np.median(task.lengths)),
                 "p90": float(np.percentile(task.lengths, 90)), "max": max(task.lengths)},
        "runs": {}, "sweeps": {}, "components": {},
    }  # fmt: skip
    runs = result["runs"]
    try:
        result["generation_only"] = measure_generation(settings, task, engine, placement)
        runs["sync"] = run_pipeline(settings, task, engine, placement, "sync", ["async_training.mode=sync"])
        default = (
            settings.staleness_threshold,
            settings.trigger_parameter_sync_step,
            settings.partial_rollout,
        )
        runs["async"] = run_pipeline(settings, task, engine, placement, "async", async_overrides(*default))
        for name, plan in sweep_plan(settings).items():
            for label, *values in plan:
                if label not in runs:
                    runs[label] = runs["async"] if tuple(values) == default else run_pipeline(
                        settings, task, engine, placement, label, async_overrides(*values))  # fmt: skip
            result["sweeps"][name] = [label for label, *_ in plan]
        for name in ("sync", "async"):
            runs[name]["engine_bins"] = engine.monitor.bins(
                runs[name]["fit_started"], runs[name]["per_step"][-1]["end"]
            )
        for run in runs.values():
            if run["mode"] == "async":
                bounds = ideal_bounds(result["generation_only"], runs["sync"], run)
                run.update(overlap_efficiency=bounds["overlap_efficiency"], ideal_async=bounds["ideal_async"])
        result["bounds"] = ideal_bounds(result["generation_only"], runs["sync"], runs["async"])
        result["bars"] = check_bars(result["bounds"], runs["async"])
        if settings.components:
            result["components"]["queue"] = bench_queue(settings, task)
            if settings.weight_sync_shapes and placement is not None:
                result["components"]["weight_sync"] = bench_weight_sync(settings, placement)
    finally:
        engine.stop()
        ray.shutdown()
    result["machine"]["loadavg_end"] = os.getloadavg()
    return result


def parse_args(argv: Sequence[str] | None = None) -> BenchSettings:
    p = argparse.ArgumentParser(prog="python -m rllm_fully_async.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="every path at toy sizes (CI)")
    scalar = {"int": int, "float": float, "str": str}
    for f in fields(BenchSettings):
        if f.type in scalar:
            p.add_argument(f"--{f.name.replace('_', '-')}", type=scalar[f.type], default=f.default)
    p.add_argument(
        "--no-partial-rollout", action="store_true", help="the fully-async run without partial rollout"
    )
    p.add_argument("--sweeps", default=",".join(SWEEPS), help=f"subset of {','.join(SWEEPS)}, or none")
    p.add_argument("--no-components", action="store_true", help="skip the queue and weight-sync benchmarks")
    p.add_argument("--gen-cores", default="", help="e.g. 0 (default: the first half of the usable cores)")
    p.add_argument("--train-cores", default="", help="e.g. 1 (default: the second half)")
    p.add_argument(
        "--override", action="append", default=[], help="a Hydra override for every run, repeatable"
    )
    args = p.parse_args(argv)
    sweeps = () if args.sweeps in ("", "none") else tuple(s.strip() for s in args.sweeps.split(","))
    if set(sweeps) - set(SWEEPS):
        p.error(f"--sweeps: unknown {sorted(set(sweeps) - set(SWEEPS))}; choose from {list(SWEEPS)} or none")
    if args.steps < 2:
        p.error("--steps must be at least 2: throughput is measured after the first step")
    if args.engine_url and (args.gen_cores or args.train_cores):
        p.error("--gen-cores and --train-cores place the embedded engine; --engine-url pins nothing")
    if args.engine_url and not args.model_path:
        p.error("--engine-url needs --model-path: the model the server at that URL serves")
    if args.smoke:
        where = ("model_path", "config_name", "engine_url")
        settings = smoke_settings(args.out, **{name: getattr(args, name) for name in where})
    else:
        values = {f.name: getattr(args, f.name) for f in fields(BenchSettings) if f.type in scalar}
        settings = BenchSettings(**values, partial_rollout=not args.no_partial_rollout, sweeps=sweeps)
    settings.overrides = tuple(args.override)
    settings.components = not args.no_components
    settings.gen_cores = tuple(int(c) for c in args.gen_cores.split(",") if c.strip())
    settings.train_cores = tuple(int(c) for c in args.train_cores.split(",") if c.strip())
    return settings


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    settings = parse_args(argv)
    # A terminated benchmark still stops its engine and Ray session: the finally blocks run on SystemExit.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = time.time()
    result = run_benchmark(settings)
    result["wall_s"] = time.time() - started
    out = Path(settings.out)
    result["plots"] = plot(result, out)
    (out / "bench.json").write_text(json.dumps(result, indent=1, default=float))
    table = render_table(result)
    (out / "summary.txt").write_text(table.strip() + "\n")
    print(table)
    print(f"\nwrote {out / 'bench.json'} and {', '.join(result['plots'])} in {result['wall_s']:.0f} s")
    return result
