# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""RolloutExecutor: the persistent producer of the fully-async pipeline.

It draws prompts (re-queued ones first, then the dataset through a ``StatefulDataLoader``), keeps up
to ``max_concurrency`` samples generating across training steps, groups the ``n`` samples of each
prompt and puts finished groups on the MessageQueue. The admission budget decides when to stop
launching until the next weight sync. A sample whose rollout raises, or misses its deadline
(``sample_timeout_s``), is retried; after ``max_retries`` the whole prompt is reported filtered with the
error, never trained as a smaller group. A reward that is not a finite number filters the prompt at once
(``reward_guard``): it is never trained on.
With dynamic sampling a finished group may be filtered too (``GroupFilter``); its admission slot goes back
to the window, so the stream refills the batch.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import ray

from rllm_fully_async.config_schema import with_base_defaults
from rllm_fully_async.rollout.group_filter import GroupFilter
from rllm_fully_async.rollout.reward_guard import InvalidReward, WatchedReward, check_reward, function_name
from rllm_fully_async.rollout.rollout_fn import chat_prompt_ids, load_reward_fn, load_rollout_fn
from rllm_fully_async.rollout.staleness import AdmissionController
from rllm_fully_async.rollout.state_timer import StateTimer
from rllm_fully_async.rollout.trajectory import Prompt, Sample, SampleProgress, TrajectoryGroup

logger = logging.getLogger(__name__)

# After this many prompts in a row failed every retry, the executor stops with the last error instead
# of filtering the rest of the dataset (a dead reward function or unreachable servers fail everything).
MAX_FAILED_PROMPTS_IN_A_ROW = 20
# While nothing can be launched, how long one wait for a re-queued prompt may block on the queue.
REQUEUE_POLL_S = 5.0


@dataclass
class ExecutorSettings:
    """What the executor reads from the run configuration (verl's keys plus ``async_training``).

    No defaults here: :meth:`from_config` fills what a config leaves out from the base YAML in config/.
    """

    train_files: list[str]
    tokenizer_path: str
    n: int
    max_prompt_length: int
    max_response_length: int
    required_samples: int
    prompt_key: str
    shuffle: bool
    seed: int
    total_epochs: int
    temperature: float
    top_p: float
    top_k: int
    staleness_threshold: float
    trigger_parameter_sync_step: int
    partial_rollout: bool
    # Partial generations saved with a checkpoint are continued after resume only within this bound.
    max_staleness: int | None
    max_concurrency: int
    max_retries: int
    # Per attempt of one sample (rollout and reward function together); None: no deadline.
    sample_timeout_s: float | None
    rollout_fn: str | None
    custom_reward_function: dict[str, Any]
    # Dynamic sampling: verl's algorithm.filter_groups.{enable, metric} and async_training.group_filter.
    filter_groups: bool
    filter_metric: str | None
    group_filter: str | None
    # How long a request waits for a server to come back when none is in rotation: a restart's length.
    server_outage_timeout_s: float
    # rollout_servers.api_key: sent to servers started with --api-key.
    api_key: str | None
    # rollout_servers.router_url: generation goes through this sglang-router, control calls to each server.
    router_url: str | None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> ExecutorSettings:
        """Read a run config (a DictConfig or a mapping; what it leaves out comes from the base YAML)."""
        cfg = with_base_defaults(cfg)
        data, rollout = cfg["data"], cfg["actor_rollout_ref"]["rollout"]
        a = cfg["async_training"]
        files = data["train_files"]
        reward = cfg.get("custom_reward_function") or {}
        if not reward.get("path"):
            reward = (cfg.get("reward") or {}).get("custom_reward_function") or reward
        filter_groups = cfg["algorithm"]["filter_groups"]
        return cls(
            train_files=[files] if isinstance(files, str) else list(files),
            tokenizer_path=data.get("tokenizer") or cfg["actor_rollout_ref"]["model"]["path"],
            n=int(rollout["n"]),
            max_prompt_length=int(data["max_prompt_length"]),
            max_response_length=int(data["max_response_length"]),
            required_samples=int(a["required_samples"]),
            prompt_key=data.get("prompt_key") or "prompt",  # verl's data.prompt_key default
            shuffle=bool(data["shuffle"]),
            seed=int(data["seed"]),
            total_epochs=int(cfg["trainer"]["total_epochs"]),
            temperature=float(rollout["temperature"]),
            top_p=float(rollout["top_p"]),
            top_k=int(rollout["top_k"]),
            staleness_threshold=float(a["staleness_threshold"]),
            trigger_parameter_sync_step=int(a["trigger_parameter_sync_step"]),
            partial_rollout=bool(a["partial_rollout"]),
            max_staleness=None if a["max_staleness"] is None else int(a["max_staleness"]),
            max_concurrency=int(a["max_concurrency"]),
            max_retries=int(a["max_retries"]),
            sample_timeout_s=float(a["sample_timeout_s"]) if a["sample_timeout_s"] else None,
            rollout_fn=a["rollout_fn"],
            custom_reward_function=dict(reward),
            filter_groups=bool(filter_groups["enable"]),
            filter_metric=filter_groups["metric"],
            group_filter=a["group_filter"],
            server_outage_timeout_s=float(cfg["rollout_servers"]["startup_timeout_s"]),
            api_key=cfg["rollout_servers"]["api_key"],
            router_url=cfg["rollout_servers"]["router_url"],
        )

    @property
    def sampling_params(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_new_tokens": self.max_response_length,
        }


