# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Benchmarks: fully-async against the synchronous baseline, against the ideal overlap bound, and the
costs that eat into it.

    python -m rllm_fully_async.bench [--out DIR] [--sweeps staleness,trigger,partial] [--no-components]
    python -m rllm_fully_async.bench --smoke     # seconds-long check of the whole benchmark path

Everything runs for real on CPU: the embedded engine over HTTP, verl's FSDP worker, Ray actors. Generation
and training get disjoint cores (``--gen-cores``, ``--train-cores``), which models disaggregated rollout
and training devices; each side's host work shares its side's cores (the rollout executor and the queue
with the engine, the driver and Ray's daemons with the training worker). Response lengths are long-tailed
(lognormal), enforced per prompt through ``max_new_tokens`` with ``ignore_eos``, so a lock-step batch
really waits for its slowest sample.

One invocation, one engine, one Ray session:

* G, the generation-only rate: the rollout executor feeds the engine, nobody trains;
* the synchronous baseline (``async_training.mode=sync``); its lock-step phases give T, the training-only
  rate (data always ready), and the lock-step generation rate with its long tail;
* the fully-async run with the same task, model, data order and sample budget, and sweeps over
  ``staleness_threshold``, ``trigger_parameter_sync_step`` and ``partial_rollout``;
* components: MessageQueue against ``ray.util.queue.Queue``, and weight sync against a raw gloo
  broadcast of the same bytes, for several model sizes.

It prints a table and writes ``bench.json`` and PNG plots into ``--out``. BENCHMARKS.md explains the method.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import signal
import string
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from rllm_fully_async.rollout import single_turn_chat
from rllm_fully_async.trainer import FullyAsyncTrainer
from rllm_fully_async.trajectory import Sample, TrajectoryGroup

DATA_SOURCE = "bench_digits"
# Sweep values; verl's published ablation varies the same keys.
STALENESS_SWEEP = (0.0, 0.1, 0.3, 0.5, 1.0)
TRIGGER_SWEEP = (1, 2, 4)
SWEEPS = ("staleness", "trigger", "partial")
# Model shapes for the weight-sync component: (hidden, layers, intermediate, heads, kv heads).
WEIGHT_SYNC_SHAPES = (
    (64, 2, 256, 4, 2),
    (128, 4, 512, 4, 2),
    (256, 4, 1024, 8, 4),
    (512, 4, 2048, 8, 4),
    (768, 8, 3072, 12, 4),
)
# Per-step metrics kept in bench.json (the trainer logs many more).
STEP_KEYS = (
    "reward/mean",
    "async/batch_samples",
    "async/batch_response_tokens",
    "async/staleness_mean",
    "async/staleness_max",
    "async/partial_rollout_fraction",
    "async/param_sync_pause_s",
    "async/param_sync_transfer_s",
    "async/param_sync_resume_s",
    "async/param_sync_s",
    "timing_s/old_log_prob",
    "timing_s/update_actor",
)


_STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"[bench {time.monotonic() - _STARTED:6.1f}s] {message}", flush=True)


# ------------------------------------------------------------------------------------------------ settings


@dataclass
class BenchSettings:
    """What one benchmark invocation runs; every field is a command-line flag."""

    out: str = "bench_results"
    steps: int = 24
    groups_per_step: int = 8
    n: int = 8
    max_concurrency: int = 64
    length_median: float = 32.0
    length_sigma: float = 1.0
    length_min: int = 4
    length_max: int = 256
    hidden_size: int = 64
    num_layers: int = 2
    staleness_threshold: float = 0.5
    trigger_parameter_sync_step: int = 4
    partial_rollout: bool = True
    sweeps: tuple[str, ...] = SWEEPS
    components: bool = True
    weight_sync_shapes: tuple[tuple[int, ...], ...] = WEIGHT_SYNC_SHAPES
    gen_phase_batches: int = 8
    gen_cores: tuple[int, ...] = ()
    train_cores: tuple[int, ...] = ()
    seed: int = 1
    smoke: bool = False

    @property
    def samples_per_step(self) -> int:
        return self.groups_per_step * self.n

    @property
    def num_prompts(self) -> int:
        """Rows in the dataset: the trained ones plus room for what async runs generate ahead."""
        ahead = math.ceil((1 + max(STALENESS_SWEEP)) * max(TRIGGER_SWEEP)) + 2
        return max(self.steps + ahead, self.gen_phase_batches + 4) * self.groups_per_step


def smoke_settings(out: str) -> BenchSettings:
    """The smallest run of every benchmark path but the weight-sync sizes, for CI: well under a minute."""
    return BenchSettings(
        out=out,
        steps=2,
        groups_per_step=2,
        n=2,
        max_concurrency=8,
        length_median=4,
        length_sigma=0.5,
        length_max=8,
        sweeps=(),
        weight_sync_shapes=(),
        gen_phase_batches=2,
        smoke=True,
    )


# ------------------------------------------------------------------------------------------------ the task


def long_tail_lengths(count: int, median: float, sigma: float, low: int, high: int, seed: int) -> list[int]:
    """Response lengths shaped like reasoning traces: lognormal (heavy right tail), clipped to [low, high]."""
    rng = np.random.default_rng(seed)
    raw = median * np.exp(sigma * rng.standard_normal(count))
    return np.clip(np.round(raw), low, high).astype(int).tolist()


