# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The learning benchmark: does fully-async reach a given reward sooner than lock-step, and does it learn as
much per trained sample?

    python -m rllm_fully_async.bench.learning [--out DIR] [--seeds 3] [--steps 100] [--only LABELS]
    python -m rllm_fully_async.bench.learning --smoke    # every path at toy sizes (CI)

The task is copying digits (``rllm_fully_async.toy.digits_task``, partial credit per digit) from a
warm-started toy model (``toy.warm_start``) that is sometimes right. Each answer is followed by a filler of
long-tailed length (``bench.task.answer_then_filler``) that costs generation and training like a reasoning
trace but carries no credit and no loss, so that generation is a large share of a step, as it is for
reasoning models and where fully-async has something to overlap. Each seed (data order; sampling is not
seeded) runs lock-step (``async_training.mode=sync``), fully-async at every (staleness_threshold,
trigger_parameter_sync_step) of the grid, and, on the stalest of them, each off-policy correction
(``trainer.off_policy.CORRECTIONS``). As in the speed benchmark, generation and training get disjoint cores
and every run of one invocation shares one engine, reset to the starting weights before each run.

Per run it records reward, trained samples and wall time (from the start of training) at every step; the
report (:mod:`rllm_fully_async.bench.learning_report`) smooths the reward, sets the target to a fraction of
lock-step's final reward, and compares time and samples to the target per seed.
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
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from rllm_fully_async.bench import learning_report
from rllm_fully_async.bench.learning_report import LOCKSTEP
from rllm_fully_async.bench.settings import log
from rllm_fully_async.trainer.off_policy import CORRECTIONS

FILLER_ROLLOUT = "rllm_fully_async.bench.task:answer_then_filler"

SCALARS = ("out", "seeds", "first_seed", "steps", "groups_per_step", "n", "operation", "length",
           "warm_start_steps", "lr", "ppo_epochs", "filler_median", "filler_sigma", "filler_max",
           "target_fraction", "smooth_steps")  # fmt: skip


@dataclass
class LearningSettings:
    """One learning-benchmark invocation; every field is a command-line flag."""

    out: str = "bench_learning"
    seeds: int = 3
    first_seed: int = 0  # seeds first_seed .. first_seed + seeds - 1 (more seeds in a second invocation)
    steps: int = 80  # training steps per run
    groups_per_step: int = 8  # prompts per step
    n: int = 8  # samples per prompt
    staleness: tuple[float, ...] = (0.0, 0.5, 1.0)
    triggers: tuple[int, ...] = (1, 4)
    corrections: tuple[str, ...] = ("token_is", "seq_is", "seq_is_rs", "decoupled_ppo")
    only: tuple[str, ...] = ()  # run only these labels (default: the whole plan)
    operation: str = "copy"  # the digit task: copy, reverse or sort
    length: int = 3  # digits per prompt
    warm_start_steps: int = 10  # per-digit reward ~0.25 at the start; RL levels off near 0.35 after ~80 steps
    lr: float = 3e-3
    ppo_epochs: int = 1  # verl's default (the CPU default's 4 would make training, not generation, dominate)
    # A long-tailed filler after each answer (bench.task.answer_then_filler): lognormal lengths in tokens,
    # clipped to [0, filler_max]. It makes generation, not training, the larger share of a step, as with
    # reasoning models; 0 turns it off (replies are the answer alone).
    filler_median: float = 64.0
    filler_sigma: float = 1.0
    filler_max: int = 256
    target_fraction: float = 0.9  # target = this fraction of lock-step's final smoothed reward
    smooth_steps: int = 10  # the moving average's window
    gen_cores: tuple[int, ...] = ()
    train_cores: tuple[int, ...] = ()
    smoke: bool = False


def smoke_settings(out: str) -> LearningSettings:
    """Lock-step, one fully-async setting and one correction, one seed, a few steps: every path, for CI."""
    return LearningSettings(out=out, seeds=1, steps=3, groups_per_step=2, n=2, staleness=(1.0,),
                            triggers=(2,), corrections=("decoupled_ppo",), warm_start_steps=10,
                            filler_median=4, filler_max=8, smooth_steps=2, smoke=True)  # fmt: skip


def label(staleness: float, trigger: int, correction: str = "none") -> str:
    base = f"async_s{staleness:g}_k{trigger}"
    return base if correction == "none" else f"{base}_{correction}"


def plan(settings: LearningSettings) -> list[tuple[str, list[str]]]:
    """``(label, overrides)`` per run of one seed: lock-step, the grid, then the corrections on its stalest
    point (the largest staleness and trigger)."""
    from rllm_fully_async.bench.run import async_overrides

    runs = [(LOCKSTEP, ["async_training.mode=sync"])]
    runs += [
        (label(s, k), async_overrides(s, k, True)) for s in settings.staleness for k in settings.triggers
    ]
    stalest = (max(settings.staleness), max(settings.triggers))
    for correction in settings.corrections:
        runs.append((label(*stalest, correction), async_overrides(*stalest, True) + CORRECTIONS[correction]))
    if settings.only:
        unknown = set(settings.only) - {name for name, _ in runs}
        if unknown:
            raise SystemExit(f"--only: unknown {sorted(unknown)}; the plan has {[name for name, _ in runs]}")
        runs = [run for run in runs if run[0] in settings.only]
    return runs


