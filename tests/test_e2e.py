# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""End-to-end runs of ``python -m rllm_fully_async.main`` on CPU: real Ray, real verl workers, the
real CPU engine over HTTP. Each run is short; together they prove the pipeline's invariants."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch

pytestmark = pytest.mark.slow

NUM_PROMPTS = 24
REWARD_FILE = """
import re
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    digit = re.search(r"[0-9]", solution_str)
    return float(digit is not None and digit.group(0) == ground_truth)
"""


@pytest.fixture(scope="module")
def task(tmp_path_factory, toy_model_dir) -> dict[str, str]:
    """A small verl-format arithmetic dataset and its reward function."""
    root = tmp_path_factory.mktemp("task")
    rows = [
        {
            "data_source": "e2e_sum",
            "prompt": [{"role": "user", "content": f"What is {i % 5}+{i // 5 % 5}? Answer with one digit."}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": str(i % 5 + i // 5 % 5)},
            "extra_info": {"index": 1000 + i, "split": "train"},
        }
        for i in range(NUM_PROMPTS)
    ]
    pd.DataFrame(rows).to_parquet(root / "train.parquet")
    pd.DataFrame(rows[:8]).to_parquet(root / "val.parquet")
    (root / "reward.py").write_text(REWARD_FILE)
    return {"root": str(root), "model": str(toy_model_dir)}


def command(task: dict[str, str], out: Path, *extra: str) -> list[str]:
    root = task["root"]
    return [
        sys.executable, "-m", "rllm_fully_async.main",
        f"actor_rollout_ref.model.path={task['model']}",
        f"data.train_files={root}/train.parquet",
        f"data.val_files={root}/val.parquet",
        f"custom_reward_function.path={root}/reward.py",
        "custom_reward_function.name=compute_score",
        f"trainer.default_local_dir={out}/ckpt",
        "trainer.logger=[console,file]",
        "actor_rollout_ref.actor.ppo_mini_batch_size=4",
        "actor_rollout_ref.rollout.n=4",
        f"hydra.run.dir={out}/hydra",
        *extra,
    ]  # fmt: skip


def run_main(cmd: list[str], out: Path, timeout: float = 420) -> subprocess.CompletedProcess:
    env = {**os.environ, "VERL_FILE_LOGGER_PATH": str(out / "metrics.jsonl"), "RAY_DEDUP_LOGS": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def step_metrics(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["data"] for line in lines if line.strip()]


def ledger(out: Path) -> dict:
    return json.loads((out / "ckpt" / "ledger.json").read_text())


def engine_processes(run_pid: int) -> list[psutil.Process]:
    """The CPU engine servers a run started (under Ray's processes, which the run started)."""
    found = []
    for p in psutil.Process(run_pid).children(recursive=True):
        try:
            if "rllm_fully_async.cpu_engine" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            pass  # gone meanwhile
    return found


def balanced(counts: dict) -> bool:
    return counts["drawn"] == counts["trained"] + counts["filtered"] + counts["queued"] + counts["in_flight"]


def test_fully_async_run_keeps_its_invariants(task, tmp_path):
    """Staleness bound, finish reasons, accounting at every step, checkpoint and run end."""
    run_main(
        command(
            task, tmp_path,
            "async_training.trigger_parameter_sync_step=2",
            "async_training.staleness_threshold=1.0",
            "async_training.max_staleness=2",
            "trainer.save_freq=2",
            "trainer.test_freq=3",
        ),
        tmp_path,
    )  # fmt: skip
    steps = step_metrics(tmp_path)
    assert len(steps) == NUM_PROMPTS // 4
    for m in steps:
        assert m["async/staleness_max"] <= 2
        assert m["async/finish_reason/abort"] == 0
        assert m["async/finish_reason/stop"] + m["async/finish_reason/length"] == m["async/batch_samples"]
        assert (
            m["async/drawn"]
            == m["async/trained"] + m["async/filtered"] + m["async/queued"] + m["async/in_flight"]
        )
    assert any(m["async/staleness_max"] >= 1 for m in steps), "an async run this size must see stale samples"
    assert any("val-core/e2e_sum/reward/mean@1" in m for m in steps)
    final = ledger(tmp_path)
    assert balanced(final["counts"])
    assert final["counts"]["trained"] == NUM_PROMPTS
    for step_dir in sorted((tmp_path / "ckpt").glob("global_step_*")):
        state = torch.load(step_dir / "fully_async_state.pt", weights_only=False)["queue"]
        trained = sum(sum(c.values()) for c in state["trained_uids"].values())
        filtered = sum(state["filtered"].values())
        assert state["drawn"] == trained + filtered + len(state["queued"]) + len(state["in_flight"]), step_dir


@contextmanager
def in_background(cmd: list[str], out: Path, log: Path) -> Iterator[subprocess.Popen]:
    """The run in a session of its own; on the way out everything it started (Ray, the engines) is killed."""
    env = {**os.environ, "VERL_FILE_LOGGER_PATH": str(out / "metrics.jsonl"), "RAY_DEDUP_LOGS": "0"}
    with open(log, "w") as sink:
        run = subprocess.Popen(cmd, cwd=out, env=env, start_new_session=True, stdout=sink, stderr=sink)
    try:
        yield run
    finally:
        try:
            os.killpg(run.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_while_running(run: subprocess.Popen, ready: Callable[[], bool], log: Path, timeout_s: float = 300):
    deadline = time.time() + timeout_s
    while not ready():
        assert run.poll() is None, "the run ended too early:\n" + log.read_text()[-3000:]
        assert time.time() < deadline, f"not ready within {timeout_s} s"
        time.sleep(0.2)


def sigkill_after_checkpoint(cmd: list[str], out: Path, step: int) -> int:
    """Run ``cmd`` until it has checkpointed step ``step`` or later, SIGKILL it, and return the step of its
    last checkpoint; the metrics file is removed, so that it then holds a resumed run's steps only."""
    tracker = out / "ckpt" / "latest_checkpointed_iteration.txt"
    log = out / "first.log"
    with in_background(cmd, out, log) as first:
        wait_while_running(first, lambda: tracker.exists() and int(tracker.read_text() or 0) >= step, log)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    return int(tracker.read_text())


def test_sigkill_and_resume_trains_every_prompt_exactly_once_per_epoch(task, tmp_path):
    cmd = command(task, tmp_path, "trainer.save_freq=1", "trainer.total_epochs=2")
    killed_at = sigkill_after_checkpoint(cmd, tmp_path, 4)
    assert killed_at < 2 * NUM_PROMPTS // 4

    run_main(cmd, tmp_path)
    final = ledger(tmp_path)
    assert balanced(final["counts"])
    expected = {str(1000 + i) for i in range(NUM_PROMPTS)}
    for epoch in ("0", "1"):
        counts = final["trained_uids"][epoch]
        assert set(counts) == expected, f"epoch {epoch}: missing {expected - set(counts)}"
        assert set(counts.values()) == {1}, f"epoch {epoch}: trained twice: {counts}"
    resumed = step_metrics(tmp_path)
    assert resumed[0]["training/global_step"] == killed_at + 1


@pytest.mark.parametrize("num_servers", [2, 1])
def test_a_killed_rollout_server_is_restarted_rejoined_and_no_prompt_is_lost(task, tmp_path, num_servers):
    """SIGKILL a rollout server mid-run: the run restarts it, takes it back into the weight-update group
    (every later sync must reach it) and finishes. Its requests fail over to the other server, or, when it
    was the only one, wait for it to come back: every prompt is trained, none filtered."""
    servers = tmp_path / "servers"
    cmd = command(
        task, tmp_path, f"rollout_servers.num_servers={num_servers}", f"rollout_servers.log_dir={servers}"
    )
    log = tmp_path / "main.log"
    with in_background(cmd, tmp_path, log) as run:
        metrics = tmp_path / "metrics.jsonl"
        wait_while_running(run, lambda: metrics.exists() and len(step_metrics(tmp_path)) >= 2, log)
        engines = engine_processes(run.pid)
        assert len(engines) == num_servers, [p.cmdline() for p in engines]
        port = engines[0].cmdline()[engines[0].cmdline().index("--port") + 1]
        engines[0].kill()
        run.wait(timeout=400)
    text = log.read_text()
    assert run.returncode == 0, text[-5000:]
    launches = [f.read_text().count(f"launching on port {port}") for f in servers.iterdir()]
    assert sorted(launches) == [0, 2][2 - num_servers :], "the killed one is relaunched, any other left alone"
    steps = step_metrics(tmp_path)
    assert len(steps) == NUM_PROMPTS // 4
    assert steps[-1]["async/servers_restarted"] == 1
    assert steps[-1]["async/param_version"] == NUM_PROMPTS // 4  # every sync after the restart reached it
    final = ledger(tmp_path)["counts"]
    assert balanced(final) and final["drawn"] == final["trained"] == NUM_PROMPTS and final["filtered"] == 0


ANY_DIGIT_REWARD = """
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    return float(any(ch.isdigit() for ch in solution_str))
"""
EVERY_THIRD_FILTER = """
def every_third(group):
    return "every_third" if int(group.uid) % 3 == 0 else None
"""


def test_dynamic_sampling_refills_every_batch_and_counts_what_it_filtered(task, tmp_path):
    """DAPO filtering plus a user filter: filtered groups are counted under their reasons, the stream refills,
    so every step but a last one at the end of the data trains required_samples groups."""
    (tmp_path / "reward.py").write_text(ANY_DIGIT_REWARD)  # some groups mixed, some all equal
    (tmp_path / "filters.py").write_text(EVERY_THIRD_FILTER)
    run_main(
        command(
            task, tmp_path,
            f"custom_reward_function.path={tmp_path}/reward.py",
            "algorithm.filter_groups.enable=true",
            f"async_training.group_filter={tmp_path}/filters.py:every_third",
            "trainer.total_epochs=2",
        ),
        tmp_path,
    )  # fmt: skip
    steps = step_metrics(tmp_path)
    final = ledger(tmp_path)
    counts = final["counts"]
    assert balanced(counts) and counts["drawn"] == 2 * NUM_PROMPTS and counts["in_flight"] == 0
    by_reason = counts["filtered_by_reason"]
    assert set(by_reason) <= {"no_learning_signal", "every_third"}
    assert by_reason.get("no_learning_signal", 0) > 0 and by_reason.get("every_third", 0) > 0
    assert counts["trained"] + counts["filtered"] == 2 * NUM_PROMPTS
    trained = [int(uid) for per_epoch in final["trained_uids"].values() for uid in per_epoch]
    assert trained and all(uid % 3 for uid in trained)
    assert len(steps) == -(-counts["trained"] // 4) >= 2
    for m in steps[:-1]:
        assert m["async/batch_groups"] == 4, "a filtered group must be replaced from the stream"
    terms = ("trained", "filtered", "queued", "in_flight")
    for m in steps:
        assert m["async/drawn"] == sum(m[f"async/{k}"] for k in terms)
        assert 0 <= m["rollout/filter_rate"] < 1
    assert steps[-1]["rollout/filter_rate"] > 0


LONG_ROLLOUT = """
from rllm_fully_async.rollout.rollout_fn import single_turn_chat


async def to_the_limit(client, tokenizer, *, sampling_params, **kwargs):
    # ignore_eos: every generation runs its whole budget, so a checkpoint always finds some in progress
    params = {**sampling_params, "ignore_eos": True}
    return await single_turn_chat(client, tokenizer, sampling_params=params, **kwargs)
"""


def test_sigkill_and_resume_continues_the_partial_generations(task, tmp_path):
    """The checkpoint holds the tokens generated so far; the resumed run continues them instead of starting
    over (it restores exactly the checkpoint's tokens), and every prompt is still trained exactly once."""
    (tmp_path / "long.py").write_text(LONG_ROLLOUT)
    cmd = command(
        task, tmp_path,
        "trainer.save_freq=1",
        "trainer.total_training_steps=3",
        f"async_training.rollout_fn={tmp_path}/long.py:to_the_limit",
        # two groups generate at a time, each longer than a training step: when step 1's batch of four is
        # trained and checkpointed, the window's last two groups are still generating
        "async_training.max_concurrency=8",
        "data.max_response_length=160",
    )  # fmt: skip
    killed_at = sigkill_after_checkpoint(cmd, tmp_path, 1)
    state = torch.load(
        tmp_path / "ckpt" / f"global_step_{killed_at}" / "fully_async_state.pt", weights_only=False
    )
    saved = sum(
        len(p.generated_versions)
        for entry in state["executor"]["partial"].values()
        for p in entry["progress"]
        if p is not None
    )
    assert saved > 0, "a checkpoint taken mid-generation must hold the tokens generated so far"

    run_main(cmd, tmp_path)
    resumed = step_metrics(tmp_path)
    assert resumed[0]["training/global_step"] == killed_at + 1
    assert resumed[-1]["rollout/resumed_tokens"] == saved, "every saved token continued, none regenerated"
    final = ledger(tmp_path)
    assert balanced(final["counts"]) and final["counts"]["filtered"] == 0
    counts = final["trained_uids"]["0"]
    assert len(counts) == final["counts"]["trained"] == 3 * 4 and set(counts.values()) == {1}


def test_multi_turn_tool_run_learns_to_use_the_calculator(tmp_path):
    """The README's tool-use example, shortened: the toy model learns to call the calculator and copy its
    result (it cannot add by itself), so the reward rises from the random policy's."""
    run_main(
        [
            sys.executable, "-m", "rllm_fully_async.main",
            "actor_rollout_ref.model.path=toy_tools",
            "data.train_files=toy_tools", "data.val_files=toy_tools",
            "data.max_response_length=32",
            "async_training.rollout_fn=rllm_fully_async.toy.tool_task:rollout",
            f"trainer.default_local_dir={tmp_path}/ckpt",
            "trainer.logger=[console,file]",
            "trainer.test_freq=-1",
            "trainer.total_training_steps=30",
            f"hydra.run.dir={tmp_path}/hydra",
        ],
        tmp_path,
        timeout=900,
    )  # fmt: skip
    rewards = [m["reward/mean"] for m in step_metrics(tmp_path)]
    assert len(rewards) == 30
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.1, rewards
    final = ledger(tmp_path)["counts"]
    assert balanced(final) and final["filtered"] == 0