def write_dataset(path: Path, lengths: Sequence[int]) -> None:
    """verl-format parquet; each row carries its response length in ``extra_info.max_new_tokens``."""
    import pandas as pd

    rows = [
        {
            "data_source": DATA_SOURCE,
            "prompt": [{"role": "user", "content": f"What is {i % 5}+{i // 5 % 5}? Answer with digits."}],
            "reward_model": {"style": "rule", "ground_truth": str(i % 5 + i // 5 % 5)},
            "extra_info": {"index": i, "max_new_tokens": int(length)},
        }
        for i, length in enumerate(lengths)
    ]
    pd.DataFrame(rows).to_parquet(path)


def digit_fraction(
    data_source: str, solution_str: str, ground_truth: str, extra_info: dict | None = None
) -> float:
    """Reward: the fraction of response characters that are digits. Dense and quickly learnable, so a short
    run shows training progress; the benchmark measures speed, the reward only shows that learning happens."""
    return sum(c in string.digits for c in solution_str) / max(1, len(solution_str))


async def long_tail_rollout(
    client: Any, tokenizer: Any, *, sampling_params: dict, extra_info: dict, reward_fn: Any = None, **row: Any
) -> Sample:
    """The default single-turn rollout, generating exactly the row's ``max_new_tokens`` (``ignore_eos``) and
    scored by :func:`digit_fraction` (the configured reward function is not used)."""
    params = {**sampling_params, "max_new_tokens": int(extra_info["max_new_tokens"]), "ignore_eos": True}
    return await single_turn_chat(
        client, tokenizer, sampling_params=params, extra_info=extra_info, reward_fn=digit_fraction, **row
    )


@dataclass
class Task:
    model_path: str
    train_file: str
    lengths: list[int]


def build_task(settings: BenchSettings) -> Task:
    from rllm_fully_async import toy

    root = Path(settings.out) / "task"
    root.mkdir(parents=True, exist_ok=True)
    model = toy.build(root / "model", seed=0, **_model_shape(settings.hidden_size, settings.num_layers))
    lengths = long_tail_lengths(
        settings.num_prompts,
        settings.length_median,
        settings.length_sigma,
        settings.length_min,
        settings.length_max,
        settings.seed,
    )
    write_dataset(root / "train.parquet", lengths)
    return Task(str(model), str(root / "train.parquet"), lengths)


def _model_shape(
    hidden: int,
    layers: int,
    intermediate: int | None = None,
    heads: int | None = None,
    kv_heads: int | None = None,
) -> dict[str, int]:
    heads = heads or max(4, hidden // 32)
    return {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "intermediate_size": intermediate or 4 * hidden,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads or max(1, heads // 2),
    }


# ------------------------------------------------------------------------------------------------ cores


@dataclass
class Placement:
    """Disjoint cores for generation (engine, executor, queue) and training (worker, driver, Ray)."""

    gen_cores: list[int]
    train_cores: list[int]

    @classmethod
    def choose(cls, gen: Sequence[int], train: Sequence[int]) -> Placement:
        available = sorted(os.sched_getaffinity(0))
        if not gen and not train:
            if len(available) < 2:
                raise SystemExit(
                    "the benchmark needs at least 2 cores (one for generation, one for training)"
                )
            half = len(available) // 2
            gen, train = available[:half], available[half:]
        if set(gen) & set(train) or not gen or not train or not set(gen) | set(train) <= set(available):
            raise SystemExit(
                f"--gen-cores {list(gen)} and --train-cores {list(train)} must be non-empty, "
                f"disjoint and within the cores available to this process {available}"
            )
        return cls(list(gen), list(train))


def pin_threads(pid: int, cores: Sequence[int]) -> None:
    """Pin every thread of process ``pid``; threads it starts later inherit the mask from their creator."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except OSError:  # the thread ended meanwhile
            pass


def pin_this_process(cores: Sequence[int]) -> int:
    pin_threads(os.getpid(), cores)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(len(cores))
    return os.getpid()


def _pin_actor(actor_self: Any, cores: Sequence[int]) -> int:
    return pin_this_process(cores)


def pin_actors(actors: Sequence[Any], cores: Sequence[int]) -> list[int]:
    """Pin Ray actors' processes (any actor, through ``__ray_call__``); returns their pids."""
    import ray

    return ray.get([a.__ray_call__.remote(_pin_actor, list(cores)) for a in actors], timeout=60)


def cpu_times(pids: dict[str, list[int]]) -> dict[str, dict[str, Any]]:
    """Per role: CPU seconds used so far, and every thread's (run, run-queue wait) nanoseconds.

    The run-queue wait comes from the kernel (``/proc/<pid>/task/<tid>/schedstat``): time a thread was ready
    to run while its core was busy with something else, such as another user's process.
    """
    import psutil

    out: dict[str, dict[str, Any]] = {}
    for role, role_pids in pids.items():
        used, threads = 0.0, {}
        for pid in role_pids:
            try:
                times = psutil.Process(pid).cpu_times()
                used += times.user + times.system
                for tid in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                        run_ns, wait_ns = f.read().split()[:2]
                    threads[tid] = (int(run_ns), int(wait_ns))
            except (psutil.Error, OSError):  # the process or thread has ended
                pass
        out[role] = {"cpu_s": used, "threads": threads}
    return out


def cpu_usage(
    start: dict[str, dict[str, Any]], end: dict[str, dict[str, Any]], wall: float
) -> dict[str, dict[str, float]]:
    """Per role: cores used on average, and the share of its runnable time that the role's busiest thread
    (the model or training loop) actually spent on a CPU; 1.0 means nothing else competed for its core."""
    out = {}
    for role, after in end.items():
        before = start.get(role, {"cpu_s": 0.0, "threads": {}})
        deltas = [
            (run - before["threads"].get(tid, (0, 0))[0], wait - before["threads"].get(tid, (0, 0))[1])
            for tid, (run, wait) in after["threads"].items()
        ]
        run, wait = max(deltas, default=(0, 0))
        out[role] = {
            "cores": (after["cpu_s"] - before["cpu_s"]) / wall,
            "cpu_share_when_runnable": run / (run + wait) if run > 0 else 1.0,
        }
    return out


# ------------------------------------------------------------------------------------------------ engine


def _http(url: str, body: dict | None = None, timeout_s: float = 60.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        text = response.read().decode()
    return json.loads(text) if text.strip().startswith(("{", "[")) else text


class EngineMonitor:
    """Samples the engine's work counters a few times a second: when it generated and how fast.

    Reading the counters (``/get_server_info``) costs the engine well under 1% of a core.
    """

    def __init__(self, url: str, interval_s: float = 0.2) -> None:
        self.url = url
        self.interval_s = interval_s
        self.samples: list[tuple[float, int, int]] = []  # (time, forward passes, generated tokens)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="engine-monitor", daemon=True)

    def start(self) -> EngineMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                state = _http(f"{self.url}/get_server_info", timeout_s=5)["internal_states"][0]
            except OSError:
                continue
            self.samples.append((time.time(), int(state["forward_passes"]), int(state["generated_tokens"])))

    def bins(self, start: float, end: float) -> list[tuple[float, float, bool, float]]:
        """``(t0, t1, generating, tokens/s)`` for every sampling interval inside [start, end]."""
        inside = [s for s in self.samples if start - self.interval_s <= s[0] <= end + self.interval_s]
        return [
            (t0, t1, f1 > f0, (g1 - g0) / (t1 - t0))
            for (t0, f0, g0), (t1, f1, g1) in zip(inside, inside[1:], strict=False)
            if t1 > t0
        ]

    def busy_fraction(self, start: float, end: float) -> float:
        bins = [b for b in self.bins(start, end) if b[0] >= start and b[1] <= end]
        total = sum(t1 - t0 for t0, t1, _, _ in bins)
        return sum(t1 - t0 for t0, t1, busy, _ in bins if busy) / total if total else float("nan")


class Engine:
    """The embedded CPU engine, pinned to the generation cores and shared by every run of the benchmark."""

    def __init__(self, model_path: str, cores: Sequence[int]) -> None:
        from rllm_fully_async.cpu_engine import CpuEngineProcess

        self.model_path = model_path
        self.process = CpuEngineProcess(model_path, num_threads=len(cores)).start(timeout_s=180)
        self.url = self.process.url
        self.pid = self.process._proc.pid
        pin_threads(self.pid, cores)
        self.monitor = EngineMonitor(self.url).start()

    def reset(self, timeout_s: float = 120.0) -> None:
        """Back to the initial weights and version 0 with nothing in flight, so every run starts alike."""
        _http(f"{self.url}/continue_generation", {})
        _http(f"{self.url}/abort_request", {"abort_all": True})
        deadline = time.monotonic() + timeout_s
        while sum(s["num_reqs"] + s["num_waiting_reqs"] for s in _http(f"{self.url}/get_load")) > 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the engine at {self.url} did not drain within {timeout_s} s")
            time.sleep(0.1)
        _http(f"{self.url}/update_weights_from_disk", {"model_path": self.model_path, "weight_version": "0"})

    def stop(self) -> None:
        self.monitor.stop()
        self.process.stop()


# ------------------------------------------------------------------------------------------------ runs


@dataclass
class RunRecord:
    """What the instrumented trainer saw: its spans (wait / train / sync), per-step metrics, CPU per role."""

    pids: dict[str, list[int]] = field(default_factory=dict)
    spans: list[tuple[str, int, float, float]] = field(default_factory=list)  # (kind, step, start, end)
    steps: list[dict[str, Any]] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0
    cpu_start: dict[str, dict[str, Any]] = field(default_factory=dict)
    cpu_end: dict[str, dict[str, Any]] = field(default_factory=dict)


class TimedTrainer(FullyAsyncTrainer):
    """The production trainer, recording when it waits for data, trains and syncs weights.

    It also pins its processes: the training workers to the training cores, the rollout executor and
    the queue to the generation cores (the driver already runs on the training cores).
    """

    def __init__(self, *args: Any, record: RunRecord, placement: Placement, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.record = record
        record.pids.update(
            {
                "trainer worker": pin_actors(self.actor_rollout_wg.workers, placement.train_cores),
                "rollout executor": pin_actors([self.executor], placement.gen_cores),
                "message queue": pin_actors([self.queue], placement.gen_cores),
                "driver": [os.getpid()],
            }
        )

    def fit(self):
        self.record.cpu_start = cpu_times(self.record.pids)
        self.record.started = time.time()
        try:
            return super().fit()
        finally:
            self.record.ended = time.time()
            self.record.cpu_end = cpu_times(self.record.pids)

    @contextmanager
    def _span(self, kind: str):
        start = time.time()
        try:
            yield
        finally:
            self.record.spans.append((kind, self.global_steps + (kind != "sync"), start, time.time()))

    def _next_groups(self, run_ref):
        with self._span("wait"):
            return super()._next_groups(run_ref)

    def _train_step(self, groups):
        with self._span("train"):
            metrics = super()._train_step(groups)
        self.record.steps.append(metrics)  # fit() adds the sync and pipeline metrics to this same dict
        return metrics

    def _sync_weights(self):
        with self._span("sync"):
            return super()._sync_weights()


def compose_config(
    settings: BenchSettings, task: Task, engine_url: str, label: str, overrides: Sequence[str]
):
    """The CPU default config with the benchmark's task, the shared engine and ``overrides``."""
    from hydra import compose, initialize_config_dir

    from rllm_fully_async.paths import config_dir

    run_dir = Path(settings.out).resolve() / "runs" / label.replace("=", "_").replace(" ", "_")
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        return compose(
            "fully_async_ppo_cpu",
            overrides=[
                f"actor_rollout_ref.model.path={task.model_path}",
                f"data.train_files={task.train_file}",
                "data.val_files=null",
                f"data.max_response_length={settings.length_max}",
                f"data.seed={settings.seed}",
                f"actor_rollout_ref.rollout.n={settings.n}",
                f"actor_rollout_ref.actor.ppo_mini_batch_size={settings.groups_per_step}",
                f"async_training.max_concurrency={settings.max_concurrency}",
                "async_training.rollout_fn=rllm_fully_async.bench:long_tail_rollout",
                f"rollout_servers.urls=[{engine_url}]",
                f"trainer.total_training_steps={settings.steps}",
                f"trainer.default_local_dir={run_dir}",
                "trainer.resume_mode=disable",
                "trainer.logger=[]",
                f"trainer.experiment_name=bench_{label}",
                *overrides,
            ],
        )


def async_overrides(staleness: float, trigger: int, partial_rollout: bool) -> list[str]:
    return [
        "async_training.mode=async",
        f"async_training.staleness_threshold={staleness}",
        f"async_training.trigger_parameter_sync_step={trigger}",
        f"async_training.partial_rollout={partial_rollout}",
    ]


def run_pipeline(
    settings: BenchSettings,
    task: Task,
    engine: Engine,
    placement: Placement,
    label: str,
    overrides: Sequence[str],
) -> dict[str, Any]:
    """One complete training run through ``rllm_fully_async.main.run``, instrumented."""
    from rllm_fully_async.main import run

    cfg = compose_config(settings, task, engine.url, label, overrides)
    engine.reset()
    record = RunRecord(pids={"engine": [engine.pid]})
    load_before = os.getloadavg()
    log(f"run {label} ...")
    summary = run(cfg, trainer_factory=partial(TimedTrainer, record=record, placement=placement))
    result = analyse_run(label, cfg, record, summary.final, engine.monitor, settings.samples_per_step)
    result["loadavg"] = {"before": load_before, "after": os.getloadavg()}
    log(f"run {label}: {result['samples_per_s']:.2f} samples/s")
    return result


def _steps_of(record: RunRecord) -> list[dict[str, float]]:
    """Per training step: when it ended, and how long it waited, trained and synced."""
    steps: dict[int, dict[str, float]] = {}
    for kind, step, start, end in record.spans:
        entry = steps.setdefault(step, {"wait_s": 0.0, "train_s": 0.0, "sync_s": 0.0, "end": 0.0})
        entry[f"{kind}_s"] += end - start
        entry["end"] = max(entry["end"], end)
    return [steps[k] for k in sorted(steps)]


def analyse_run(
    label: str,
    cfg: Any,
    record: RunRecord,
    final: dict[str, Any],
    monitor: EngineMonitor,
    samples_per_step: int,
) -> dict[str, Any]:
    """Throughput (steady state: after the first step), where the trainer's time went, and the pipeline's
    own accounting (idle ratios, syncs, queue latency, staleness) for one run."""
    a = cfg.async_training
    steps = _steps_of(record)
    metrics = [{k: float(m[k]) for k in STEP_KEYS if k in m} for m in record.steps]
    samples = [int(m["async/batch_samples"]) for m in metrics]
    for entry, m in zip(steps, metrics, strict=True):
        entry.update(samples=m["async/batch_samples"], reward=m["reward/mean"])
    # Steady state: from the end of step 1 (the pipeline is full) to the end of the last step.
    start, end = steps[0]["end"], steps[-1]["end"]
    steady = steps[1:]
    wall = end - start
    waited = sum(s["wait_s"] for s in steady)
    trained = sum(s["train_s"] for s in steady)
    synced = sum(s["sync_s"] for s in steady)
    syncs = [m for m in metrics if "async/param_sync_s" in m]
    staleness: dict[str, int] = {}
    for m in record.steps:
        for key, count in m.items():
            if key.startswith("async/staleness_hist/"):
                bucket = key.rsplit("/", 1)[1]
                staleness[bucket] = staleness.get(bucket, 0) + int(count)
    fit_wall = record.ended - record.started
    rewards = [m["reward/mean"] for m in metrics]
    groups_done = max(1.0, float(final.get("rollout/groups_done", 0)))
    return {
        "label": label,
        "mode": a.mode,
        "staleness_threshold": float(a.staleness_threshold),
        "trigger_parameter_sync_step": int(a.trigger_parameter_sync_step),
        "partial_rollout": bool(a.partial_rollout),
        "steps": len(steps),
        "samples_per_step": samples_per_step,
        "samples_per_s": sum(samples[1:]) / wall if wall > 0 else float("nan"),
        "samples_per_s_whole_run": sum(samples) / (end - record.started),
        "steady_wall_s": wall,
        "trainer_share": {
            "waiting": waited / wall,
            "training": trained / wall,
            "syncing": synced / wall,
            "other": 1 - (waited + trained + synced) / wall,
        },
        "trainer_idle_ratio": waited / wall,
        "train_s_per_step": trained / len(steady),
        "wait_s_per_step": waited / len(steady),
        "rollout_idle_ratio": final.get("rollout/idle_ratio"),
        "rollout_paused_s": final.get("rollout/paused_s"),
        "rollout_throttled_s": final.get("rollout/admission/throttled_s"),
        "rollout_wall_s": final.get("rollout/wall_s"),
        "engine_busy_fraction": monitor.busy_fraction(start, end),
        "param_sync": {
            "count": len(syncs),
            **{
                f"{part}_s_mean": float(np.mean([m[f"async/param_sync_{part}_s"] for m in syncs]))
                if syncs
                else 0.0
                for part in ("pause", "transfer", "resume")
            },
            "total_s_mean": float(np.mean([m["async/param_sync_s"] for m in syncs])) if syncs else 0.0,
        },
        "queue": {
            "put_wait_s_mean": final.get("queue/put_wait_s_mean"),
            "get_wait_s_mean": final.get("queue/get_wait_s_mean"),
            "executor_put_s_mean": float(final.get("rollout/put_wait_s", 0.0)) / groups_done,
            "max_depth": final.get("queue/max_depth"),
        },
        "staleness_hist": dict(sorted(staleness.items(), key=lambda kv: int(kv[0]))),
        "partial_rollout_fraction": final.get("rollout/partial_rollout_fraction"),
        "reward_first": float(np.mean(rewards[:3])),
        "reward_last": float(np.mean(rewards[-3:])),
        "cpu": cpu_usage(record.cpu_start, record.cpu_end, fit_wall),
        "per_step": steps,
        "spans": [list(s) for s in record.spans],
        "fit_started": record.started,
    }


# ------------------------------------------------------------------------------------------------ G


def measure_generation(
    settings: BenchSettings, task: Task, engine: Engine, placement: Placement
) -> dict[str, Any]:
    """G: samples/s from the real rollout executor into the queue with nobody training.

    The admission budget is opened wide so that only the engine (and the executor's own work) limits the
    rate; the steady window runs from the moment a tenth of the target has arrived.
    """
    import ray
    from omegaconf import OmegaConf

    from rllm_fully_async.executor import RolloutExecutor
    from rllm_fully_async.message_queue import MessageQueue

    target = settings.gen_phase_batches * settings.groups_per_step
    wide = settings.num_prompts / settings.groups_per_step
    cfg = compose_config(settings, task, engine.url, "generation_only", async_overrides(wide, 1, True))
    engine.reset()
    log("generation-only phase ...")
    queue = MessageQueue.options(num_cpus=0).remote(settings.num_prompts)
    executor = RolloutExecutor.options(num_cpus=0).remote(
        OmegaConf.to_container(cfg, resolve=True), [engine.url], queue
    )
    pin_actors([executor, queue], placement.gen_cores)
    load_before = os.getloadavg()
    run_ref = executor.run.remote()
    series: list[tuple[float, int]] = []
    cpu_start = None
    deadline = time.monotonic() + 600
    try:
        while not series or series[-1][1] < target:
            ready, _ = ray.wait([run_ref], timeout=0.1)
            if ready:
                ray.get(run_ref)
                raise RuntimeError("the rollout executor finished before the generation-only target")
            if time.monotonic() > deadline:
                raise TimeoutError(f"generation-only phase: {target} groups not reached in 600 s")
            series.append((time.time(), ray.get(queue.counts.remote())["queued"]))
            if cpu_start is None and series[-1][1] >= max(1, target // 10):
                steady_from, cpu_start = len(series) - 1, cpu_times({"engine": [engine.pid]})
        cpu_end = cpu_times({"engine": [engine.pid]})
    finally:
        ray.get(executor.stop.remote())
        ray.kill(executor)
        ray.kill(queue)
    (t0, q0), (t1, q1) = series[steady_from], series[-1]
    rate = (q1 - q0) * settings.n / (t1 - t0)
    log(f"generation-only: {rate:.2f} samples/s")
    return {
        "samples_per_s": rate,
        "groups": q1 - q0,
        "window_s": t1 - t0,
        "engine_busy_fraction": engine.monitor.busy_fraction(t0, t1),
        "cpu": cpu_usage(cpu_start, cpu_end, t1 - t0),
        "loadavg": {"before": load_before, "after": os.getloadavg()},
    }


# ------------------------------------------------------------------------------------------------ analysis


def ideal_bounds(gen: dict[str, Any], sync: dict[str, Any], run: dict[str, Any]) -> dict[str, float]:
    """The overlap bound for ``run`` and the synchronous ideal, from rates measured in this invocation.

    T (training-only rate, data always ready) is the batch over the lock-step run's training time plus the
    run's own share of weight syncs (``sync_s / trigger``): a trainer that never waits still pays those.
    """
    batch = sync["samples_per_step"]
    g = gen["samples_per_s"]
    train_s = sync["train_s_per_step"]
    t_async = batch / (train_s + run["param_sync"]["total_s_mean"] / run["trigger_parameter_sync_step"])
    t_sync = batch / (train_s + sync["param_sync"]["total_s_mean"])
    g_batch = batch / sync["wait_s_per_step"]  # lock-step generation of one batch, long tail included
    ideal_async = min(g, t_async)
    # The bound assumes each side owns its cores. Where other processes took a share of them during the
    # run (and not while G and T were measured), scale G and T by the CPU share each side actually got.
    engine_share = (
        run["cpu"]["engine"]["cpu_share_when_runnable"] / gen["cpu"]["engine"]["cpu_share_when_runnable"]
    )
    trainer_share = (
        run["cpu"]["trainer worker"]["cpu_share_when_runnable"]
        / sync["cpu"]["trainer worker"]["cpu_share_when_runnable"]
    )
    ideal_async_cpu = min(g * engine_share, t_async * trainer_share)
    ideal_sync = 1 / (1 / g + 1 / t_sync)
    ideal_sync_tail = 1 / (1 / g_batch + 1 / t_sync)
    return {
        "G": g,
        "G_lockstep": g_batch,
        "long_tail_penalty": g / g_batch,
        "T": t_async,
        "T_sync": t_sync,
        "ideal_async": ideal_async,
        "ideal_sync": ideal_sync,
        "ideal_sync_with_tail": ideal_sync_tail,
        "ideal_speedup": ideal_async / ideal_sync,
        "ideal_speedup_with_tail": ideal_async / ideal_sync_tail,
        "overlap_efficiency": run["samples_per_s"] / ideal_async,
        "cpu_share_engine_vs_isolated": engine_share,
        "cpu_share_trainer_vs_isolated": trainer_share,
        "ideal_async_cpu_adjusted": ideal_async_cpu,
        "overlap_efficiency_cpu_adjusted": run["samples_per_s"] / ideal_async_cpu,
        "sync_efficiency": sync["samples_per_s"] / ideal_sync_tail,
        "speedup": run["samples_per_s"] / sync["samples_per_s"],
        "training_slowdown_under_overlap": run["train_s_per_step"] / train_s,
    }


def check_bars(bounds: dict[str, float], run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The targets: overlap efficiency >= 0.9, speedup within 10% of the ideal ratio, trainer idle < 10%
    when generation keeps up (G >= T)."""
    speedup_error = bounds["speedup"] / bounds["ideal_speedup_with_tail"] - 1
    bars = {
        "overlap_efficiency>=0.9": {
            "value": bounds["overlap_efficiency"],
            "pass": bounds["overlap_efficiency"] >= 0.9,
        },
        "speedup_within_10%_of_ideal": {"value": speedup_error, "pass": abs(speedup_error) <= 0.1},
    }
    if bounds["G"] >= bounds["T"]:
        idle = run["trainer_idle_ratio"]
        bars["trainer_idle<0.1_when_G>=T"] = {"value": idle, "pass": idle < 0.1}
    return bars


# ------------------------------------------------------------------------------------------------ components


def _bench_group(index: int, n: int, length: int) -> TrajectoryGroup:
    rng = np.random.default_rng(index)
    samples = [
        Sample(
            prompt_ids=list(range(19)),
            response_ids=rng.integers(0, 320, length).tolist(),
            response_logprobs=(-rng.random(length)).tolist(),
            reward=0.5,
            finish_reason="length",
            min_version=0,
            max_version=0,
        )
        for _ in range(n)
    ]
    datum = {
        "prompt": [{"role": "user", "content": "What is 1+2?"}],
        "data_source": DATA_SOURCE,
        "reward_model": {"ground_truth": "3"},
        "extra_info": {"index": index, "max_new_tokens": length},
    }
    return TrajectoryGroup(uid=str(index), epoch=0, datum=datum, samples=samples, launch_version=0)


def bench_queue(settings: BenchSettings, task: Task) -> dict[str, Any]:
    """Groups through Ray: put (pipelined, as concurrent rollouts do) then get in training batches, for the
    MessageQueue and for a plain ``ray.util.queue.Queue`` on the same groups."""
    import ray
    from ray.util.queue import Queue

    from rllm_fully_async.message_queue import MessageQueue

    count = 32 if settings.smoke else 512
    batch, window = settings.groups_per_step, 16
    groups = [_bench_group(i, settings.n, task.lengths[i % len(task.lengths)]) for i in range(count)]
    payloads = [pickle.dumps(g) for g in groups]
    start = time.perf_counter()
    for g in groups:
        pickle.loads(pickle.dumps(g))
    serialize_s = (time.perf_counter() - start) / count
    group_bytes = float(np.mean([len(p) for p in payloads]))

    def through(put, get) -> dict[str, float]:
        pending, start = [], time.perf_counter()
        for g in groups:
            pending.append(put(g))
            if len(pending) >= window:
                ray.get(pending.pop(0))
        ray.get(pending)
        put_s = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(count // batch):
            ray.get(get(batch))
        get_s = time.perf_counter() - start
        rate = count / (put_s + get_s)
        return {
            "groups_per_s": rate,
            "mb_per_s": rate * group_bytes / 1e6,
            "put_ms": put_s / count * 1e3,
            "get_batch_ms": get_s / (count // batch) * 1e3,
        }

    queue = MessageQueue.options(num_cpus=0).remote(count)
    ray.get([queue.register_drawn.remote(g.uid, g.epoch, g.datum) for g in groups])  # the ledger needs them
    ours = through(queue.put.remote, lambda k: queue.get_batch.remote(k, 0))
    ray.kill(queue)
    plain = Queue(maxsize=count, actor_options={"num_cpus": 0})
    baseline = through(plain.actor.put.remote, plain.actor.get_nowait_batch.remote)
    plain.shutdown()
    return {
        "groups": count,
        "group_bytes": group_bytes,
        "serialize_roundtrip_ms": serialize_s * 1e3,
        "message_queue": ours,
        "ray_queue": baseline,
    }


def _gloo_receiver(port: int, nbytes: int, repeats: int, cores: list[int]) -> None:
    import torch

    from rllm_fully_async.weight_update_group import destroy_weight_update_group, init_weight_update_group

    pin_this_process(cores)
    group = init_weight_update_group("127.0.0.1", port, 1, 2, "bench_raw", backend="gloo", timeout_s=120)
    buffer = torch.empty(nbytes, dtype=torch.uint8)
    for _ in range(repeats + 1):
        torch.distributed.broadcast(buffer, src=0, group=group)
    torch.distributed.barrier(group=group)
    destroy_weight_update_group(group)


def raw_gloo_broadcast_s(nbytes: int, placement: Placement, repeats: int = 3) -> float:
    """Seconds per broadcast of one flat ``nbytes`` buffer to another process over gloo (the bandwidth bound)."""
    import multiprocessing as mp
    import socket

    import torch

    from rllm_fully_async.weight_update_group import destroy_weight_update_group, init_weight_update_group

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    peer = mp.get_context("spawn").Process(
        target=_gloo_receiver, args=(port, nbytes, repeats, placement.gen_cores)
    )
    peer.start()
    try:
        group = init_weight_update_group("127.0.0.1", port, 0, 2, "bench_raw", backend="gloo", timeout_s=120)
        buffer = torch.zeros(nbytes, dtype=torch.uint8)
        torch.distributed.broadcast(buffer, src=0, group=group)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            torch.distributed.broadcast(buffer, src=0, group=group)
        torch.distributed.barrier(group=group)
        seconds = (time.perf_counter() - start) / repeats
        destroy_weight_update_group(group)
    finally:
        peer.join(timeout=60)
        if peer.is_alive():
            peer.kill()
    return seconds


def bench_weight_sync(settings: BenchSettings, placement: Placement) -> dict[str, Any]:
    """ParamSync (the production path: FSDP worker -> gloo -> engine) against the raw bound, per model size."""
    from hydra import compose, initialize_config_dir

    from rllm_fully_async import toy
    from rllm_fully_async.param_sync import ClientGate, ParamSync
    from rllm_fully_async.paths import config_dir
    from rllm_fully_async.workers import create_actor_worker_group, shutdown_worker_group

    rows = []
    for shape in settings.weight_sync_shapes:
        model = toy.build(
            Path(settings.out) / "weight_sync_models" / "x".join(map(str, shape)),
            seed=0,
            **_model_shape(*shape),
        )
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
            cfg = compose(
                "fully_async_ppo_cpu",
                overrides=[
                    f"actor_rollout_ref.model.path={model}",
                    "actor_rollout_ref.actor.optim.total_training_steps=1",
                ],
            )
        engine = Engine(str(model), placement.gen_cores)
        wg = gate = sync = None
        try:
            wg = create_actor_worker_group(cfg, role="actor", num_workers=1)
            wg.init_model()
            pin_actors(wg.workers, placement.train_cores)
            gate = ClientGate([engine.url])
            sync = ParamSync(
                wg,
                [engine.url],
                gate,
                backend="gloo",
                bucket_size_mb=cfg.async_training.weight_sync_bucket_mb,
                timeout_s=300,
            )
            sync.init_group()
            stats = [sync.sync(version) for version in (1, 2, 3)]
        finally:
            if sync is not None:
                sync.close()
            if gate is not None:
                gate.close()
            if wg is not None:
                shutdown_worker_group(wg)
            engine.stop()
        nbytes = stats[-1].bytes
        transfer = float(np.median([s.transfer_s for s in stats]))
        raw = raw_gloo_broadcast_s(nbytes, placement)
        params = nbytes / 4  # float32
        rows.append(
            {
                "shape": list(shape),
                "params": params,
                "bytes": nbytes,
                "transfer_s": transfer,
                "total_s": float(np.median([s.total_s for s in stats])),
                "pause_s": float(np.median([s.pause_s for s in stats])),
                "resume_s": float(np.median([s.resume_s for s in stats])),
                "raw_gloo_s": raw,
                "raw_gloo_gb_per_s": nbytes / raw / 1e9,
                "fraction_of_bound": raw / transfer,
            }
        )
        log(f"weight sync {params / 1e6:.2f}M params: transfer {transfer:.3f}s, raw gloo {raw:.3f}s")
    return {
        "backend": "gloo",
        "sizes": rows,
        "nccl": "GPU-only; not measured (no CUDA device here). On a GPU machine ParamSync uses NCCL.",
    }


# ------------------------------------------------------------------------------------------------ report


def render_table(result: dict[str, Any]) -> str:
    b = result["bounds"]
    runs = result["runs"]
    lines = [
        "",
        "=== rllm_fully_async benchmark ===",
        f"machine: {result['machine']['cpus']} cores, gen cores {result['placement']['gen_cores']}, train cores "
        f"{result['placement']['train_cores']}, load avg at start {result['machine']['loadavg_start']}",
        f"G  generation-only       {b['G']:8.2f} samples/s   (lock-step with long tail {b['G_lockstep']:.2f}: "
        f"penalty x{b['long_tail_penalty']:.2f})",
        f"T  training-only         {b['T']:8.2f} samples/s   (sync baseline, weight sync every step: {b['T_sync']:.2f})",
        f"ideal fully-async  min(G,T)        {b['ideal_async']:8.2f}",
        f"ideal synchronous  1/(1/G+1/T)     {b['ideal_sync']:8.2f}   with measured tail {b['ideal_sync_with_tail']:.2f}",
        f"sync  measured                     {runs['sync']['samples_per_s']:8.2f} samples/s",
        f"async measured                     {runs['async']['samples_per_s']:8.2f} samples/s",
        f"speedup async/sync                 {b['speedup']:8.2f}   ideal {b['ideal_speedup']:.2f} "
        f"(with tail {b['ideal_speedup_with_tail']:.2f})",
        f"overlap efficiency async/min(G,T)  {b['overlap_efficiency']:8.3f}   (adjusted for CPU taken by other "
        f"processes: {b['overlap_efficiency_cpu_adjusted']:.3f})",
        "",
        "where the time goes (steady state)",
        _where_table(runs),
        "",
    ]
    sweeps = result.get("sweeps") or {}
    if sweeps:
        lines.append(f"{'sweep':<22}{'samples/s':>10}{'eff.':>7}{'idle':>7}{'stale':>7}{'reward':>15}")
        for name, labels in sweeps.items():
            for label in labels:
                r = runs[label]
                stale = _mean_staleness(r["staleness_hist"])
                lines.append(
                    f"{label:<22}{r['samples_per_s']:>10.2f}{r['overlap_efficiency']:>7.2f}"
                    f"{r['trainer_idle_ratio']:>7.2f}{stale:>7.2f}"
                    f"{r['reward_first']:>7.3f}->{r['reward_last']:.3f}"
                )
        lines.append("")
    comp = result.get("components") or {}
    if "queue" in comp:
        q = comp["queue"]
        lines.append(
            f"queue ({q['group_bytes'] / 1e3:.1f} KB/group, pickle round trip {q['serialize_roundtrip_ms']:.3f} ms): "
            f"MessageQueue {q['message_queue']['groups_per_s']:.0f} groups/s "
            f"({q['message_queue']['mb_per_s']:.1f} MB/s), ray Queue {q['ray_queue']['groups_per_s']:.0f} "
            f"groups/s ({q['ray_queue']['mb_per_s']:.1f} MB/s)"
        )
    if "weight_sync" in comp:
        lines.append("weight sync (gloo): params  transfer_s  raw_gloo_s  fraction_of_bound")
        for row in comp["weight_sync"]["sizes"]:
            lines.append(
                f"   {row['params'] / 1e6:10.2f}M {row['transfer_s']:10.3f} {row['raw_gloo_s']:11.3f} "
                f"{row['fraction_of_bound']:10.2f}"
            )
    lines.append(
        "bars: "
        + ", ".join(
            f"{k} {'PASS' if v['pass'] else 'FAIL'} ({v['value']:.3f})" for k, v in result["bars"].items()
        )
    )
    return "\n".join(lines)


def _mean_staleness(hist: dict[str, int]) -> float:
    total = sum(hist.values())
    return sum(int(k) * v for k, v in hist.items()) / total if total else 0.0


def _where_table(runs: dict[str, Any]) -> str:
    rows = [
        f"{'':<8}{'trainer wait':>13}{'train':>7}{'sync':>6}{'other':>7}{'rollout idle':>13}{'engine busy':>12}"
        f"{'sync pause/xfer/resume s':>26}{'queue put/get s':>17}"
    ]
    for name in ("sync", "async"):
        r = runs[name]
        s, p, q = r["trainer_share"], r["param_sync"], r["queue"]
        rows.append(
            f"{name:<8}{s['waiting']:>13.3f}{s['training']:>7.3f}{s['syncing']:>6.3f}{s['other']:>7.3f}"
            f"{r['rollout_idle_ratio']:>13.3f}{r['engine_busy_fraction']:>12.3f}"
            f"{p['pause_s_mean']:>10.3f}/{p['transfer_s_mean']:.3f}/{p['resume_s_mean']:.3f}"
            f"{q['executor_put_s_mean']:>10.4f}/{q['get_wait_s_mean']:.3f}"
        )
    for name in ("sync", "async"):
        cpu = runs[name]["cpu"]
        rows.append(
            f"{name} CPU, cores used (share of runnable time on a CPU): "
            + ", ".join(f"{k} {v['cores']:.2f} ({v['cpu_share_when_runnable']:.0%})" for k, v in cpu.items())
        )
    return "\n".join(rows)


def plot(result: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = [_plot_timeline(result, out, plt)]
    if result.get("sweeps"):
        written.append(_plot_sweeps(result, out, plt))
    return written


def _plot_timeline(result: dict[str, Any], out: Path, plt) -> str:
    colors = {"wait": "#d9d9d9", "train": "#1f77b4", "sync": "#d62728"}
    fig, axes = plt.subplots(2, 1, figsize=(10, 4.2), sharex=True)
    for ax, name in zip(axes, ("sync", "async"), strict=True):
        run = result["runs"][name]
        t0 = run["fit_started"]
        for kind, _step, start, end in run["spans"]:
            ax.broken_barh([(start - t0, end - start)], (1.1, 0.8), color=colors[kind])
        for b0, b1, busy, _tps in run["engine_bins"]:
            ax.broken_barh([(b0 - t0, b1 - b0)], (0.1, 0.8), color="#2ca02c" if busy else "#f0f0f0")
        ax.set_yticks([0.5, 1.5], ["engine", "trainer"])
        ax.set_ylim(0, 2)
        ax.set_title(
            f"{name}: {run['samples_per_s']:.1f} samples/s, trainer waiting {run['trainer_idle_ratio']:.0%}, "
            f"engine busy {run['engine_busy_fraction']:.0%}",
            fontsize=9,
        )
    axes[-1].set_xlabel("seconds since training started")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in (*colors.values(), "#2ca02c")]
    fig.legend(
        handles,
        ["trainer waits for data", "trainer trains", "weight sync", "engine generates"],
        loc="lower center",
        ncol=4,
        fontsize=8,
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path = out / "timeline.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)


def _plot_sweeps(result: dict[str, Any], out: Path, plt) -> str:
    sweeps = result["sweeps"]
    runs, bounds = result["runs"], result["bounds"]
    fig, axes = plt.subplots(1, len(sweeps), figsize=(4 * len(sweeps), 3.4), squeeze=False)
    for ax, (name, labels) in zip(axes[0], sweeps.items(), strict=True):
        xs = [_sweep_x(runs[label], name) for label in labels]
        ys = [runs[label]["samples_per_s"] for label in labels]
        ax.bar(range(len(xs)), ys, color="#1f77b4")
        ax.axhline(bounds["ideal_async"], color="#2ca02c", ls="--", lw=1, label="ideal async min(G,T)")
        ax.axhline(runs["sync"]["samples_per_s"], color="#d62728", ls=":", lw=1.5, label="sync measured")
        ax.set_xticks(range(len(xs)), xs)
        ax.set_xlabel(
            {
                "staleness": "staleness_threshold",
                "trigger": "trigger_parameter_sync_step",
                "partial": "partial_rollout",
            }[name]
        )
        ax.set_ylabel("samples/s (steady state)")
        twin = ax.twinx()
        twin.plot(range(len(xs)), [runs[label]["reward_last"] for label in labels], "o-", color="#ff7f0e")
        twin.set_ylabel("final reward", color="#ff7f0e")
        twin.set_ylim(0, 1)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle("throughput (bars) and final reward (line) vs async settings", fontsize=10)
    fig.tight_layout()
    path = out / "throughput_vs_staleness.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)


def _sweep_x(run: dict[str, Any], name: str) -> str:
    if name == "staleness":
        return f"{run['staleness_threshold']:g}"
    if name == "trigger":
        return str(run["trigger_parameter_sync_step"])
    return "on" if run["partial_rollout"] else "off"


# ------------------------------------------------------------------------------------------------ main


def sweep_plan(settings: BenchSettings) -> dict[str, list[tuple[str, float, int, bool]]]:
    """Sweep name -> runs ``(label, staleness, trigger, partial)``; each varies one key from the default."""
    s, k, p = settings.staleness_threshold, settings.trigger_parameter_sync_step, settings.partial_rollout
    plan = {
        "staleness": [(f"staleness={x:g}", x, k, p) for x in STALENESS_SWEEP],
        "trigger": [(f"trigger={x}", s, x, p) for x in TRIGGER_SWEEP],
        "partial": [(f"partial={'on' if x else 'off'}", s, k, x) for x in (True, False)],
    }
    return {name: plan[name] for name in settings.sweeps}


def run_benchmark(settings: BenchSettings) -> dict[str, Any]:
    """Everything, in one Ray session with one engine; returns the result that goes into bench.json."""
    import ray

    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    placement = Placement.choose(settings.gen_cores, settings.train_cores)
    loadavg_start = os.getloadavg()
    task = build_task(settings)
    # Ray's daemons and every actor start from this process's mask: the training cores. The engine is moved
    # to the generation cores at once, the executor and the queue when they exist. Both start together.
    pin_this_process(placement.train_cores)
    with ThreadPoolExecutor(1) as pool:
        starting = pool.submit(Engine, task.model_path, placement.gen_cores)
        ray.init(
            num_cpus=max(4, len(placement.train_cores)),
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}},
        )
        engine = starting.result()
    log(f"engine at {engine.url} and ray up")
    result: dict[str, Any] = {
        "settings": {**asdict(settings), "sweeps": list(settings.sweeps)},
        "machine": {"cpus": os.cpu_count(), "loadavg_start": loadavg_start, "python": sys.version.split()[0]},
        "placement": asdict(placement),
        "task": {
            "lengths_mean": float(np.mean(task.lengths)),
            "lengths_p50": float(np.median(task.lengths)),
            "lengths_p90": float(np.percentile(task.lengths, 90)),
            "lengths_max": max(task.lengths),
        },
        "runs": {},
    }
    try:
        result["generation_only"] = measure_generation(settings, task, engine, placement)
        runs = result["runs"]
        runs["sync"] = run_pipeline(settings, task, engine, placement, "sync", ["async_training.mode=sync"])
        default = async_overrides(
            settings.staleness_threshold, settings.trigger_parameter_sync_step, settings.partial_rollout
        )
        runs["async"] = run_pipeline(settings, task, engine, placement, "async", default)
        result["sweeps"] = {}
        for name, plan in sweep_plan(settings).items():
            result["sweeps"][name] = []
            for label, staleness, trigger, partial_rollout in plan:
                same_as_default = (staleness, trigger, partial_rollout) == (
                    settings.staleness_threshold,
                    settings.trigger_parameter_sync_step,
                    settings.partial_rollout,
                )
                if label not in runs:
                    runs[label] = (
                        runs["async"]
                        if same_as_default
                        else run_pipeline(
                            settings,
                            task,
                            engine,
                            placement,
                            label,
                            async_overrides(staleness, trigger, partial_rollout),
                        )
                    )
                result["sweeps"][name].append(label)
        for name in ("sync", "async"):
            runs[name]["engine_bins"] = engine.monitor.bins(
                runs[name]["fit_started"], runs[name]["per_step"][-1]["end"]
            )
        result["bounds"] = ideal_bounds(result["generation_only"], runs["sync"], runs["async"])
        for label, run in runs.items():
            if run["mode"] == "async":
                run["overlap_efficiency"] = ideal_bounds(result["generation_only"], runs["sync"], run)[
                    "overlap_efficiency"
                ]
        result["bars"] = check_bars(result["bounds"], runs["async"])
        result["components"] = {}
        if settings.components:
            result["components"]["queue"] = bench_queue(settings, task)
            if settings.weight_sync_shapes:
                result["components"]["weight_sync"] = bench_weight_sync(settings, placement)
    finally:
        engine.stop()
        ray.shutdown()
    result["machine"]["loadavg_end"] = os.getloadavg()
    return result


def parse_args(argv: Sequence[str] | None = None) -> BenchSettings:
    defaults = BenchSettings()
    p = argparse.ArgumentParser(prog="python -m rllm_fully_async.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=defaults.out, help="directory for bench.json, plots and run files")
    p.add_argument(
        "--smoke", action="store_true", help="tiny sizes, no sweeps: checks the whole path in seconds"
    )
    p.add_argument("--steps", type=int, default=defaults.steps, help="training steps per run")
    p.add_argument("--groups-per-step", type=int, default=defaults.groups_per_step)
    p.add_argument("--n", type=int, default=defaults.n, help="samples per prompt (rollout.n)")
    p.add_argument("--max-concurrency", type=int, default=defaults.max_concurrency)
    p.add_argument(
        "--length-median", type=float, default=defaults.length_median, help="lognormal median tokens"
    )
    p.add_argument(
        "--length-sigma", type=float, default=defaults.length_sigma, help="lognormal sigma (tail weight)"
    )
    p.add_argument("--length-max", type=int, default=defaults.length_max)
    p.add_argument("--hidden-size", type=int, default=defaults.hidden_size, help="toy model width")
    p.add_argument("--num-layers", type=int, default=defaults.num_layers, help="toy model depth")
    p.add_argument("--staleness-threshold", type=float, default=defaults.staleness_threshold)
    p.add_argument("--trigger-parameter-sync-step", type=int, default=defaults.trigger_parameter_sync_step)
    p.add_argument("--no-partial-rollout", action="store_true")
    p.add_argument(
        "--sweeps", default=",".join(SWEEPS), help=f"comma-separated subset of {','.join(SWEEPS)}, or 'none'"
    )
    p.add_argument("--no-components", action="store_true", help="skip the queue and weight-sync benchmarks")
    p.add_argument(
        "--gen-cores", default="", help="e.g. 0 or 0,1 (default: the first half of the available cores)"
    )
    p.add_argument("--train-cores", default="", help="e.g. 1 (default: the second half)")
    args = p.parse_args(argv)
    sweeps = () if args.sweeps in ("", "none") else tuple(s.strip() for s in args.sweeps.split(","))
    unknown = sorted(set(sweeps) - set(SWEEPS))
    if unknown:
        p.error(f"--sweeps: unknown {unknown}; choose from {list(SWEEPS)} or 'none'")
    cores = {
        name: tuple(int(c) for c in value.split(",") if c.strip())
        for name, value in (("gen", args.gen_cores), ("train", args.train_cores))
    }
    if args.smoke:
        settings = smoke_settings(args.out)
        settings.components = not args.no_components
    else:
        settings = BenchSettings(
            out=args.out,
            steps=args.steps,
            groups_per_step=args.groups_per_step,
            n=args.n,
            max_concurrency=args.max_concurrency,
            length_median=args.length_median,
            length_sigma=args.length_sigma,
            length_max=args.length_max,
            hidden_size=args.hidden_size,
            num_layers=args.num_layers,
            staleness_threshold=args.staleness_threshold,
            trigger_parameter_sync_step=args.trigger_parameter_sync_step,
            partial_rollout=not args.no_partial_rollout,
            sweeps=sweeps,
            components=not args.no_components,
        )
    settings.gen_cores, settings.train_cores = cores["gen"], cores["train"]
    if settings.steps < 2:
        p.error("--steps must be at least 2 (throughput is measured after the first step)")
    return settings


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    settings = parse_args(argv)
    # A terminated benchmark still stops its engine and Ray session (the finally blocks run on SystemExit).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = time.time()
    result = run_benchmark(settings)
    result["wall_s"] = time.time() - started
    out = Path(settings.out)
    result["plots"] = plot(result, out)
    (out / "bench.json").write_text(json.dumps(result, indent=1, default=float))
    print(render_table(result))
    print(f"\nwrote {out / 'bench.json'} and {', '.join(result['plots'])} in {result['wall_s']:.0f} s")
    return result


if __name__ == "__main__":
    main()
