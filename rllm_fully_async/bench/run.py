# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Benchmarks: fully-async against the synchronous baseline, against the ideal overlap bound, and the
costs that eat into it.

    python -m rllm_fully_async.bench [--out DIR] [--sweeps staleness,trigger,partial|none] [--no-components]
    python -m rllm_fully_async.bench --smoke    # every path at toy sizes, in about a minute

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
import functools
import json
import math
import os
import pickle
import signal
import string
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from rllm_fully_async.rollout.client import parse_load
from rllm_fully_async.rollout.rollout_fn import single_turn_chat
from rllm_fully_async.rollout.trajectory import Sample, TrajectoryGroup

# Sweep values; verl's published ablation varies the same keys.
STALENESS_SWEEP = (0.0, 0.1, 0.3, 0.5, 1.0)
TRIGGER_SWEEP = (1, 2, 4)
SWEEPS = ("staleness", "trigger", "partial")
# Weight-sync model shapes, 0.16M to 70M parameters: (hidden, layers, intermediate, heads, kv heads).
WEIGHT_SYNC_SHAPES = ((64, 2, 256, 4, 2), (128, 4, 512, 4, 2), (256, 4, 1024, 8, 4), (512, 4, 2048, 8, 4),
                      (768, 8, 3072, 12, 4))  # fmt: skip
SYNC_METRICS = {"pause": "async/param_sync_pause_s", "transfer": "async/param_sync_transfer_s",
                "resume": "async/param_sync_resume_s", "total": "async/param_sync_s"}  # fmt: skip
_STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"[bench {time.monotonic() - _STARTED:6.1f}s] {message}", flush=True)


# ------------------------------------------------------------------------------------------------ settings


@dataclass
class BenchSettings:
    """One benchmark invocation. Every field but the weight-sync shapes is a command-line flag."""

    out: str = "bench_results"
    steps: int = 24  # training steps per run
    groups_per_step: int = 8  # prompts per step (ppo_mini_batch_size)
    n: int = 8  # samples per prompt (rollout.n)
    max_concurrency: int = 64  # samples in flight
    length_median: float = 32.0  # lognormal response lengths (tokens) ...
    length_sigma: float = 1.0  # ... and their tail weight
    length_min: int = 4
    length_max: int = 256
    hidden_size: int = 128  # the toy model's width and depth
    num_layers: int = 4
    staleness_threshold: float = 0.5  # the fully-async run's settings
    trigger_parameter_sync_step: int = 4
    partial_rollout: bool = True
    sweeps: tuple[str, ...] = SWEEPS
    components: bool = True
    weight_sync_shapes: tuple[tuple[int, ...], ...] = WEIGHT_SYNC_SHAPES
    gen_phase_batches: int = 8  # batches generated to measure G
    gen_cores: tuple[int, ...] = ()  # default: the first half of the available cores
    train_cores: tuple[int, ...] = ()  # default: the second half
    seed: int = 1
    smoke: bool = False
    model_path: str = ""  # default: the toy model at hidden_size x num_layers
    config_name: str = "fully_async_ppo_cpu"  # the config every run composes
    engine_url: str = ""  # default: start the embedded CPU engine on the generation cores
    overrides: tuple[str, ...] = ()  # Hydra overrides for every run

    @property
    def embedded_engine(self) -> bool:
        """The CPU engine on its own cores; otherwise a running server (SGLang on a GPU host), no pinning."""
        return not self.engine_url

    @property
    def samples_per_step(self) -> int:
        return self.groups_per_step * self.n

    @property
    def num_prompts(self) -> int:
        """Dataset rows: the trained ones plus room for what the async runs generate ahead."""
        ahead = math.ceil((1 + max(STALENESS_SWEEP)) * max(TRIGGER_SWEEP)) + 2
        return max(self.steps + ahead, self.gen_phase_batches + 4) * self.groups_per_step


def smoke_settings(out: str, **where: Any) -> BenchSettings:
    """Every path but the weight-sync sizes at the smallest sizes, for CI; ``where`` picks model, engine."""
    return BenchSettings(out=out, steps=2, groups_per_step=2, n=2, max_concurrency=8, length_median=4,
                         length_sigma=0.5, length_max=8, sweeps=(), weight_sync_shapes=(),
                         gen_phase_batches=2, smoke=True, **where)  # fmt: skip


# ------------------------------------------------------------------------------------------------ the task


def long_tail_lengths(count: int, median: float, sigma: float, low: int, high: int, seed: int) -> list[int]:
    """Response lengths shaped like reasoning traces: lognormal (heavy right tail), clipped to [low, high]."""
    raw = median * np.exp(sigma * np.random.default_rng(seed).standard_normal(count))
    return np.clip(np.round(raw), low, high).astype(int).tolist()


def digit_fraction(data_source: str, solution_str: str, ground_truth: str, extra_info: Any = None) -> float:
    """Reward: the fraction of response characters that are digits. Dense and quickly learnable, so a short
    run shows training progress; the benchmark measures speed, the reward only shows that learning happens."""
    return sum(c in string.digits for c in solution_str) / max(1, len(solution_str))


async def long_tail_rollout(client: Any, tokenizer: Any, *, sampling_params: dict, extra_info: dict,
                            reward_fn: Any = None, **row: Any) -> Sample:  # fmt: skip
    """The default single-turn rollout, generating exactly the row's ``max_new_tokens`` (``ignore_eos``),
    scored by :func:`digit_fraction` instead of the configured reward function."""
    params = {**sampling_params, "max_new_tokens": int(extra_info["max_new_tokens"]), "ignore_eos": True}
    return await single_turn_chat(
        client, tokenizer, sampling_params=params, extra_info=extra_info, reward_fn=digit_fraction, **row
    )


@dataclass
class Task:
    model_path: str
    train_file: str
    lengths: list[int]


