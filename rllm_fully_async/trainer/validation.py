# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Validation on ``data.val_files`` with the weights the rollout servers hold at that moment.

The trainer calls it right after a weight sync and does not sync again until it returns, so one
validation sees one fixed set of weights. It uses the same rollout function and reward as training,
with verl's ``actor_rollout_ref.rollout.val_kwargs`` sampling settings.

A validation sample that fails (its rollout or reward function raises, misses
``async_training.sample_timeout_s``, or the reward is not a finite number) is counted in
``val/errors`` and reported with its prompt; it does not end the run, whose training is done.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, defaultdict
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from rllm_fully_async.rollout.client import RolloutClient
from rllm_fully_async.rollout.executor import ExecutorSettings, load_prompts
from rllm_fully_async.rollout.reward_guard import WatchedReward, check_reward, function_name
from rllm_fully_async.rollout.rollout_fn import load_reward_fn, load_rollout_fn

logger = logging.getLogger(__name__)
# How many failed validation samples are printed per validation; all are counted.
REPORTED_ERRORS = 5


class Validator:
    """Runs every validation prompt ``val_kwargs.n`` times and reports the mean reward per data source."""

    def __init__(self, cfg: DictConfig, server_urls: list[str], tokenizer: Any) -> None:
        container = OmegaConf.to_container(cfg, resolve=True)
        settings = ExecutorSettings.from_config(container)
        val_files = cfg.data.val_files
        self.prompts = load_prompts(
            [val_files] if isinstance(val_files, str) else list(val_files), settings.prompt_key
        )
        self.tokenizer = tokenizer
        self.server_urls = list(server_urls)
        self.rollout_fn = load_rollout_fn(settings.rollout_fn)
        self.reward_fn = load_reward_fn(settings.custom_reward_function)
        val = cfg.actor_rollout_ref.rollout.val_kwargs
        self.n = int(val.n)
        self.sampling_params = {
            "temperature": float(val.temperature) if val.do_sample else 0.0,
            "top_p": float(val.top_p),
            "top_k": int(val.top_k),
            "max_new_tokens": settings.max_response_length,
        }
        self.max_concurrency = settings.max_concurrency
        self.prompt_key = settings.prompt_key
        self.sample_timeout_s = settings.sample_timeout_s
        self.api_key = settings.api_key
        self.router_url = settings.router_url

    def run(self, version: int) -> dict[str, float]:
        """Validate; returns verl-style ``val-core/<data_source>/reward/mean@n`` metrics."""
        return asyncio.run(self._run(version))

    async def _run(self, version: int) -> dict[str, float]:
        rewards: dict[str, list[float]] = defaultdict(list)
        errors: Counter = Counter()
        limit = asyncio.Semaphore(self.max_concurrency)
        rollout_name = function_name(self.rollout_fn)
        async with RolloutClient(
            self.server_urls, router_url=self.router_url, api_key=self.api_key
        ) as client:

            async def one(uid: str, datum: dict) -> None:
                source = datum.get("data_source", "unknown")
                reward = WatchedReward(self.reward_fn)
                try:
                    async with limit:
                        sample = await asyncio.wait_for(
                            self.rollout_fn(
                                client,
                                self.tokenizer,
                                **{**datum, "prompt": datum[self.prompt_key]},
                                sampling_params=dict(self.sampling_params),
                                reward_fn=reward,
                                partial_rollout=False,
                            ),
                            timeout=self.sample_timeout_s,
                        )
                    value = check_reward(sample.reward, f"rollout function {rollout_name!r} (Sample.reward)")
                except Exception as e:
                    if isinstance(e, TimeoutError) and not str(e):
                        stuck = reward.name if reward.running else rollout_name
                        e = TimeoutError(f"{stuck!r} did not return within {self.sample_timeout_s}s")
                    errors[source] += 1
                    if sum(errors.values()) <= REPORTED_ERRORS:
                        logger.warning(
                            "validation sample of prompt uid=%s failed: %s: %s", uid, type(e).__name__, e
                        )
                    return
                rewards[source].append(value)

            await asyncio.gather(*(one(p.uid, p.datum) for p in self.prompts for _ in range(self.n)))
        metrics = {
            f"val-core/{source}/reward/mean@{self.n}": float(np.mean(v)) for source, v in rewards.items()
        }
        metrics.update({f"val/errors/{source}": count for source, count in errors.items()})
        metrics["val/errors"] = sum(errors.values())
        metrics["val/param_version"] = version
        if errors:
            logger.warning(
                "validation at version %d: %d of %d samples failed (%s by data source) and are left out of "
                "the mean",
                version,
                sum(errors.values()),
                len(self.prompts) * self.n,
                dict(errors),
            )
        return metrics