def load_prompts(files: list[str], prompt_key: str) -> list[Prompt]:
    """Rows of verl-format parquet files (``prompt`` chat list, ``data_source``, ``reward_model``, ...).

    The uid is ``extra_info.index`` when every row has one and they are unique, else the row position;
    either way it is stable across epochs and restarts. The epoch field is filled in when drawn.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for f in files:
        path = os.path.expanduser(f)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"data.train_files: {f!r} does not exist")
        tables.append(pq.read_table(path))
    rows = pa.concat_tables(tables, promote_options="default").to_pylist() if tables else []
    if not rows:
        raise ValueError(f"data.train_files {files} hold no rows")
    if prompt_key not in rows[0]:
        raise KeyError(
            f"data.prompt_key={prompt_key!r} is not a column of {files}; columns: {sorted(rows[0])}"
        )
    for i, row in enumerate(rows):
        messages = row[prompt_key]
        is_chat = isinstance(messages, list) and all(isinstance(m, dict) and "content" in m for m in messages)
        if not is_chat:
            raise ValueError(
                f"row {i} of {files}: column {prompt_key!r} must be a list of chat messages "
                f"[{{'role': ..., 'content': ...}}], got {str(messages)[:200]}"
            )
    indices = [(row.get("extra_info") or {}).get("index") for row in rows]
    use_index = all(i is not None for i in indices) and len(set(map(str, indices))) == len(rows)
    if not use_index and any(i is not None for i in indices):
        logger.warning("extra_info.index is missing or repeated in %s: using row positions as uids", files)
    return [Prompt(str(indices[i]) if use_index else str(i), 0, row) for i, row in enumerate(rows)]


def _takes_progress(fn: Any) -> bool:
    """Whether the rollout function accepts ``progress`` (by name or through ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "progress" or p.kind is p.VAR_KEYWORD for p in params)


def _first(batch: list) -> Any:
    return batch[0]


@dataclass
class _GroupRun:
    """A prompt whose samples are being generated."""

    prompt: Prompt
    launch_version: int
    samples: list[Sample | None]
    # What each unfinished sample has produced so far (rollout functions that take ``progress``).
    progress: list[SampleProgress | None] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)
    tasks: set[asyncio.Task] = field(default_factory=set)
    failed: bool = False

    @property
    def complete(self) -> bool:
        return all(s is not None for s in self.samples)