def model_shape(hidden: int, layers: int, intermediate: int = 0, heads: int = 0, kv_heads: int = 0) -> dict:
    heads = heads or max(4, hidden // 32)
    return {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": intermediate or 4 * hidden,
        "num_key_value_heads": kv_heads or max(1, heads // 2),
    }


def build_task(settings: BenchSettings) -> Task:
    """The toy model at the chosen size and a verl-format dataset whose rows carry their response length."""
    import pandas as pd

    from rllm_fully_async.toy import model as toy_model

    root = Path(settings.out) / "task"
    s = settings
    shape = model_shape(s.hidden_size, s.num_layers)
    model = s.model_path or toy_model.build(root / "model", seed=0, **shape)
    lengths = long_tail_lengths(
        s.num_prompts, s.length_median, s.length_sigma, s.length_min, s.length_max, s.seed
    )
    rows = [
        {
            "data_source": "bench_digits",
            "prompt": [{"role": "user", "content": f"What is {i % 5}+{i // 5 % 5}? Answer with digits."}],
            "reward_model": {"style": "rule", "ground_truth": str(i % 5 + i // 5 % 5)},
            "extra_info": {"index": i, "max_new_tokens": length},
        }
        for i, length in enumerate(lengths)
    ]
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(root / "train.parquet")
    return Task(str(model), str(root / "train.parquet"), lengths)


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
                raise SystemExit("the benchmark needs 2 cores or more: one for generation, one for training")
            gen, train = available[: len(available) // 2], available[len(available) // 2 :]
        if not gen or not train or set(gen) & set(train) or not set(gen) | set(train) <= set(available):
            raise SystemExit(f"--gen-cores {list(gen)} and --train-cores {list(train)} must be non-empty, "
                             f"disjoint and among the cores this process may use, {available}")  # fmt: skip
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


def _pin_actor(actor_self: Any, cores: Sequence[int] | None) -> int:
    return pin_this_process(cores) if cores else os.getpid()


def pin_actors(actors: Sequence[Any], cores: Sequence[int] | None) -> list[int]:
    """Pin Ray actors' processes (any actor, through ``__ray_call__``) unless ``cores`` is None; returns their
    pids."""
    import ray

    cores = list(cores) if cores else None
    return ray.get([a.__ray_call__.remote(_pin_actor, cores) for a in actors], timeout=60)


def cpu_times(pids: dict[str, list[int]]) -> dict[str, dict[str, Any]]:
    """Per role: CPU seconds used so far, and each thread's (run, run-queue wait) nanoseconds.

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
                        threads[tid] = tuple(int(x) for x in f.read().split()[:2])
            except (psutil.Error, OSError):  # the process or the thread has ended
                pass
        out[role] = {"cpu_s": used, "threads": threads}
    return out


def cpu_usage(start: dict[str, dict], end: dict[str, dict], wall: float) -> dict[str, dict[str, float]]:
    """Per role: cores used on average, and the share of its runnable time that its busiest thread (the
    model or training loop) spent on a CPU; 1.0 means that nothing else competed for its core."""
    out = {}
    for role, after in end.items():
        before = start.get(role, {"cpu_s": 0.0, "threads": {}})
        deltas = [(run - before["threads"].get(tid, (0, 0))[0], wait - before["threads"].get(tid, (0, 0))[1])
                  for tid, (run, wait) in after["threads"].items()]  # fmt: skip
        run, wait = max(deltas, default=(0, 0))
        out[role] = {"cores": (after["cpu_s"] - before["cpu_s"]) / wall,
                     "cpu_share_when_runnable": run / (run + wait) if run > 0 else 1.0}  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------------ engine


def _http(url: str, body: dict | None = None, timeout_s: float = 60.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        text = response.read().decode()
    return json.loads(text) if text.strip().startswith(("{", "[")) else text


class EngineMonitor:
    """Samples the engine's work counters five times a second: when it generated, and how fast.

    Reading them (``/get_server_info``) costs the engine well under 1% of a core.
    """

    def __init__(self, url: str, interval_s: float = 0.2) -> None:
        self.url = url
        self.interval_s = interval_s
        self.samples: list[tuple[float, int, int]] = []  # (time, forward passes, generated tokens)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="engine-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                state = _http(f"{self.url}/get_server_info", timeout_s=5)["internal_states"][0]
            except OSError:
                continue
            if "forward_passes" not in state:  # a server without the CPU engine's work counters
                return
            self.samples.append((time.time(), int(state["forward_passes"]), int(state["generated_tokens"])))

    def bins(self, start: float, end: float) -> list[tuple[float, float, bool, float]]:
        """``(t0, t1, generating, tokens/s)`` for each sampling interval within [start, end]."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        pairs = zip(inside, inside[1:], strict=False)
        return [(t0, t1, f1 > f0, (g1 - g0) / (t1 - t0)) for (t0, f0, g0), (t1, f1, g1) in pairs if t1 > t0]

    def busy_fraction(self, start: float, end: float) -> float:
        bins = self.bins(start, end)
        total = sum(t1 - t0 for t0, t1, _, _ in bins)
        return sum(t1 - t0 for t0, t1, busy, _ in bins if busy) / total if total else float("nan")


class Engine:
    """The rollout server every run of one invocation shares: the embedded CPU engine on the generation
    cores, or a server already running at a URL (SGLang or its router on a GPU host)."""

    def __init__(self, url: str, model_path: str, process: Any = None) -> None:
        self.url, self.model_path, self.process = url, model_path, process
        self.pids = [process._proc.pid] if process is not None else []  # for CPU accounting
        self.monitor = EngineMonitor(url)

    @classmethod
    def start_on(cls, cores: Sequence[int], model_path: str) -> Engine:
        """Start the CPU engine on ``cores``; the calling thread returns to its own cores afterwards."""
        from rllm_fully_async.servers.rollout_servers import CpuEngineProcess

        own = os.sched_getaffinity(0)
        os.sched_setaffinity(0, cores)  # this thread only; the engine process inherits it and loads there
        try:
            process = CpuEngineProcess(model_path, num_threads=len(cores)).start(timeout_s=180)
        finally:
            os.sched_setaffinity(0, own)
        pin_threads(process._proc.pid, cores)
        return cls(process.url, model_path, process)

    def reset(self, timeout_s: float = 120.0) -> None:
        """Initial weights, version 0 and nothing in flight, so that every run starts alike."""
        _http(f"{self.url}/continue_generation", {})
        _http(f"{self.url}/abort_request", {"abort_all": True})
        deadline = time.monotonic() + timeout_s
        while parse_load(_http(f"{self.url}/get_load")) > 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the engine at {self.url} did not drain within {timeout_s} s")
            time.sleep(0.1)
        _http(f"{self.url}/update_weights_from_disk", {"model_path": self.model_path, "weight_version": "0"})

    def stop(self) -> None:
        self.monitor.stop()
        if self.process is not None:
            self.process.stop()


# ------------------------------------------------------------------------------------------------ runs


@dataclass
class RunRecord:
    """What the instrumented trainer saw: its spans (wait, train, sync), per-step metrics, CPU per role."""

    pids: dict[str, list[int]] = field(default_factory=dict)
    spans: list[tuple[str, int, float, float]] = field(default_factory=list)  # (kind, step, start, end)
    steps: list[dict[str, Any]] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0
    cpu_start: dict[str, dict] = field(default_factory=dict)
    cpu_end: dict[str, dict] = field(default_factory=dict)


@functools.cache
def timed_trainer_class() -> type:
    """The trainer class the benchmark runs; built on first use, so that importing this module (which the
    rollout executor does for :func:`long_tail_rollout`) does not import verl's trainer."""
    from rllm_fully_async.trainer.fully_async_trainer import FullyAsyncTrainer

    class TimedTrainer(FullyAsyncTrainer):
        """The production trainer, recording when it waits for data, trains and syncs weights.

        With a placement it also pins its processes: the training workers to the training cores, the rollout
        executor and the queue to the generation cores (the driver already runs on the training cores).
        """

        def __init__(self, *args: Any, record: RunRecord, placement: Placement | None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.record = record
            train, gen = (placement.train_cores, placement.gen_cores) if placement else (None, None)
            record.pids["trainer worker"] = pin_actors(self.actor_rollout_wg.workers, train)
            record.pids["rollout executor"] = pin_actors([self.executor], gen)
            record.pids["message queue"] = pin_actors([self.queue], gen)
            record.pids["driver"] = [os.getpid()]

        def fit(self):
            self.record.cpu_start, self.record.started = cpu_times(self.record.pids), time.time()
            try:
                return super().fit()
            finally:
                self.record.cpu_end, self.record.ended = cpu_times(self.record.pids), time.time()

        @contextmanager
        def _span(self, kind: str):
            start = time.time()
            try:
                yield
            finally:  # a sync comes after global_steps counted its step; waiting and training before
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

    return TimedTrainer


def compose(config_name: str, overrides: Sequence[str]) -> Any:
    """One of the project's Hydra configs with ``overrides``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from rllm_fully_async.paths import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        return hydra_compose(config_name, overrides=list(overrides))


def compose_config(
    settings: BenchSettings, task: Task, engine_url: str, label: str, overrides: Sequence[str]
):
    """The CPU default config with the benchmark's task and the shared engine, plus ``overrides``."""
    name = "".join(c if c.isalnum() else "_" for c in label)
    s = settings
    return compose(s.config_name, [
        f"actor_rollout_ref.model.path={task.model_path}", f"data.train_files={task.train_file}",
        "data.val_files=null", f"data.max_response_length={s.length_max}", f"data.seed={s.seed}",
        f"actor_rollout_ref.rollout.n={s.n}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={s.groups_per_step}",
        "actor_rollout_ref.actor.ppo_epochs=1", "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=4096",
        "trainer.total_epochs=1", "trainer.test_freq=-1",
        f"async_training.max_concurrency={s.max_concurrency}",
        "async_training.rollout_fn=rllm_fully_async.bench.run:long_tail_rollout",
        f"rollout_servers.urls=[{engine_url}]", f"trainer.total_training_steps={s.steps}",
        f"trainer.default_local_dir={Path(s.out).resolve() / 'runs' / name}",
        "trainer.resume_mode=disable",
        "trainer.logger=[]", f"trainer.experiment_name=bench_{name}", *s.overrides, *overrides,
    ])  # fmt: skip


def async_overrides(staleness: float, trigger: int, partial_rollout: bool) -> list[str]:
    return ["async_training.mode=async", f"async_training.staleness_threshold={staleness}",
            f"async_training.trigger_parameter_sync_step={trigger}",
            f"async_training.partial_rollout={partial_rollout}"]  # fmt: skip


def run_pipeline(settings: BenchSettings, task: Task, engine: Engine, placement: Placement | None, label: str,
                 overrides: Sequence[str]) -> dict[str, Any]:  # fmt: skip
    """One complete training run through ``rllm_fully_async.main.run``, instrumented."""
    from rllm_fully_async.main import run

    cfg = compose_config(settings, task, engine.url, label, overrides)
    engine.reset()
    record = RunRecord(pids={"engine": engine.pids})
    load_before = os.getloadavg()
    log(f"run {label} ...")
    trainer = partial(timed_trainer_class(), record=record, placement=placement)
    summary = run(cfg, trainer_factory=trainer)
    result = analyse_run(label, cfg.async_training, record, summary.final, engine.monitor)
    result["loadavg"] = {"before": load_before, "after": os.getloadavg()}
    log(f"run {label}: {result['samples_per_s']:.2f} samples/s")
    return result


def analyse_run(label: str, a: Any, record: RunRecord, final: dict, monitor: EngineMonitor) -> dict[str, Any]:
    """Throughput in the steady state (from the end of step 1, when the pipeline is full, to the end of the
    last step), where the trainer's time went, and the pipeline's own accounting for one run."""
    steps: dict[int, dict[str, float]] = {}
    for kind, step, start, end in record.spans:
        entry = steps.setdefault(step, {"wait_s": 0.0, "train_s": 0.0, "sync_s": 0.0, "end": 0.0})
        entry[f"{kind}_s"] += end - start
        entry["end"] = max(entry["end"], end)
    per_step = [steps[k] for k in sorted(steps)]
    for entry, m in zip(per_step, record.steps, strict=True):
        entry.update(samples=int(m["async/batch_samples"]), reward=float(m["reward/mean"]),
                     tokens=int(m["async/batch_response_tokens"]))  # fmt: skip
    start, end = per_step[0]["end"], per_step[-1]["end"]
    steady, wall = per_step[1:], end - start
    share = {kind: sum(s[f"{kind}_s"] for s in steady) / wall for kind in ("wait", "train", "sync")}
    syncs = [m for m in record.steps if "async/param_sync_s" in m]
    staleness: dict[str, int] = {}
    for m in record.steps:
        for key, count in m.items():
            if key.startswith("async/staleness_hist/"):
                staleness[key.rsplit("/", 1)[1]] = staleness.get(key.rsplit("/", 1)[1], 0) + int(count)
    rewards = [s["reward"] for s in per_step]
    return {
        "label": label, "mode": a.mode, "staleness_threshold": float(a.staleness_threshold),
        "trigger_parameter_sync_step": int(a.trigger_parameter_sync_step),
        "partial_rollout": bool(a.partial_rollout),
        "steps": len(per_step), "samples_per_step": per_step[0]["samples"],
        "samples_per_s": sum(s["samples"] for s in steady) / wall,
        "samples_per_s_whole_run": sum(s["samples"] for s in per_step) / (end - record.started),
        "response_tokens": sum(s["tokens"] for s in per_step), "steady_wall_s": wall,
        "tokens_per_sample": sum(s["tokens"] for s in steady) / sum(s["samples"] for s in steady),
        "trainer_share": {"waiting": share["wait"], "training": share["train"], "syncing": share["sync"],
                          "other": 1 - sum(share.values())},
        "trainer_idle_ratio": share["wait"],
        "train_s_per_step": share["train"] * wall / len(steady),
        "wait_s_per_step": share["wait"] * wall / len(steady),
        "rollout_idle_ratio": final.get("rollout/idle_ratio"),
        "rollout_paused_s": final.get("rollout/paused_s"),
        "rollout_throttled_s": final.get("rollout/admission/throttled_s"),
        "engine_busy_fraction": monitor.busy_fraction(start, end),
        "param_sync": {"count": len(syncs), **{f"{part}_s_mean": float(np.mean([m[key] for m in syncs]))
                                               if syncs else 0.0 for part, key in SYNC_METRICS.items()}},
        "queue": {"put_wait_s_mean": final.get("queue/put_wait_s_mean"),
                  "get_wait_s_mean": final.get("queue/get_wait_s_mean"),
                  "executor_put_s_mean": final["rollout/put_wait_s"] / max(1, final["rollout/groups_done"]),
                  "max_depth": final.get("queue/max_depth")},
        "staleness_hist": dict(sorted(staleness.items(), key=lambda kv: int(kv[0]))),
        "partial_rollout_fraction": final.get("rollout/partial_rollout_fraction"),
        "reward_first": float(np.mean(rewards[:3])), "reward_last": float(np.mean(rewards[-3:])),
        "cpu": cpu_usage(record.cpu_start, record.cpu_end, record.ended - record.started),
        "per_step": per_step, "spans": [list(s) for s in record.spans], "fit_started": record.started,
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------ G


def measure_generation(
    settings: BenchSettings, task: Task, engine: Engine, placement: Placement | None
) -> dict:
    """G: samples/s from the real rollout executor into the queue, with nobody training.

    The admission budget is opened wide so that only the engine (and the executor's own work) limits the
    rate; the steady window starts once a tenth of the target has arrived.
    """
    import ray
    from omegaconf import OmegaConf

    from rllm_fully_async.message_queue import MessageQueue
    from rllm_fully_async.rollout.executor import RolloutExecutor

    target = settings.gen_phase_batches * settings.groups_per_step
    wide = async_overrides(settings.num_prompts / settings.groups_per_step, 1, True)
    cfg = compose_config(settings, task, engine.url, "generation_only", wide)
    engine.reset()
    log("generation-only phase ...")
    queue = MessageQueue.options(num_cpus=0).remote(settings.num_prompts)
    config = OmegaConf.to_container(cfg, resolve=True)
    executor = RolloutExecutor.options(num_cpus=0).remote(config, [engine.url], queue)
    pin_actors([executor, queue], placement.gen_cores if placement else None)
    load_before = os.getloadavg()
    cpu_start = cpu_times({"engine": engine.pids})
    run_ref = executor.run.remote()
    series, steady_from, tokens_from = [(time.time(), 0)], 0, 0
    deadline = time.monotonic() + 600
    try:
        while series[-1][1] < target:
            if ray.wait([run_ref], timeout=0.1)[0]:
                ray.get(run_ref)
                raise RuntimeError("the rollout executor finished before the generation-only target")
            if time.monotonic() > deadline:
                raise TimeoutError(f"generation-only phase: {target} groups not reached in 600 s")
            series.append((time.time(), ray.get(queue.counts.remote())["queued"]))
            if not steady_from and target // 10 <= series[-1][1] < target and series[-1][1] > 0:
                steady_from, cpu_start = len(series) - 1, cpu_times({"engine": engine.pids})
                tokens_from = ray.get(executor.stats.remote())["response_tokens"]
        cpu_end = cpu_times({"engine": engine.pids})
        tokens = ray.get(executor.stats.remote())["response_tokens"] - tokens_from
    finally:
        ray.get(executor.stop.remote())
        ray.kill(executor)
        ray.kill(queue)
    (t0, q0), (t1, q1) = series[steady_from], series[-1]
    rate = (q1 - q0) * settings.n / (t1 - t0)
    log(f"generation-only: {rate:.2f} samples/s, {tokens / (t1 - t0):.0f} response tokens/s")
    return {"samples_per_s": rate, "tokens_per_s": tokens / (t1 - t0), "groups": q1 - q0, "window_s": t1 - t0,
            "engine_busy_fraction": engine.monitor.busy_fraction(t0, t1),
            "cpu": cpu_usage(cpu_start, cpu_end, t1 - t0),
            "loadavg": {"before": load_before, "after": os.getloadavg()}}  # fmt: skip


# ------------------------------------------------------------------------------------------------ analysis


def ideal_bounds(gen: dict[str, Any], sync: dict[str, Any], run: dict[str, Any]) -> dict[str, float]:
    """The overlap bound for ``run`` and the synchronous ideal, from rates measured in this invocation.

    Rates are counted in each run's own samples. With long-tailed lengths, batches differ in cost: the
    trainer pads every micro-batch to its longest sequence, and a fully-async batch holds the groups that
    finished first, not the next ones in data order. So G and T are taken for the batches each run trained:

    * G: the generation-only phase's response tokens/s over the run's response tokens per sample;
    * T: a batch over the run's own training time per step plus its share of weight syncs (``sync_s / K``):
      a trainer that never waits still pays those;
    * the lock-step run's generation rate, ``G_lockstep`` (a batch over the time to generate it, its long
      tail included), gives the synchronous ideal with the measured tail.
    """
    sync_share = run["param_sync"]["total_s_mean"] / run["trigger_parameter_sync_step"]
    g = gen["tokens_per_s"] / run["tokens_per_sample"]
    t = run["samples_per_step"] / (run["train_s_per_step"] + sync_share)
    g_sync = gen["tokens_per_s"] / sync["tokens_per_sample"]
    t_sync = sync["samples_per_step"] / (sync["train_s_per_step"] + sync["param_sync"]["total_s_mean"])
    g_lockstep = sync["samples_per_step"] / sync["wait_s_per_step"]
    ideal_async = min(g, t)
    ideal_sync = 1 / (1 / g_sync + 1 / t_sync)
    ideal_sync_tail = 1 / (1 / g_lockstep + 1 / t_sync)
    # The bound assumes each side owns its cores. Where other processes took a share of them during the run
    # (more than while G and T were measured), scale G and T by the CPU share each side actually got.
    engine = run["cpu"]["engine"]["cpu_share_when_runnable"] / gen["cpu"]["engine"]["cpu_share_when_runnable"]
    trainer = (run["cpu"]["trainer worker"]["cpu_share_when_runnable"]
               / sync["cpu"]["trainer worker"]["cpu_share_when_runnable"])  # fmt: skip
    ideal_cpu = min(g * engine, t * trainer)
    return {
        "G": g, "G_lockstep": g_lockstep, "long_tail_penalty": g_sync / g_lockstep, "T": t, "T_sync": t_sync,
        "ideal_async": ideal_async, "ideal_sync": ideal_sync, "ideal_sync_with_tail": ideal_sync_tail,
        "ideal_speedup": ideal_async / ideal_sync, "ideal_speedup_with_tail": ideal_async / ideal_sync_tail,
        "speedup": run["samples_per_s"] / sync["samples_per_s"],
        "overlap_efficiency": run["samples_per_s"] / ideal_async,
        "sync_efficiency": sync["samples_per_s"] / ideal_sync_tail,
        "cpu_share_engine_vs_isolated": engine, "cpu_share_trainer_vs_isolated": trainer,
        "ideal_async_cpu_adjusted": ideal_cpu,
        "overlap_efficiency_cpu_adjusted": run["samples_per_s"] / ideal_cpu,
    }  # fmt: skip


def check_bars(bounds: dict[str, float], run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The targets: overlap efficiency >= 0.9; speedup within 10% of the ideal ratio (with the measured tail);
    trainer idle under 10% where generation keeps up (G >= T)."""
    error = bounds["speedup"] / bounds["ideal_speedup_with_tail"] - 1
    bars = {"overlap_efficiency>=0.9": (bounds["overlap_efficiency"], bounds["overlap_efficiency"] >= 0.9),
            "speedup_within_10%_of_ideal": (error, abs(error) <= 0.1)}  # fmt: skip
    if bounds["G"] >= bounds["T"]:
        bars["trainer_idle<0.1_as_G>=T"] = (run["trainer_idle_ratio"], run["trainer_idle_ratio"] < 0.1)
    return {name: {"value": value, "pass": passed} for name, (value, passed) in bars.items()}


# ------------------------------------------------------------------------------------------------ components


def _group(index: int, n: int, length: int) -> TrajectoryGroup:
    rng = np.random.default_rng(index)
    samples = [Sample(prompt_ids=list(range(19)), response_ids=rng.integers(0, 320, length).tolist(),
                      response_logprobs=(-rng.random(length)).tolist(), reward=0.5, finish_reason="length",
                      min_version=0, max_version=0) for _ in range(n)]  # fmt: skip
    datum = {"prompt": [{"role": "user", "content": "What is 1+2?"}], "data_source": "bench_digits",
             "extra_info": {"index": index, "max_new_tokens": length}}  # fmt: skip
    return TrajectoryGroup(uid=str(index), epoch=0, datum=datum, samples=samples, launch_version=0)


def bench_queue(settings: BenchSettings, task: Task) -> dict[str, Any]:
    """Groups through Ray: put (pipelined, as concurrent rollouts do), then get in training batches; the
    MessageQueue against a plain ``ray.util.queue.Queue`` on the same groups. Typical groups have the task's
    lengths; large ones 4096 tokens per sample, where bytes rather than calls dominate."""
    count = 32 if settings.smoke else 512
    lengths = task.lengths[:count]
    sizes = {"typical_groups": [_group(i, settings.n, length) for i, length in enumerate(lengths)]}
    if not settings.smoke:
        sizes["large_groups"] = [_group(i, settings.n, 4096) for i in range(count // 8)]
    return {name: _queue_throughput(groups, settings.groups_per_step) for name, groups in sizes.items()}


def _queue_throughput(groups: list[TrajectoryGroup], batch: int, window: int = 16) -> dict[str, Any]:
    import ray
    from ray.util.queue import Queue

    from rllm_fully_async.message_queue import MessageQueue

    start = time.perf_counter()
    payloads = [pickle.dumps(g) for g in groups]
    for payload in payloads:
        pickle.loads(payload)
    pickle_ms = (time.perf_counter() - start) / len(groups) * 1e3
    group_bytes = float(np.mean([len(p) for p in payloads]))

    def through(put, get) -> dict[str, float]:
        pending, start = [], time.perf_counter()
        for g in groups:
            pending.append(put(g))
            if len(pending) >= window:
                ray.get(pending.pop(0))
        ray.get(pending)
        put_s, start = time.perf_counter() - start, time.perf_counter()
        for _ in range(len(groups) // batch):
            ray.get(get(batch))
        get_s = time.perf_counter() - start
        rate = len(groups) / (put_s + get_s)
        return {
            "groups_per_s": rate,
            "mb_per_s": rate * group_bytes / 1e6,
            "put_ms": put_s / len(groups) * 1e3,
            "get_batch_ms": get_s / (len(groups) // batch) * 1e3,
        }

    queue = MessageQueue.options(num_cpus=0).remote(len(groups))
    ray.get([queue.register_drawn.remote(g.uid, g.epoch, g.datum) for g in groups])  # the ledger needs them
    ours = through(queue.put.remote, lambda k: queue.get_batch.remote(k, 0))
    ray.kill(queue)
    plain = Queue(maxsize=len(groups), actor_options={"num_cpus": 0})
    ray.get(plain.actor.qsize.remote())  # started before the clock runs, as the MessageQueue was
    baseline = through(plain.actor.put.remote, plain.actor.get_nowait_batch.remote)
    plain.shutdown()
    return {"groups": len(groups), "group_bytes": group_bytes, "pickle_roundtrip_ms": pickle_ms,
            "message_queue": ours, "ray_queue": baseline}  # fmt: skip


def _gloo_receiver(port: int, nbytes: int, repeats: int, cores: list[int]) -> None:
    import torch

    from rllm_fully_async.sync.weight_update_group import (
        destroy_weight_update_group,
        init_weight_update_group,
    )

    pin_this_process(cores)
    group = init_weight_update_group("127.0.0.1", port, 1, 2, "bench_raw", backend="gloo", timeout_s=60)
    buffer = torch.empty(nbytes, dtype=torch.uint8)
    for _ in range(repeats + 1):
        torch.distributed.broadcast(buffer, src=0, group=group)
    torch.distributed.barrier(group=group)
    destroy_weight_update_group(group)


def raw_gloo_broadcast_s(nbytes: int, placement: Placement, repeats: int = 3) -> float:
    """Seconds per gloo broadcast of one flat ``nbytes`` buffer to another process: the bandwidth bound."""
    import multiprocessing
    import socket

    import torch

    from rllm_fully_async.sync.weight_update_group import (
        destroy_weight_update_group,
        init_weight_update_group,
    )

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = (port, nbytes, repeats, placement.gen_cores)
    peer = multiprocessing.get_context("spawn").Process(target=_gloo_receiver, args=args)
    peer.start()
    try:
        group = init_weight_update_group("127.0.0.1", port, 0, 2, "bench_raw", backend="gloo", timeout_s=60)
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
    """ParamSync, the production path (FSDP worker, gloo, engine), against the raw bound, per model size."""
    from rllm_fully_async.toy import model as toy_model

    rows = []
    for shape in settings.weight_sync_shapes:
        with tempfile.TemporaryDirectory(prefix="bench_weights_") as tmp:
            row = _weight_sync_row(toy_model.build(tmp, seed=0, **model_shape(*shape)), placement)
        rows.append({"shape": list(shape), **row})
        log(f"weight sync, {row['params'] / 1e6:.2f}M params: {row['transfer_s']:.3f}s "
            f"(raw gloo {row['raw_gloo_s']:.3f}s)")  # fmt: skip
    return {"backend": "gloo", "sizes": rows,
            "nccl": "GPU-only: not measured without a CUDA device (on GPUs ParamSync uses NCCL)"}  # fmt: skip


def _weight_sync_row(model: Path, placement: Placement) -> dict[str, Any]:
    """Three syncs of one model through ParamSync in the configured load format, three tensor by tensor
    (the baseline), and the raw broadcast of the same bytes."""
    from rllm_fully_async.sync.param_sync import ClientGate, ParamSync
    from rllm_fully_async.trainer.workers import create_actor_worker_group, shutdown_worker_group

    cfg = compose(
        "fully_async_ppo_cpu",
        [f"actor_rollout_ref.model.path={model}", "actor_rollout_ref.actor.optim.total_training_steps=1"],
    )
    engine = Engine.start_on(placement.gen_cores, str(model))
    load_format = cfg.async_training.weight_sync_load_format
    wg = gate = None
    stats = {}
    try:
        wg = create_actor_worker_group(cfg, role="actor", num_workers=1)
        wg.init_model()
        pin_actors(wg.workers, placement.train_cores)
        gate = ClientGate([engine.url])
        for fmt in dict.fromkeys([None, load_format]):
            sync = ParamSync(wg, [engine.url], gate, backend="gloo", group_name=f"bench_{fmt}",
                             bucket_size_mb=cfg.async_training.weight_sync_bucket_mb, timeout_s=300,
                             load_format=fmt)  # fmt: skip
            try:
                sync.init_group()
                stats[fmt] = [sync.sync(version) for version in (1, 2, 3)]
            finally:
                sync.close()
    finally:
        if gate is not None:
            gate.close()
        if wg is not None:
            shutdown_worker_group(wg)
        engine.stop()

    def median_s(fmt: str | None, part: str) -> float:
        return float(np.median([getattr(s, f"{part}_s") for s in stats[fmt]]))

    nbytes = stats[load_format][-1].bytes
    row = {f"{part}_s": median_s(load_format, part) for part in ("pause", "transfer", "resume", "total")}
    raw = raw_gloo_broadcast_s(nbytes, placement)
    row.update(load_format=load_format, per_tensor_transfer_s=median_s(None, "transfer"),
               per_tensor_total_s=median_s(None, "total"), params=nbytes / 4, bytes=nbytes, raw_gloo_s=raw,
               raw_gloo_gb_per_s=nbytes / raw / 1e9)  # fmt: skip
    return {**row, "fraction_of_bound": raw / row["transfer_s"]}


# ------------------------------------------------------------------------------------------------ report


def _mean_staleness(hist: dict[str, int]) -> float:
    total = sum(hist.values())
    return sum(int(k) * v for k, v in hist.items()) / total if total else 0.0


WHERE_ROWS = (  # (label, value of a run, format)
    ("trainer waiting for data", lambda r: r["trainer_share"]["waiting"], "{:.3f}"),
    ("trainer training", lambda r: r["trainer_share"]["training"], "{:.3f}"),
    ("trainer syncing weights", lambda r: r["trainer_share"]["syncing"], "{:.3f}"),
    ("rollout idle (paused or throttled)", lambda r: r["rollout_idle_ratio"], "{:.3f}"),
    ("engine generating", lambda r: r["engine_busy_fraction"], "{:.3f}"),
    ("weight sync: pause s", lambda r: r["param_sync"]["pause_s_mean"], "{:.3f}"),
    ("weight sync: transfer s", lambda r: r["param_sync"]["transfer_s_mean"], "{:.3f}"),
    ("weight sync: resume s", lambda r: r["param_sync"]["resume_s_mean"], "{:.3f}"),
    ("queue put s (executor side)", lambda r: r["queue"]["executor_put_s_mean"], "{:.4f}"),
    ("queue get_batch wait s", lambda r: r["queue"]["get_wait_s_mean"], "{:.3f}"),
    ("mean staleness", lambda r: _mean_staleness(r["staleness_hist"]), "{:.2f}"),
    (
        "trainer CPU share when runnable",
        lambda r: r["cpu"]["trainer worker"]["cpu_share_when_runnable"],
        "{:.2f}",
    ),
    ("engine CPU share when runnable", lambda r: r["cpu"]["engine"]["cpu_share_when_runnable"], "{:.2f}"),
)


def render_table(result: dict[str, Any]) -> str:
    """The summary: rates and bounds, where the time went, sweeps, components, bars."""
    b, runs, m, p = result["bounds"], result["runs"], result["machine"], result["placement"]
    sync, run = runs["sync"], runs["async"]
    gen_tokens_per_s = result["generation_only"]["tokens_per_s"]
    lines = [
        "", "=== rllm_fully_async benchmark ===",
        (f"{m['cpus']} cores: generation {p['gen_cores']}, training {p['train_cores']}; " if p else
         f"rollout server {result['settings']['engine_url']}, nothing pinned; ") +
        f"load average {m['loadavg_start'][0]:.1f} at start, {m['loadavg_end'][0]:.1f} at the end",
        f"G  generation only        {b['G']:7.2f} samples/s  ({gen_tokens_per_s:.0f} tokens/s; "
        f"sync run, lock-step with its long tail: {b['G_lockstep']:.2f})",
        f"T  training only          {b['T']:7.2f} samples/s  (sync run's batches, weight sync every step: "
        f"{b['T_sync']:.2f})",
        f"ideal async  min(G,T)     {b['ideal_async']:7.2f}",
        f"ideal sync   1/(1/G+1/T)  {b['ideal_sync']:7.2f}   (with tail: {b['ideal_sync_with_tail']:.2f})",
        f"sync  measured            {sync['samples_per_s']:7.2f} samples/s",
        f"async measured            {run['samples_per_s']:7.2f} samples/s",
        f"speedup async/sync        {b['speedup']:7.2f}   ideal {b['ideal_speedup']:.2f}, with the "
        f"measured tail {b['ideal_speedup_with_tail']:.2f}",
        f"overlap efficiency        {b['overlap_efficiency']:7.3f}   async / min(G,T); corrected for the "
        f"CPU other processes took: {b['overlap_efficiency_cpu_adjusted']:.3f}",
        "", f"{'where the time goes (steady state)':<38}{'sync':>6}{'async':>9}",
        *(f"  {name:<36}{fmt.format(f(sync)):>6} {fmt.format(f(run)):>8}" for name, f, fmt in WHERE_ROWS),
        f"  staleness histogram (async): {run['staleness_hist']}",
    ]  # fmt: skip
    if result.get("sweeps"):
        lines += ["", f"{'sweep run':<20}{'samples/s':>10}{'overlap eff':>12}{'trainer idle':>13}"
                      f"{'staleness':>10}{'reward first -> last':>22}"]  # fmt: skip
        for label in dict.fromkeys(label for labels in result["sweeps"].values() for label in labels):
            r = runs[label]
            lines.append(f"{label:<20}{r['samples_per_s']:>10.2f}{r['overlap_efficiency']:>12.3f}"
                         f"{r['trainer_idle_ratio']:>13.3f}{_mean_staleness(r['staleness_hist']):>10.2f}"
                         f"{r['reward_first']:>14.3f} -> {r['reward_last']:.3f}")  # fmt: skip
    comp = result.get("components") or {}
    for size, q in (comp.get("queue") or {}).items():
        ours, plain = q["message_queue"], q["ray_queue"]
        lines.append(f"queue, {size} ({q['group_bytes'] / 1e3:.1f} KB, pickle round trip "
                     f"{q['pickle_roundtrip_ms']:.2f} ms): MessageQueue {ours['groups_per_s']:.0f} groups/s, "
                     f"{ours['mb_per_s']:.1f} MB/s; ray Queue {plain['groups_per_s']:.0f} groups/s, "
                     f"{plain['mb_per_s']:.1f} MB/s")  # fmt: skip
    if comp.get("weight_sync"):
        lines.append("weight sync (gloo)     params  per tensor s  transfer s  raw gloo s  fraction of bound")
        lines += [f"{row['params'] / 1e6:26.2f}M {row['per_tensor_transfer_s']:13.3f} "
                  f"{row['transfer_s']:11.3f} {row['raw_gloo_s']:11.3f} {row['fraction_of_bound']:18.2f}"
                  for row in comp["weight_sync"]["sizes"]]  # fmt: skip
        lines.append(f"  (transfer s: load format {comp['weight_sync']['sizes'][0]['load_format']}; "
                     "per tensor s: the same sync, one broadcast per tensor)")  # fmt: skip
    bars = ", ".join(
        f"{k} {'PASS' if v['pass'] else 'FAIL'} ({v['value']:.3f})" for k, v in result["bars"].items()
    )
    return "\n".join([*lines, "", f"bars: {bars}"])


def plot(result: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = [_plot_timeline(result, out, plt)]
    if result.get("sweeps"):
        written.append(_plot_sweeps(result, out, plt))
    if (result.get("components") or {}).get("weight_sync"):
        written.append(_plot_weight_sync(result, out, plt))
    return written


def _plot_timeline(result: dict[str, Any], out: Path, plt) -> str:
    colors = {"wait": "#d9d9d9", "train": "#1f77b4", "sync": "#d62728", "engine": "#2ca02c"}
    fig, axes = plt.subplots(2, 1, figsize=(10, 4.2), sharex=True)
    for ax, name in zip(axes, ("sync", "async"), strict=True):
        run = result["runs"][name]
        t0 = run["fit_started"]
        for kind, _step, start, end in run["spans"]:
            ax.broken_barh([(start - t0, end - start)], (1.1, 0.8), color=colors[kind])
        for b0, b1, busy, _tokens_per_s in run["engine_bins"]:
            ax.broken_barh([(b0 - t0, b1 - b0)], (0.1, 0.8), color=colors["engine"] if busy else "#f4f4f4")
        ax.set_yticks([0.5, 1.5], ["engine", "trainer"])
        ax.set_ylim(0, 2)
        ax.set_title(f"{name}: {run['samples_per_s']:.1f} samples/s; the trainer waits "
                     f"{run['trainer_idle_ratio']:.0%} of the time, the engine generates "
                     f"{run['engine_busy_fraction']:.0%}", fontsize=9)  # fmt: skip
    axes[-1].set_xlabel("seconds since training started")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    labels = ["trainer waits for data", "trainer trains", "weight sync", "engine generates"]
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(fig, out / "timeline.png", plt)


def _plot_sweeps(result: dict[str, Any], out: Path, plt) -> str:
    runs, sweeps = result["runs"], result["sweeps"]
    names = {"staleness": "staleness_threshold", "trigger": "trigger_parameter_sync_step",
             "partial": "partial_rollout"}  # fmt: skip
    fig, axes = plt.subplots(1, len(sweeps), figsize=(4 * len(sweeps), 3.4), squeeze=False)
    for ax, (name, labels) in zip(axes[0], sweeps.items(), strict=True):
        xs = range(len(labels))
        ax.bar(xs, [runs[label]["samples_per_s"] for label in labels], color="#1f77b4")
        ideal = [runs[label]["ideal_async"] for label in labels]
        ax.scatter(xs, ideal, marker="_", s=900, color="#2ca02c", label="that run's ideal, min(G,T)")
        ax.axhline(runs["sync"]["samples_per_s"], color="#d62728", ls=":", lw=1.5, label="sync, measured")
        ax.set_xticks(xs, [label.split("=")[1] for label in labels])
        ax.set_xlabel(names[name])
        ax.set_ylabel("samples/s (steady state)")
        twin = ax.twinx()
        rewards = [runs[label]["reward_last"] for label in labels]
        twin.plot(xs, rewards, "o-", color="#ff7f0e")
        twin.set_ylim(0, max(0.1, 1.3 * max(rewards)))
        twin.set_ylabel("final reward", color="#ff7f0e")
    axes[0][0].legend(fontsize=7, loc="lower left", framealpha=0.9)
    fig.suptitle("throughput (bars) and final reward (line) against the fully-async settings", fontsize=10)
    fig.tight_layout()
    return _save(fig, out / "throughput_vs_staleness.png", plt)


def _plot_weight_sync(result: dict[str, Any], out: Path, plt) -> str:
    rows = result["components"]["weight_sync"]["sizes"]
    mb = [row["bytes"] / 1e6 for row in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    fmt = rows[0]["load_format"] or "one broadcast per tensor"
    ax.loglog(mb, [row["transfer_s"] for row in rows], "o-", label=f"ParamSync transfer ({fmt})")
    if fmt != "one broadcast per tensor":
        per_tensor = [row["per_tensor_transfer_s"] for row in rows]
        ax.loglog(mb, per_tensor, "v-", label="ParamSync transfer (per tensor)")
    ax.loglog(
        mb, [row["total_s"] for row in rows], "s--", label="ParamSync total (pause + transfer + resume)"
    )
    ax.loglog(mb, [row["raw_gloo_s"] for row in rows], "^:", label="raw gloo broadcast of the same bytes")
    ax.set_xlabel("weights (MB, float32)")
    ax.set_ylabel("seconds per sync")
    ax.set_title("weight sync over gloo against model size", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out / "weight_sync.png", plt)


def _save(fig, path: Path, plt) -> str:
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)


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
            ray.init(num_cpus=max(4, len(placement.train_cores)), **ray_options)
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
