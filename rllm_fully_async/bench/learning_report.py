# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The learning benchmark's analysis, table and plots, from ``learning.json`` alone.

* Reward is smoothed with a trailing moving average over ``smooth_steps`` steps.
* The target is ``target_fraction`` of lock-step's final smoothed reward (its mean over seeds).
* Time to target: seconds from the start of training until a run's smoothed reward first reaches the target;
  the ratio lock-step / setting is taken per seed (the same data order) and reported as mean and standard
  deviation over the seeds where both runs reached it, and over all seeds where lock-step reached it, a
  setting that never did counted as reaching it at its last step (so that mean is an upper bound).
* Reward per trained sample: the final smoothed reward (after the same number of samples in every run),
  mean and standard deviation over seeds, beside lock-step's.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

LOCKSTEP = "lockstep"


def smoothed(rewards: list[float], window: int) -> np.ndarray:
    """Trailing moving average; the first ``window - 1`` points average what there is so far."""
    r = np.asarray(rewards, dtype=float)
    sums = np.cumsum(r)
    counts = np.minimum(np.arange(1, len(r) + 1), window)
    shifted = np.concatenate([np.zeros(window), sums])[: len(r)]
    return (sums - shifted) / counts


def first_reaching(values: np.ndarray, axis: list[float], target: float) -> float | None:
    """The ``axis`` value (time or samples) at the first point where ``values >= target``; None if never."""
    hits = np.nonzero(values >= target)[0]
    return float(axis[hits[0]]) if len(hits) else None


def _mean_std(values: list[float]) -> dict[str, Any]:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()) if len(v) else None, "std": float(v.std(ddof=1)) if len(v) > 1 else None,
            "n": len(v), "values": [float(x) for x in v]}  # fmt: skip


def analyse(result: dict[str, Any]) -> dict[str, Any]:
    """Per setting: final reward, throughput, time and samples to target, and the ratios to lock-step."""
    s = result["settings"]
    window = int(s["smooth_steps"])
    runs: dict[str, dict[int, dict]] = defaultdict(dict)
    for run in result["runs"]:
        runs[run["label"]][run["seed"]] = run
    if LOCKSTEP not in runs:
        return {"error": "no lock-step run: the target is set from lock-step's final reward"}
    curves = {
        name: {seed: smoothed([p["reward"] for p in run["steps"]], window) for seed, run in seeds.items()}
        for name, seeds in runs.items()
    }
    lock_final = [float(c[-1]) for c in curves[LOCKSTEP].values()]
    target = float(s["target_fraction"]) * float(np.mean(lock_final))
    settings: dict[str, Any] = {}
    for name, seeds in runs.items():
        t_hit, n_hit, ratio_t, ratio_n, ratio_bound, final, rate = {}, {}, [], [], [], [], []
        waiting = [run["trainer_wait_share"] for run in seeds.values() if "trainer_wait_share" in run]
        for seed, run in seeds.items():
            steps = run["steps"]
            t_hit[seed] = first_reaching(curves[name][seed], [p["time_s"] for p in steps], target)
            n_hit[seed] = first_reaching(curves[name][seed], [p["samples"] for p in steps], target)
            final.append(float(curves[name][seed][-1]))
            rate.append(steps[-1]["samples"] / steps[-1]["time_s"])
            lock = runs[LOCKSTEP].get(seed)
            if lock is None:
                continue
            lock_t = first_reaching(curves[LOCKSTEP][seed], [p["time_s"] for p in lock["steps"]], target)
            lock_n = first_reaching(curves[LOCKSTEP][seed], [p["samples"] for p in lock["steps"]], target)
            if lock_t is None:
                continue
            ratio_bound.append(lock_t / (t_hit[seed] if t_hit[seed] is not None else steps[-1]["time_s"]))
            if t_hit[seed] is not None:
                ratio_t.append(lock_t / t_hit[seed])
                ratio_n.append(lock_n / n_hit[seed])
        settings[name] = {
            "seeds": sorted(seeds), "final_reward": _mean_std(final), "samples_per_s": _mean_std(rate),
            "trainer_wait_share": _mean_std(waiting),
            "time_to_target_s": {str(k): v for k, v in t_hit.items()},
            "samples_to_target": {str(k): v for k, v in n_hit.items()},
            "reached": sum(v is not None for v in t_hit.values()),
            "speedup_to_target": _mean_std(ratio_t), "sample_efficiency_vs_lockstep": _mean_std(ratio_n),
            "speedup_to_target_all_seeds_bound": _mean_std(ratio_bound),
        }  # fmt: skip
    # Lock-step's trainer waits while generation runs: what overlap alone gains at lock-step's training cost.
    # (Fully-async batches, formed in completion order, can also train cheaper: groups of like lengths.)
    wait = settings[LOCKSTEP]["trainer_wait_share"]["mean"]
    bound = 1 / (1 - wait) if wait is not None and wait < 1 else None
    return {"target": target, "lockstep_final": _mean_std(lock_final), "overlap_bound": bound,
            "settings": settings}  # fmt: skip