@ray.remote(num_cpus=0)
class RolloutExecutor:
    """Ray actor (asyncio). ``run()`` produces until the data is exhausted; the other methods steer it.

    ``pause()`` / ``resume(version)`` bracket each weight sync: pause stops new launches and aborts the
    servers' running requests (they continue after resume: partial rollout, or restart when
    ``partial_rollout`` is off); resume with a new version opens the next admission window.
    """

    def __init__(
        self,
        config: Mapping[str, Any] | ExecutorSettings,
        server_urls: list[str],
        queue: Any,
    ):
        from transformers import AutoTokenizer

        from rllm_fully_async.rollout.client import RolloutClient

        s = config if isinstance(config, ExecutorSettings) else ExecutorSettings.from_config(config)
        if s.n < 1 or s.max_concurrency < 1 or s.max_retries < 0 or s.total_epochs < 1:
            raise ValueError(
                f"need rollout.n >= 1 (got {s.n}), async_training.max_concurrency >= 1 "
                f"(got {s.max_concurrency}), async_training.max_retries >= 0 (got {s.max_retries}), "
                f"trainer.total_epochs >= 1 (got {s.total_epochs})"
            )
        self.settings = s
        self._queue = queue
        self._prompts = load_prompts(s.train_files, s.prompt_key)
        self._tokenizer = AutoTokenizer.from_pretrained(s.tokenizer_path)
        self._rollout_fn = load_rollout_fn(s.rollout_fn)
        self._reward_fn = load_reward_fn(s.custom_reward_function)
        self._group_filter = GroupFilter(s.filter_groups, s.filter_metric, s.group_filter)
        self._client = RolloutClient(
            server_urls,
            router_url=s.router_url,
            outage_timeout_s=s.server_outage_timeout_s,
            api_key=s.api_key,
        )
        self._admission = AdmissionController(
            s.required_samples, s.staleness_threshold, s.trigger_parameter_sync_step
        )

        self._version = 0
        self._epoch = 0
        self._loader = self._make_loader(0)
        self._loader_iter = None
        self._exhausted = False

        self._paused = False
        self._stopping = False
        self._started = False
        self._fatal: BaseException | None = None
        self._wake = asyncio.Event()
        self._draw_lock = asyncio.Lock()
        self._groups: dict[tuple[int, str], _GroupRun] = {}
        self._restored: dict[tuple[int, str], dict[str, list]] = {}
        self._takes_progress = _takes_progress(self._rollout_fn)
        self._pending: deque[tuple[_GroupRun, int]] = deque()
        self._tasks: set[asyncio.Task] = set()
        self._requeue_poll: asyncio.Future | None = None
        self._running = 0
        self._puts_waiting = 0
        self._failed_in_a_row = 0
        # The samples being generated: prompt uid, start time and the reward function they were given.
        self._active: dict[int, tuple[str, float, WatchedReward]] = {}

        self._idle = StateTimer()
        self._paused_clock = StateTimer()
        self._run_started_at: float | None = None
        self._run_ended_at: float | None = None
        self._counters: dict[str, float] = dict.fromkeys(
            [
                "prompts_drawn",
                "prompts_requeued_served",
                "prompts_too_long",
                "prompts_failed",
                "groups_done",
                "groups_filtered",
                "samples_done",
                "sample_retries",
                "response_tokens",
                "put_wait_s",
                "max_in_flight",
                "version_span_sum",
                "version_span_max",
                "samples_spanning_versions",
                "num_aborts_sum",
                "resumed_samples",
                "resumed_tokens",
                "resumed_discarded_stale",
            ],
            0,
        )

    # ------------------------------------------------------------------ public API

    def num_prompts_per_epoch(self) -> int:
        return len(self._prompts)

    async def run(self) -> dict[str, float]:
        """Produce until every epoch is drawn and every group is queued, then close the queue.

        Returns the final ``stats()``; raises (after closing the queue with the error, so the trainer
        does not wait) if anything fails beyond the per-sample retries.
        """
        if self._started:
            raise RuntimeError("RolloutExecutor.run() was already called")
        self._started = True
        self._run_started_at = time.monotonic()
        counts = await self._queue.counts.remote()
        self._admission.on_sync(self._version, counts["in_flight"] + counts["queued"])
        try:
            await self._launch_loop()
        except BaseException as e:
            if not self._stopping:
                await self._queue.close.remote(error=f"rollout executor failed: {type(e).__name__}: {e}")
            raise
        finally:
            self._run_ended_at = time.monotonic()
            self._idle.update(False)
            self._paused_clock.update(False)
            await self._cancel_tasks()
        return self.stats()

    async def pause(self) -> None:
        """Stop launching and abort the servers' running requests; returns once the servers are idle.

        While paused, ``state_dict()`` agrees with the queue's ledger: no prompt is being drawn.
        """
        self._paused = True
        self._paused_clock.update(True)
        self._update_idle()
        async with self._draw_lock:  # a draw in progress finishes first
            pass
        await self._client.pause()
        await self._client.wait_idle()

    async def resume(self, version: int) -> None:
        """Continue generation; a new ``version`` (after a weight sync) opens its admission window."""
        if version < self._version:
            raise ValueError(f"resume(version={version}) is older than the current version {self._version}")
        if version > self._version:
            counts = await self._queue.counts.remote()
            self._version = version
            self._admission.on_sync(version, counts["in_flight"] + counts["queued"])
        await self._client.resume(self._version)
        self._paused = False
        self._paused_clock.update(False)
        self._update_idle()
        self._wake.set()

    def state_dict(self) -> dict[str, Any]:
        """Dataloader position, epoch, version, and the partial generations of the prompts in flight (their
        finished samples and what the unfinished ones produced so far). Call while paused, together with the
        queue's state: the servers are idle then, so every generation's tokens so far are in its progress."""
        if not self._paused and self._started:
            raise RuntimeError("RolloutExecutor.state_dict() needs the executor paused: call pause() first")
        partial = {
            key: {
                "samples": list(run.samples),
                "progress": [p.snapshot() if p is not None else None for p in run.progress],
            }
            for key, run in self._groups.items()
            if not run.failed
        }
        return {
            "epoch": self._epoch,
            "loader": self._loader.state_dict() if self._loader is not None else None,
            "exhausted": self._exhausted,
            "version": self._version,
            "partial": partial,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the position before ``run()``; the queue's re-queued prompts are served first."""
        if self._started:
            raise RuntimeError("RolloutExecutor.load_state_dict() must be called before run()")
        self._epoch = state["epoch"]
        self._version = state["version"]
        self._exhausted = state["exhausted"]
        self._loader = None if self._exhausted else self._make_loader(self._epoch)
        if self._loader is not None and state["loader"] is not None:
            self._loader.load_state_dict(state["loader"])
        self._loader_iter = None
        # Continued when the queue hands their prompts back (it re-queues every prompt in flight).
        self._restored = dict(state.get("partial") or {})

    def stats(self) -> dict[str, float]:
        """Throughput, idle ratio, admission and partial-rollout statistics since ``run()`` started."""
        c = self._counters
        start = self._run_started_at
        wall = ((self._run_ended_at or time.monotonic()) - start) if start is not None else 0.0
        samples = c["samples_done"]
        finished = c["groups_done"] + c["groups_filtered"]
        out = {
            **c,
            "wall_s": wall,
            "idle_s": self._idle.total(),
            "idle_ratio": self._idle.total() / wall if wall > 0 else 0.0,
            "paused_s": self._paused_clock.total(),
            "samples_per_s": samples / wall if wall > 0 else 0.0,
            "tokens_per_s": c["response_tokens"] / wall if wall > 0 else 0.0,
            "in_flight": self._running,
            "groups_in_flight": len(self._groups),
            "version": self._version,
            "epoch": self._epoch,
            "version_span_mean": c["version_span_sum"] / samples if samples else 0.0,
            "partial_rollout_fraction": c["samples_spanning_versions"] / samples if samples else 0.0,
            "num_aborts_mean": c["num_aborts_sum"] / samples if samples else 0.0,
            # dynamic sampling: the share of finished groups filtered instead of trained
            "filter_rate": c["groups_filtered"] / finished if finished else 0.0,
        }
        out.update(self._admission.stats())
        return out

    def activity(self) -> str:
        """What the rollout side is doing, in words: for a trainer that waited too long for a batch."""
        parts = [
            f"{self._running} samples generating for {len(self._groups)} prompts, paused={self._paused}, "
            f"data exhausted={self._exhausted}, admission budget left={self._admission.remaining}, "
            f"puts waiting on a full queue={self._puts_waiting}"
        ]
        if self._active:
            uid, started, reward = min(self._active.values(), key=lambda a: a[1])
            where = (
                f"reward function {reward.name!r}"
                if reward.running
                else f"rollout function {function_name(self._rollout_fn)!r}"
            )
            parts.append(
                f"oldest sample: prompt uid={uid}, running {time.monotonic() - started:.0f}s in {where}"
            )
        if self._fatal is not None:
            parts.append(f"failed: {type(self._fatal).__name__}: {self._fatal}")
        servers = ", ".join(
            f"{s['url']} ({'up' if s['up'] else 'out of rotation'}, {s['in_flight']} in flight"
            + (f", last error: {s['last_error']}" if s["last_error"] else "")
            + ")"
            for s in self._client.server_status()
        )
        parts.append(f"rollout servers: {servers}")
        return "; ".join(parts)

    async def stop(self) -> None:
        """Stop producing (without closing the queue), cancel running rollouts, close the client."""
        self._stopping = True
        self._wake.set()
        await self._cancel_tasks()
        await self._client.close()

    # ------------------------------------------------------------------ launching

    async def _launch_loop(self) -> None:
        while True:
            self._wake.clear()
            self._update_idle()
            if self._fatal is not None:
                raise self._fatal
            if self._stopping:
                return
            if self._paused or self._running >= self.settings.max_concurrency or self._puts_waiting:
                await self._wait(poll_requeue=False)
                continue
            if self._pending:
                run, index = self._pending.popleft()
                if not run.failed:
                    self._start_sample(run, index)
                continue
            if await self._next_prompt():
                continue
            if self._exhausted and not self._groups and not self._paused:
                if await self._try_close():
                    return
                continue
            await self._wait(poll_requeue=True)

    async def _next_prompt(self) -> bool:
        """Begin the next prompt (re-queued first, then new data within the admission budget).

        Returns False when nothing can be begun now.
        """
        async with self._draw_lock:
            if self._paused or self._stopping:
                return False
            # A pending long-poll (see _wait) means nothing was re-queued since it was sent: skip the
            # round trip, which would otherwise be paid on every wake-up while the budget is used up.
            polling = self._requeue_poll is not None and not self._requeue_poll.done()
            requeued = [] if polling else await self._queue.take_requeued.remote(1)
            if requeued:
                self._counters["prompts_requeued_served"] += 1
                self._begin(requeued[0])
                return True
            if self._exhausted or not self._admission.can_launch():
                return False
            prompt = self._draw()
            if prompt is None:
                return False
            await self._queue.register_drawn.remote(prompt.uid, prompt.epoch, prompt.datum)
            self._counters["prompts_drawn"] += 1
            length = len(chat_prompt_ids(self._tokenizer, prompt.datum[self.settings.prompt_key]))
            if length > self.settings.max_prompt_length:
                self._counters["prompts_too_long"] += 1
                await self._queue.report_filtered.remote(
                    prompt.uid,
                    prompt.epoch,
                    "prompt_too_long",
                    f"{length} tokens > data.max_prompt_length={self.settings.max_prompt_length}",
                )
                return True
            self._admission.on_launch()
            self._begin(prompt)
            return True

    def _make_loader(self, epoch: int):
        """One epoch's loader, shuffled with seed ``seed + epoch``: a resumed run draws the same order."""
        import torch
        from torchdata.stateful_dataloader import StatefulDataLoader

        generator = torch.Generator()
        generator.manual_seed(self.settings.seed + epoch)
        return StatefulDataLoader(
            range(len(self._prompts)),
            batch_size=1,
            shuffle=self.settings.shuffle,
            generator=generator,
            collate_fn=_first,
            num_workers=0,
        )

    def _draw(self) -> Prompt | None:
        """The next dataset row, moving to the next epoch at the end of one; None when all are drawn."""
        while not self._exhausted:
            if self._loader_iter is None:
                self._loader_iter = iter(self._loader)
            try:
                index = int(next(self._loader_iter))
            except StopIteration:
                self._epoch += 1
                self._loader_iter = None
                if self._epoch >= self.settings.total_epochs:
                    self._exhausted, self._loader = True, None
                else:
                    self._loader = self._make_loader(self._epoch)
                continue
            uid, _, datum = self._prompts[index]
            return Prompt(uid, self._epoch, datum)
        return None

    def _begin(self, prompt: Prompt) -> None:
        n = self.settings.n
        run = _GroupRun(prompt, self._version, [None] * n, [None] * n)
        self._groups[(prompt.epoch, prompt.uid)] = run
        saved = self._restored.pop((prompt.epoch, prompt.uid), None)
        if saved is not None:
            self._restore(run, saved)
        if run.complete:  # every sample had finished before the checkpoint: only the put was left
            self._start_finish(run)
            return
        self._pending.extend((run, i) for i in range(n) if run.samples[i] is None)

    def _restore(self, run: _GroupRun, saved: dict[str, list]) -> None:
        """Take back a prompt's finished samples and partial generations from a checkpoint. A partial one
        whose oldest token is past ``max_staleness`` (or any from an older version, without partial
        rollout) is generated again instead."""
        s = self.settings
        for i, (sample, progress) in enumerate(zip(saved["samples"], saved["progress"], strict=True)):
            if sample is not None:
                run.samples[i] = sample
                self._counters["resumed_samples"] += 1
                continue
            versions = progress.generated_versions if progress is not None else []
            if not versions:
                continue
            oldest = min(versions)
            if (s.max_staleness is not None and self._version - oldest > s.max_staleness) or (
                not s.partial_rollout and set(versions) != {self._version}
            ):
                self._counters["resumed_discarded_stale"] += 1
                continue
            progress.restored_tokens = len(versions)
            run.progress[i] = progress
            self._counters["resumed_samples"] += 1
            self._counters["resumed_tokens"] += len(versions)

    def _start_finish(self, run: _GroupRun) -> None:
        async def finish() -> None:
            try:
                await self._finish_group(run)
            except asyncio.CancelledError:
                raise
            except BaseException as e:
                if self._fatal is None:
                    self._fatal = e
                self._wake.set()

        task = asyncio.get_running_loop().create_task(finish())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start_sample(self, run: _GroupRun, index: int) -> None:
        self._running += 1
        self._counters["max_in_flight"] = max(self._counters["max_in_flight"], self._running)
        task = asyncio.get_running_loop().create_task(self._sample_task(run, index))
        run.tasks.add(task)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _wait(self, poll_requeue: bool) -> None:
        """Sleep until something changes; optionally also until the queue re-queues a prompt."""
        waiters = {asyncio.ensure_future(self._wake.wait())}
        if poll_requeue:
            if self._requeue_poll is None or self._requeue_poll.done():
                ref = self._queue.wait_requeued.remote(REQUEUE_POLL_S)
                self._requeue_poll = asyncio.wrap_future(ref.future())
            waiters.add(self._requeue_poll)
        done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            if w is not self._requeue_poll and not w.done():
                w.cancel()
        if self._requeue_poll in done:
            self._requeue_poll.exception()  # a failed poll only means: look again

    async def _try_close(self) -> bool:
        """Close the queue; refused while prompts are re-queued (they are served on the next loop)."""
        if await self._queue.close.remote():
            return True
        counts = await self._queue.counts.remote()
        if counts["requeued"] == 0:
            raise RuntimeError(
                f"the data is exhausted but the queue still has {counts['in_flight']} prompts in flight that "
                "this executor is not generating (was the queue shared with another producer?)"
            )
        return False

    # ------------------------------------------------------------------ one sample

    async def _sample_task(self, run: _GroupRun, index: int) -> None:
        try:
            try:
                outcome = await self._attempts(run, index)
            finally:
                self._running -= 1
                self._wake.set()
            if isinstance(outcome, Sample):
                self._record(outcome)
                run.samples[index] = outcome
                if run.complete and not run.failed:
                    await self._finish_group(run)
            else:
                await self._fail_group(run, outcome)
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # anything beyond a rollout error stops the executor
            if self._fatal is None:
                self._fatal = e
            self._wake.set()

    async def _attempts(self, run: _GroupRun, index: int) -> Sample | BaseException:
        """Call the rollout function, retrying on errors; returns the sample or the last error."""
        prompt = run.prompt
        kwargs = {
            **prompt.datum,
            "prompt": prompt.datum[self.settings.prompt_key],
            "sampling_params": self.settings.sampling_params,
            "reward_fn": self._reward_fn,
            "partial_rollout": self.settings.partial_rollout,
        }
        error: BaseException | None = None
        rollout_name = function_name(self._rollout_fn)
        for attempt in range(self.settings.max_retries + 1):
            if run.failed:
                break
            reward = WatchedReward(self._reward_fn)
            extra = {}
            if self._takes_progress:
                # a retry starts over; the first attempt continues a generation restored from a checkpoint
                if run.progress[index] is None or attempt > 0:
                    run.progress[index] = SampleProgress()
                extra["progress"] = run.progress[index]
            key = id(reward)
            self._active[key] = (prompt.uid, time.monotonic(), reward)
            try:
                sample = await asyncio.wait_for(
                    self._rollout_fn(
                        self._client, self._tokenizer, **{**kwargs, "reward_fn": reward, **extra}
                    ),
                    timeout=self.settings.sample_timeout_s,
                )
            except asyncio.CancelledError:
                raise
            except InvalidReward as e:
                return e  # deterministic: a retry would compute the same reward
            except Exception as e:
                if isinstance(e, TimeoutError) and not str(e):  # the deadline, not a timeout inside
                    stuck = (
                        f"reward function {reward.name!r}"
                        if reward.running
                        else f"rollout function {rollout_name!r}"
                    )
                    e = TimeoutError(
                        f"{stuck} did not return within async_training.sample_timeout_s="
                        f"{self.settings.sample_timeout_s}s (prompt uid={prompt.uid})"
                    )
                error = e
                if attempt < self.settings.max_retries:
                    self._counters["sample_retries"] += 1
                    logger.warning("rollout of uid=%s failed (attempt %d): %r", prompt.uid, attempt + 1, e)
                continue
            finally:
                del self._active[key]
            if not isinstance(sample, Sample):
                raise TypeError(
                    f"rollout_fn {rollout_name!r} returned {type(sample).__name__}; it must return "
                    "rllm_fully_async.rollout.trajectory.Sample"
                )
            try:
                check_reward(sample.reward, f"rollout function {rollout_name!r} (Sample.reward)")
            except InvalidReward as e:
                return e
            return sample
        return error or RuntimeError("sibling sample failed")

    def _record(self, sample: Sample) -> None:
        c = self._counters
        c["samples_done"] += 1
        c["response_tokens"] += len(sample.response_ids)
        span = sample.version_span
        c["version_span_sum"] += span
        c["version_span_max"] = max(c["version_span_max"], span)
        c["samples_spanning_versions"] += span > 0
        c["num_aborts_sum"] += sample.num_aborts

    async def _finish_group(self, run: _GroupRun) -> None:
        prompt = run.prompt
        group = TrajectoryGroup(
            uid=prompt.uid,
            epoch=prompt.epoch,
            datum=prompt.datum,
            samples=list(run.samples),
            launch_version=run.launch_version,
            created_at=run.created_at,
            finished_at=time.time(),
        )
        if self._group_filter.active:
            verdict = await self._group_filter.reason(group)
            if verdict is not None:
                await self._queue.report_filtered.remote(prompt.uid, prompt.epoch, *verdict)
                del self._groups[(prompt.epoch, prompt.uid)]
                self._admission.on_release()  # the stream refills: the batch still gets its groups
                self._counters["groups_filtered"] += 1
                self._failed_in_a_row = 0
                self._wake.set()
                return
        start = time.monotonic()
        self._puts_waiting += 1  # a full queue holds back new launches: back-pressure on generation
        try:
            await self._queue.put.remote(group)
        finally:
            self._puts_waiting -= 1
            self._counters["put_wait_s"] += time.monotonic() - start
            self._wake.set()
        del self._groups[(prompt.epoch, prompt.uid)]
        self._counters["groups_done"] += 1
        self._failed_in_a_row = 0

    async def _fail_group(self, run: _GroupRun, error: BaseException) -> None:
        """Every retry of one sample failed: drop the whole prompt with the error as the reason."""
        if run.failed:
            return
        run.failed = True
        current = asyncio.current_task()
        for task in run.tasks:
            if task is not current:
                task.cancel()
        prompt = run.prompt
        detail = f"{type(error).__name__}: {error}"
        reason = "invalid_reward" if isinstance(error, InvalidReward) else "rollout_failed"
        logger.warning("prompt uid=%s epoch=%d filtered (%s): %s", prompt.uid, prompt.epoch, reason, detail)
        await self._queue.report_filtered.remote(prompt.uid, prompt.epoch, reason, detail)
        del self._groups[(prompt.epoch, prompt.uid)]
        self._admission.on_release()
        self._counters["prompts_failed"] += 1
        self._failed_in_a_row += 1
        if self._failed_in_a_row >= MAX_FAILED_PROMPTS_IN_A_ROW:
            raise RuntimeError(
                f"{self._failed_in_a_row} prompts in a row were filtered ({reason}, after up to "
                f"{self.settings.max_retries + 1} rollout attempts each); last error: {detail}"
            ) from error
        self._wake.set()

    # ------------------------------------------------------------------ bookkeeping

    def _update_idle(self) -> None:
        """Idle = paused, throttled by the admission budget, or nothing generating."""
        self._idle.update(self._paused or not self._admission.can_launch() or self._running == 0)

    async def _cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
