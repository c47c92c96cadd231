# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""What the runs mean: the ideal overlap bound and the bars a run must pass."""

from __future__ import annotations

from typing import Any

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
