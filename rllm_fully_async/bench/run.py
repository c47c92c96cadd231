# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""One benchmark run: the pipeline (lock-step or fully-async), and the generation-only phase (G)."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from rllm_fully_async.bench.engine import Engine, EngineMonitor
from rllm_fully_async.bench.placement import Placement, cpu_times, cpu_usage, pin_actors
from rllm_fully_async.bench.settings import SYNC_METRICS, BenchSettings, log
from rllm_fully_async.bench.task import Task

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
        "async_training.rollout_fn=rllm_fully_async.bench.task:long_tail_rollout",
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