@dataclass
class LearningTask:
    model_path: str
    train_file: str


def build_task(settings: LearningSettings) -> LearningTask:
    from rllm_fully_async.toy import digits_task, warm_start

    root = Path(settings.out) / "task"
    s = settings
    model = warm_start.ensure_warm_started(
        root / "model", s.warm_start_steps, length=s.length, operation=s.operation
    )
    prompts = s.groups_per_step * (s.steps + 16)  # the trained ones plus what async runs draw ahead
    train, _ = digits_task.ensure_dataset(root / "data", prompts, 1, length=s.length, operation=s.operation)
    if not s.filler_median:
        return LearningTask(str(model), train)
    import pandas as pd

    from rllm_fully_async.bench.task import long_tail_lengths

    filler = long_tail_lengths(prompts, s.filler_median, s.filler_sigma, 0, s.filler_max, seed=0)
    rows = pd.read_parquet(train)
    rows["extra_info"] = [
        {**info, "filler_tokens": k} for info, k in zip(rows["extra_info"], filler, strict=True)
    ]
    with_filler = Path(train).with_name(f"{Path(train).stem}_filler{s.filler_median:g}_{s.filler_sigma:g}"
                                        f"_{s.filler_max}.parquet")  # fmt: skip
    rows.to_parquet(with_filler)
    return LearningTask(str(model), str(with_filler))


def run_config(settings: LearningSettings, task: LearningTask, engine_url: str, name: str, seed: int,
               overrides: Sequence[str]) -> Any:  # fmt: skip
    from rllm_fully_async.bench.run import compose
    from rllm_fully_async.toy import digits_task

    s = settings
    return compose("fully_async_ppo_cpu", [
        f"actor_rollout_ref.model.path={task.model_path}", f"data.train_files={task.train_file}",
        "data.val_files=null", f"data.seed={seed}",
        f"data.max_response_length={s.length + (s.filler_max if s.filler_median else 3)}",
        *([f"async_training.rollout_fn={FILLER_ROLLOUT}"] if s.filler_median else []),
        f"custom_reward_function.path={digits_task.__file__}", "custom_reward_function.name=compute_score",
        f"actor_rollout_ref.rollout.n={s.n}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={s.groups_per_step}",
        f"actor_rollout_ref.actor.optim.lr={s.lr}", f"actor_rollout_ref.actor.ppo_epochs={s.ppo_epochs}",
        f"trainer.total_training_steps={s.steps}",
        "trainer.total_epochs=1", "trainer.test_freq=-1", f"rollout_servers.urls=[{engine_url}]",
        f"trainer.default_local_dir={Path(s.out).resolve() / 'runs' / f'{name}_seed{seed}'}",
        "trainer.resume_mode=disable", "trainer.logger=[]", f"trainer.experiment_name=learning_{name}",
        *overrides,
    ])  # fmt: skip


def run_once(settings: LearningSettings, task: LearningTask, engine: Any, placement: Any, name: str,
             seed: int, overrides: Sequence[str]) -> dict[str, Any]:  # fmt: skip
    """One training run; per step: trained samples so far, seconds since training started, reward."""
    from rllm_fully_async.bench.run import RunRecord, timed_trainer_class
    from rllm_fully_async.main import run

    cfg = run_config(settings, task, engine.url, name, seed, overrides)
    engine.reset()
    record = RunRecord(pids={"engine": engine.pids})
    log(f"learning run {name} seed {seed} ...")
    run(cfg, trainer_factory=partial(timed_trainer_class(), record=record, placement=placement))
    ends = [end for kind, _step, _start, end in record.spans if kind == "train"]
    samples, steps = 0, []
    for end, metrics in zip(ends, record.steps, strict=True):
        samples += int(metrics["async/batch_samples"])
        steps.append({"samples": samples, "time_s": end - record.started,
                      "reward": float(metrics["reward/mean"]),
                      "staleness_mean": float(metrics["async/staleness_mean"])})  # fmt: skip
    log(f"learning run {name} seed {seed}: reward {steps[0]['reward']:.3f} -> {steps[-1]['reward']:.3f} "
        f"in {steps[-1]['time_s']:.0f} s")  # fmt: skip
    # What the correction did, from the actor's own metrics (mean over the steps that report each).
    seen: dict[str, list[float]] = {}
    for metrics in record.steps:
        for key, value in metrics.items():
            if key.startswith(("rollout_corr/", "actor/decoupled_")):
                seen.setdefault(key, []).append(float(value))
    # The trainer's share of wall time spent waiting for data: in lock-step, generation's share of a step.
    waited = sum(end - start for kind, _step, start, end in record.spans if kind == "wait")
    a = cfg.async_training
    return {"label": name, "seed": seed, "mode": a.mode, "staleness_threshold": float(a.staleness_threshold),
            "trigger_parameter_sync_step": int(a.trigger_parameter_sync_step), "overrides": list(overrides),
            "loadavg_after": os.getloadavg(), "steps": steps,
            "trainer_wait_share": waited / max(steps[-1]["time_s"], 1e-9),
            "correction_metrics": {key: sum(v) / len(v) for key, v in sorted(seen.items())}}  # fmt: skip


