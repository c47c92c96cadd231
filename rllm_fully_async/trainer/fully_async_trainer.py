# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""FullyAsyncTrainer: verl's PPO step, fed by the rollout queue instead of a synchronous generate call.

The trainer never generates. It takes ``required_samples`` finished groups from the MessageQueue,
assembles them into a ``DataProto``, and runs verl's own pieces on them: old-log-prob recompute (or
bypass), reference policy and KL, rollout correction between the behaviour and the current policy,
the configured advantage estimator, and ``update_actor`` on the patched ``dp_actor``. Every
``trigger_parameter_sync_step`` steps it pushes the new weights to the rollout servers (ParamSync).

A rollout server the run started that dies is restarted, taken back into the weight-update group and
given the current weights, between steps or while the trainer waits for data (a
:class:`~rllm_fully_async.servers.supervisor.ServerSupervisor`); the run goes on.

Why this is not a subclass of verl's ``RayPPOTrainer``: its ``__init__`` needs verl's role/resource-pool
mapping, asserts a hybrid (colocated) rollout engine and builds verl's own dataloaders over the training
files; none of that exists here (prompts are drawn by the RolloutExecutor, rollout runs on separate
servers). Skipping that constructor while inheriting its methods made every reused method depend on
whichever attributes verl 0.7.1 happened to read. What the step reuses from the parent is small with the
worker implementation used here (verl's legacy workers): ``compute_log_prob``, ``compute_ref_log_prob``
and ``update_actor`` calls on the worker group, and sequence-length balancing, which this calls through
verl's ``seqlen_balancing`` functions. verl's algorithm pieces (advantage estimators, KL penalty, rollout
correction, data metrics) are module functions and are used as they are.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm
from verl import DataProto
from verl.trainer.ppo.core_algos import agg_loss
from verl.trainer.ppo.metric_utils import compute_data_metrics
from verl.trainer.ppo.ray_trainer import apply_kl_penalty, compute_advantage
from verl.trainer.ppo.utils import need_reference_policy
from verl.utils.debug import marked_timer
from verl.utils.metric import reduce_metrics
from verl.utils.seqlen_balancing import (
    calculate_workload,
    get_seqlen_balanced_partitions,
    log_seqlen_unbalance,
)

from rllm_fully_async.servers.rollout_servers import RolloutServers
from rllm_fully_async.servers.supervisor import ServerSupervisor
from rllm_fully_async.sync.param_sync import ParamSync
from rllm_fully_async.trainer import checkpoint
from rllm_fully_async.trainer.batch import build_batch
from rllm_fully_async.trainer.metrics import RunSummary, async_metrics

STATE_FILE = checkpoint.STATE_FILE
LEDGER_FILE = checkpoint.LEDGER_FILE
# How long a timeout message waits for the rollout side to say what it is doing.
ACTIVITY_TIMEOUT_S = 10.0
# What the progress bar shows of each step (every metric still goes to the trainer.logger backends).
CONSOLE_METRICS = {
    "reward": "reward/mean",
    "staleness": "async/staleness_mean",
    "samples/s": "rollout/samples_per_s",
    "trainer_idle": "async/trainer_idle_ratio",
    "sync_s": "async/param_sync_s",
}

logger = logging.getLogger(__name__)


@dataclass
class ExecutorGate:
    """Lets ParamSync pause and resume the rollout executor actor around a weight sync."""

    executor: Any

    def pause(self) -> None:
        ray.get(self.executor.pause.remote())

    def resume(self, version: int) -> None:
        ray.get(self.executor.resume.remote(version))


@dataclass
class StepClock:
    """Wall time split into waiting for data, training and syncing, for the idle ratios."""

    started: float = field(default_factory=time.perf_counter)
    waiting_s: float = 0.0
    sync_s: float = 0.0

    def idle_ratio(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.waiting_s / elapsed if elapsed > 0 else 0.0


def generated_data_metrics(batch: DataProto, generated_mask: torch.Tensor) -> dict[str, Any]:
    """verl's data metrics (scores, advantages, lengths) over every generated token.

    Rejection sampling (``algorithm.rollout_correction.rollout_rs``) masks tokens out of the loss, and
    on a stale batch it can mask all of them; verl's ``compute_data_metrics`` fails on an empty mask,
    and what was generated is what these metrics describe anyway. The loss mask is put back afterwards.
    """
    trained_mask = batch.batch["response_mask"]
    batch.batch["response_mask"] = generated_mask
    try:
        return compute_data_metrics(batch=batch, use_critic=False)
    finally:
        batch.batch["response_mask"] = trained_mask


class FullyAsyncTrainer:
    """verl's PPO step with the rollout moved out of it (see the module docstring for what is reused)."""

    def __init__(
        self,
        config: DictConfig,
        tokenizer,
        actor_wg,
        queue,
        executor,
        param_sync: ParamSync,
        total_training_steps: int,
        ref_wg=None,
        validate_fn: Callable[[int], dict[str, float]] | None = None,
        servers: RolloutServers | None = None,
    ) -> None:
        """``servers``: the rollout servers this run started, restarted when they die (``None`` for
        servers started outside the run, which it cannot restart)."""
        self.config = config
        self.tokenizer = tokenizer
        self.actor_rollout_wg = actor_wg
        self.ref_policy_wg = ref_wg
        self.queue = queue
        self.executor = executor
        self.param_sync = param_sync
        self.supervisor = ServerSupervisor(servers, param_sync)
        self.validate_fn = validate_fn
        self.total_training_steps = total_training_steps
        self.use_reference_policy = need_reference_policy(config)
        if self.use_reference_policy and ref_wg is None:
            raise ValueError("use_kl_loss / use_kl_in_reward need a reference policy worker group (ref_wg)")
        if config.algorithm.use_kl_in_reward:
            from verl.trainer.ppo import core_algos

            self.kl_ctrl_in_reward = core_algos.get_kl_controller(config.algorithm.kl_ctrl)
        self.async_cfg = config.async_training
        self.global_steps = 0
        self.param_version = 0
        self.clock = StepClock()
        self.summary = RunSummary()

    # ------------------------------------------------------------------ training loop
    def fit(self) -> RunSummary:
        """Train until ``total_training_steps`` or until the rollout side has no more data."""
        from verl.utils.tracking import Tracking

        backends = list(self.config.trainer.logger)
        # verl's console backend prints every metric of a step on one line; the progress bar shows a few.
        tracking = Tracking(
            project_name=self.config.trainer.project_name,
            experiment_name=self.config.trainer.experiment_name,
            default_backend=[b for b in backends if b != "console"],
            config=OmegaConf.to_container(self.config, resolve=True),
        )
        self._load_checkpoint()
        run_ref = self.executor.run.remote()
        progress = tqdm(total=self.total_training_steps, initial=self.global_steps, desc="Training")
        self.clock = StepClock()
        try:
            while self.global_steps < self.total_training_steps:
                groups = self._next_groups(run_ref)
                if not groups:
                    break
                pipeline_refs = self._request_pipeline_metrics()
                metrics = self._train_step(groups)
                self.global_steps += 1
                is_last = self.global_steps >= self.total_training_steps
                if self.global_steps % self.async_cfg.trigger_parameter_sync_step == 0 or is_last:
                    metrics.update(self._sync_weights())
                self.summary.add_step(self.global_steps, metrics)  # before the checkpoint, which holds it
                if self._due(self.config.trainer.save_freq, is_last):
                    self._save_checkpoint()
                if self.validate_fn is not None and self._due(self.config.trainer.test_freq, is_last):
                    metrics.update(self._validate_now())
                metrics.update(self._pipeline_metrics(pipeline_refs))
                metrics["async/servers_restarted"] = self.supervisor.restarted
                tracking.log(data=metrics, step=self.global_steps)
                progress.set_postfix(console_postfix(metrics), refresh=False)
                progress.update(1)
        finally:
            progress.close()
            ray.get(self.executor.stop.remote())
        counts = ray.get(self.queue.counts.remote())
        details = ray.get(self.queue.recent_filter_details.remote())
        self.summary.finish(self._pipeline_metrics(self._request_pipeline_metrics()), counts, details)
        self._write_ledger(counts)
        return self.summary

    def _write_ledger(self, counts: dict[str, Any]) -> None:
        """The run's final accounting, for audits: counts plus how often each prompt was trained per epoch."""
        ledger = {"counts": counts, "trained_uids": ray.get(self.queue.trained_uids.remote())}
        checkpoint.write_json(os.path.join(self.config.trainer.default_local_dir, LEDGER_FILE), ledger)

    def _due(self, freq: int, is_last: bool) -> bool:
        return freq is not None and freq > 0 and (is_last or self.global_steps % freq == 0)

    def _next_groups(self, run_ref) -> list:
        """Block until the queue yields a batch; surface a rollout failure at once instead of waiting."""
        cfg = self.async_cfg
        start = time.perf_counter()
        get_ref = self.queue.get_batch.remote(
            cfg.required_samples,
            self.param_version,
            cfg.max_staleness,
            cfg.staleness_policy,
            cfg.queue_get_timeout_s,
        )
        ready, recovering_s = self.supervisor.wait(
            lambda timeout_s: ray.wait([get_ref, run_ref], num_returns=1, timeout=timeout_s)[0],
            deadline=time.monotonic() + cfg.queue_get_timeout_s + 30,
            version=self.param_version,
        )
        if not ready:
            raise TimeoutError(
                "no training batch arrived within async_training.queue_get_timeout_s="
                f"{cfg.queue_get_timeout_s}s; the rollout side: {self._rollout_activity()}"
            )
        if ready[0] == run_ref:
            ray.get(run_ref)  # raises the executor's error, if any; otherwise the data is exhausted
        groups, _ended = ray.get(get_ref)
        self.clock.waiting_s += time.perf_counter() - start - recovering_s
        self.clock.sync_s += recovering_s
        groups = list(groups)
        dp_size = self.actor_rollout_wg.world_size
        n_samples = sum(len(g.samples) for g in groups)
        if groups and n_samples % dp_size:
            raise RuntimeError(
                f"final batch of {n_samples} samples does not split over {dp_size} data-parallel ranks; "
                "choose data sizes so that (prompts x rollout.n) divides by the trainer world size"
            )
        return groups

    def _rollout_activity(self) -> str:
        """The executor's and the queue's own account of what they are doing, for a timeout message."""
        try:
            activity, counts = ray.get(
                [self.executor.activity.remote(), self.queue.counts.remote()], timeout=ACTIVITY_TIMEOUT_S
            )
        except Exception as e:  # an unresponsive actor is itself the answer
            return f"the rollout executor or the queue did not answer within {ACTIVITY_TIMEOUT_S}s ({e!r})"
        return f"{activity}; queue: {counts}"

    def _train_step(self, groups: list) -> dict[str, Any]:
        """One PPO/GRPO update on ``groups``, using verl's own estimators and losses."""
        config = self.config
        metrics: dict[str, Any] = {}
        timing: dict[str, float] = {}
        with marked_timer("step", timing):
            batch = build_batch(
                groups,
                pad_token_id=self.tokenizer.pad_token_id,
                trainer_version=self.param_version,
                temperature=config.actor_rollout_ref.rollout.temperature,
            )
            batch.meta_info["global_steps"] = self.global_steps
            if config.trainer.balance_batch and self.actor_rollout_wg.world_size > 1:
                metrics.update(balance_batch(batch, self.actor_rollout_wg.world_size))

            rollout_corr = config.algorithm.get("rollout_correction", None)
            bypass = bool(rollout_corr is not None and rollout_corr.get("bypass_mode", False))
            if bypass:
                from verl.trainer.ppo.rollout_corr_helper import apply_bypass_mode

                apply_bypass_mode(batch, rollout_corr, config.actor_rollout_ref.actor.policy_loss)
            else:
                with marked_timer("old_log_prob", timing):
                    old_log_prob = self.actor_rollout_wg.compute_log_prob(batch)
                entropy = agg_loss(
                    loss_mat=old_log_prob.batch["entropys"],
                    loss_mask=batch.batch["response_mask"],
                    loss_agg_mode=config.actor_rollout_ref.actor.loss_agg_mode,
                )
                metrics["actor/entropy"] = entropy.item()
                old_log_prob.batch.pop("entropys")
                batch = batch.union(old_log_prob)

            if self.use_reference_policy:
                with marked_timer("ref", timing):
                    batch = batch.union(self.ref_policy_wg.compute_ref_log_prob(batch))

            with marked_timer("adv", timing):
                if config.algorithm.use_kl_in_reward:
                    batch, kl_metrics = apply_kl_penalty(
                        batch, kl_ctrl=self.kl_ctrl_in_reward, kl_penalty=config.algorithm.kl_penalty
                    )
                    metrics.update(kl_metrics)
                else:
                    batch.batch["token_level_rewards"] = batch.batch["token_level_scores"]
                generated_mask = batch.batch["response_mask"]
                if rollout_corr is not None and not bypass:
                    from verl.trainer.ppo.rollout_corr_helper import (
                        compute_rollout_correction_and_add_to_batch,
                    )

                    batch, corr_metrics = compute_rollout_correction_and_add_to_batch(batch, rollout_corr)
                    metrics.update(corr_metrics)
                batch = compute_advantage(
                    batch,
                    adv_estimator=config.algorithm.adv_estimator,
                    gamma=config.algorithm.gamma,
                    lam=config.algorithm.lam,
                    num_repeat=config.actor_rollout_ref.rollout.n,
                    norm_adv_by_std_in_grpo=config.algorithm.get("norm_adv_by_std_in_grpo", True),
                    config=config.algorithm,
                )
            with marked_timer("update_actor", timing):
                batch.meta_info["multi_turn"] = config.actor_rollout_ref.rollout.multi_turn.enable
                actor_output = self.actor_rollout_wg.update_actor(batch)
            metrics.update(reduce_metrics(actor_output.meta_info["metrics"]))

        metrics.update(generated_data_metrics(batch, generated_mask))
        metrics.update({f"timing_s/{name}": seconds for name, seconds in timing.items()})
        metrics.update(async_metrics(groups, batch, self.param_version))
        metrics["training/global_step"] = self.global_steps + 1
        return metrics

    def _sync_weights(self) -> dict[str, float]:
        start = time.perf_counter()
        stats = self.supervisor.push(self.param_version + 1, current_version=self.param_version)
        self.param_version += 1
        self.clock.sync_s += time.perf_counter() - start
        return {
            "async/param_version": self.param_version,
            "async/param_sync_s": stats.total_s,
            "async/param_sync_pause_s": stats.pause_s,
            "async/param_sync_transfer_s": stats.transfer_s,
            "async/param_sync_resume_s": stats.resume_s,
        }

    def _validate_now(self) -> dict[str, float]:
        """Validate on the weights the servers hold now; syncs first so they equal the trainer's."""
        if self.global_steps % self.async_cfg.trigger_parameter_sync_step != 0:
            self._sync_weights()
        return self.validate_fn(self.param_version)

    def _request_pipeline_metrics(self) -> list:
        """Ask the queue and the executor for their counters without waiting: the trainer requests them when
        a batch arrives and reads them after the update, so the round trips to actors that may be busy on
        the rollout side overlap training instead of adding to every step."""
        return [self.queue.counts.remote(), self.executor.stats.remote(), self.queue.metrics.remote()]

    def _pipeline_metrics(self, refs: list) -> dict[str, float]:
        counts, rollout, queue_metrics = ray.get(refs)
        out = {f"async/{k}": v for k, v in counts.items() if isinstance(v, int | float)}
        for reason, count in counts.get("filtered_by_reason", {}).items():
            out[f"async/filtered/{reason}"] = count
        out.update({f"rollout/{k}": v for k, v in rollout.items() if isinstance(v, int | float)})
        out.update(queue_metrics)
        out["async/trainer_idle_ratio"] = self.clock.idle_ratio()
        return out

    # ------------------------------------------------------------------ checkpoints
    def _step_dir(self, step: int) -> str:
        return checkpoint.step_dir(self.config.trainer.default_local_dir, step)

    def _save_checkpoint(self) -> None:
        """Actor + optimizer, queue contents, in-flight prompts, dataloader position, counters, version.

        The executor is paused while the rollout state is captured so that the dataloader position,
        the in-flight prompts and the queue agree with each other.
        """
        step_dir = self._step_dir(self.global_steps)
        actor_dir = os.path.join(step_dir, "actor")
        checkpoint.guarded(
            lambda: self.actor_rollout_wg.save_checkpoint(
                actor_dir,
                None,
                self.global_steps,
                max_ckpt_to_keep=self.config.trainer.get("max_actor_ckpt_to_keep", None),
            ),
            actor_dir,
        )
        ray.get(self.executor.pause.remote())
        try:
            state = {
                "global_steps": self.global_steps,
                "param_version": self.param_version,
                "executor": ray.get(self.executor.state_dict.remote()),
                "queue": ray.get(self.queue.state_dict.remote()),
                "summary": self.summary.state_dict(),
            }
        finally:
            ray.get(self.executor.resume.remote(self.param_version))
        root = self.config.trainer.default_local_dir
        checkpoint.save_state(root, self.global_steps, state)
        checkpoint.write_tracker(root, self.global_steps)

    def _load_checkpoint(self) -> None:
        """Resume actor, rollout state and version from the newest intact checkpoint
        (``trainer.resume_mode``); :mod:`rllm_fully_async.trainer.checkpoint` says what is verified."""
        mode = self.config.trainer.resume_mode
        if mode == "disable":
            return
        if mode == "resume_path":
            step_dir = self.config.trainer.resume_from_path
            state = checkpoint.load_state_at(step_dir)
        else:
            found = checkpoint.find_resume_point(os.path.abspath(self.config.trainer.default_local_dir))
            if found is None:
                return
            step_dir, state = found
        self.actor_rollout_wg.load_checkpoint(os.path.join(step_dir, "actor"), del_local_after_load=False)
        self.global_steps = state["global_steps"]
        self.param_version = state["param_version"]
        ray.get(self.queue.load_state_dict.remote(state["queue"]))
        ray.get(self.executor.load_state_dict.remote(state["executor"]))
        self.summary.load_state_dict(state["summary"])
        # The servers restarted with the initial weights: push the checkpoint's weights under its version.
        stats = self.param_sync.sync(self.param_version)
        logger.info(
            "resumed from %s at step %d, param version %d (weights pushed in %.2fs)",
            step_dir,
            self.global_steps,
            self.param_version,
            stats.total_s,
        )


def balance_batch(batch: DataProto, dp_size: int) -> dict[str, float]:
    """Reorder ``batch`` in place so every data-parallel rank gets a similar token count (verl's
    ``RayPPOTrainer._balance_batch`` without its prefix-grouper and mini-batch variants); returns verl's
    ``global_seqlen/*`` balance metrics."""
    attention_mask = batch.batch["attention_mask"]
    seqlens = attention_mask.view(attention_mask.shape[0], -1).sum(-1)
    workload = calculate_workload(seqlens)
    partitions = get_seqlen_balanced_partitions(workload, k_partitions=dp_size, equal_size=True)
    for i, partition in enumerate(partitions):  # smaller micro-batches at both ends of each rank's share
        partition.sort(key=lambda x: (workload[x], x))
        partitions[i] = partition[::2] + partition[1::2][::-1]
    batch.reorder(torch.tensor([j for partition in partitions for j in partition]))
    return log_seqlen_unbalance(seqlen_list=seqlens.tolist(), partitions=partitions, prefix="global_seqlen")


def console_postfix(metrics: dict[str, Any]) -> dict[str, str]:
    """The few numbers of a step a person watches, for the progress bar."""
    return {name: f"{metrics[key]:.3g}" for name, key in CONSOLE_METRICS.items() if key in metrics}