def _fmt(stat: dict[str, Any], digits: int = 2) -> str:
    if stat["mean"] is None:
        return "-"
    spread = f" ± {stat['std']:.{digits}f}" if stat["std"] is not None else ""
    return f"{stat['mean']:.{digits}f}{spread}"


def render_table(result: dict[str, Any], analysis: dict[str, Any]) -> str:
    if "error" in analysis:
        return analysis["error"]
    s = result["settings"]
    lines = [
        f"target: {analysis['target']:.3f} = {s['target_fraction']:g} x lock-step's final reward "
        f"{_fmt(analysis['lockstep_final'], 3)} (moving average of {s['smooth_steps']} steps)",
        f"{'setting':<28} {'seeds':>5} {'final reward':>14} {'samples/s':>12} {'trainer idle':>12} "
        f"{'reached':>8} {'time-to-target ratio':>21} {'all seeds (<=)':>15} {'samples ratio':>14}",
    ]
    for name, row in analysis["settings"].items():
        final, rate = _fmt(row["final_reward"], 3), _fmt(row["samples_per_s"])
        speedup, per_sample = _fmt(row["speedup_to_target"]), _fmt(row["sample_efficiency_vs_lockstep"])
        bound, idle = _fmt(row["speedup_to_target_all_seeds_bound"]), _fmt(row["trainer_wait_share"])
        lines.append(
            f"{name:<28} {len(row['seeds']):>5} {final:>14} {rate:>12} {idle:>12} {row['reached']:>8} "
            f"{speedup:>21} {bound:>15} {per_sample:>14}"
        )
    lines.append(
        "ratios: lock-step / setting per seed (> 1: the setting reaches the target sooner); mean ± std"
    )
    if analysis.get("overlap_bound"):
        lines.append(
            "trainer idle: share of wall time the trainer waited for data; lock-step's gives "
            f"1 / (1 - idle) = {analysis['overlap_bound']:.2f}x samples/s, what overlap alone gains at "
            "lock-step's training cost"
        )
    return "\n".join(lines)


def plot(result: dict[str, Any], out: Path) -> list[str]:
    """Reward against trained samples and against wall time: mean over seeds, shaded min-max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = int(result["settings"]["smooth_steps"])
    runs: dict[str, list[dict]] = defaultdict(list)
    for run in result["runs"]:
        runs[run["label"]].append(run)
    # Labels: "lockstep", "async_s{staleness}_k{trigger}", and "async_s{staleness}_k{trigger}_{correction}".
    corrected = [n for n in runs if n.count("_") > 2]
    uncorrected = sorted({"_".join(n.split("_")[:3]) for n in corrected})
    groups = {
        "learning_grid": [n for n in runs if n == LOCKSTEP or n.count("_") == 2],
        "learning_corrections": [LOCKSTEP, *uncorrected, *corrected],
    }
    paths = []
    for figure, names in groups.items():
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
        for name in dict.fromkeys(names):
            if name not in runs:
                continue
            length = min(len(r["steps"]) for r in runs[name])
            curves = np.array(
                [smoothed([p["reward"] for p in r["steps"][:length]], window) for r in runs[name]]
            )
            samples = [p["samples"] for p in runs[name][0]["steps"][:length]]
            times = np.mean([[p["time_s"] for p in r["steps"][:length]] for r in runs[name]], axis=0)
            for ax, x in zip(axes, (samples, times), strict=True):
                (line,) = ax.plot(x, curves.mean(axis=0), label=f"{name} ({len(curves)} seeds)",
                                  lw=2.2 if name == LOCKSTEP else 1.4)  # fmt: skip
                ax.fill_between(x, curves.min(axis=0), curves.max(axis=0), color=line.get_color(), alpha=0.15)
        axes[0].set_xlabel("trained samples")
        axes[1].set_xlabel("wall time since training started (s)")
        for ax in axes:
            ax.set_ylabel(f"reward (moving average, {window} steps)")
            ax.grid(alpha=0.3)
        axes[1].legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        path = out / f"{figure}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(str(path))
    return paths