def run_study(settings: LearningSettings) -> dict[str, Any]:
    """Every run of the plan for every seed, seed by seed, so that a study cut short still holds whole seeds;
    ``learning.json`` is rewritten after each run."""
    import ray

    from rllm_fully_async.bench.engine import Engine
    from rllm_fully_async.bench.placement import Placement, pin_this_process

    placement = Placement.choose(settings.gen_cores, settings.train_cores)
    task = build_task(settings)
    out = Path(settings.out)
    result: dict[str, Any] = {"settings": asdict(settings), "placement": asdict(placement),
                              "machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()},
                              "runs": []}  # fmt: skip
    os.environ["RAY_worker_niceness"] = "0"  # as in the speed benchmark: no process below the engine
    pin_this_process(placement.train_cores)
    with ThreadPoolExecutor(1) as pool:
        starting = pool.submit(Engine.start_on, placement.gen_cores, task.model_path)
        ray.init(address="local", num_cpus=max(4, len(placement.train_cores)), include_dashboard=False,
                 log_to_driver=False,
                 runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})  # fmt: skip
        engine = starting.result()
    log(f"engine at {engine.url}, ray up")
    try:
        for seed in range(settings.first_seed, settings.first_seed + settings.seeds):
            for name, overrides in plan(settings):
                result["runs"].append(run_once(settings, task, engine, placement, name, seed, overrides))
                result["machine"]["loadavg_end"] = os.getloadavg()
                (out / "learning.json").write_text(json.dumps(result, indent=1))
    finally:
        engine.stop()
        ray.shutdown()
    return result


def parse_args(argv: Sequence[str] | None = None) -> tuple[LearningSettings, bool]:
    """The settings, and whether to only re-analyse an existing ``learning.json`` in ``--out``."""
    p = argparse.ArgumentParser(prog="python -m rllm_fully_async.bench.learning",
                                description=__doc__.split("\n\n")[0])  # fmt: skip
    p.add_argument("--smoke", action="store_true", help="every path at toy sizes, one seed (CI)")
    p.add_argument(
        "--report-only", action="store_true", help="re-analyse and re-plot an existing learning.json"
    )
    defaults = LearningSettings()
    for name in SCALARS:
        value = getattr(defaults, name)
        p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    lists = {"staleness": float, "triggers": int, "corrections": str, "only": str, "gen_cores": int,
             "train_cores": int}  # fmt: skip
    for name in lists:
        value = ",".join(str(v) for v in getattr(defaults, name))
        p.add_argument(
            f"--{name.replace('_', '-')}", default=value, help=f"comma-separated (default {value!r})"
        )
    args = p.parse_args(argv)
    parsed = {
        name: tuple(kind(v) for v in getattr(args, name).split(",") if v.strip())
        for name, kind in lists.items()
    }
    unknown = set(parsed["corrections"]) - set(CORRECTIONS)
    if unknown:
        p.error(f"--corrections: unknown {sorted(unknown)}; choose from {sorted(CORRECTIONS)}")
    if args.smoke:
        settings = smoke_settings(args.out)
    else:
        scalars = {name: getattr(args, name) for name in SCALARS}
        lists_given = {name: parsed[name] for name in ("staleness", "triggers", "corrections", "only")}
        settings = LearningSettings(**scalars, **lists_given)
    settings.gen_cores, settings.train_cores = parsed["gen_cores"], parsed["train_cores"]
    return settings, args.report_only


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    settings, report_only = parse_args(argv)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    if report_only:
        result = json.loads((out / "learning.json").read_text())
    else:
        # A terminated study still stops its engine and Ray session: the finally blocks run on SystemExit.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        started = time.time()
        result = run_study(settings)
        result["wall_s"] = time.time() - started
    result["analysis"] = learning_report.analyse(result)
    result["plots"] = learning_report.plot(result, out)
    (out / "learning.json").write_text(json.dumps(result, indent=1))
    table = learning_report.render_table(result, result["analysis"])
    (out / "learning_summary.txt").write_text(table + "\n")
    print(table)
    print(f"\nwrote {out / 'learning.json'} and {', '.join(result['plots'])}")
    return result


if __name__ == "__main__":
    main()
