# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The printed table and the PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
