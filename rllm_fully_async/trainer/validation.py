# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Validation on ``data.val_files`` with the weights the rollout servers hold at that moment.

The trainer calls it right after a weight sync and does not sync again until it returns, so one
validation sees one fixed set of weights. It uses the same rollout function and reward as training,
with verl's ``actor_rollout_ref.rollout.val_kwargs`` sampling settings.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from rllm_fully_async.rollout.client import RolloutClient
from rllm_fully_async.rollout.executor import ExecutorSettings, load_prompts
from rllm_fully_async.rollout.rollout_fn import load_reward_fn, load_rollout_fn


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

    def run(self, version: int) -> dict[str, float]:
        """Validate; returns verl-style ``val-core/<data_source>/reward/mean@n`` metrics."""
        return asyncio.run(self._run(version))

    async def _run(self, version: int) -> dict[str, float]:
        rewards: dict[str, list[float]] = defaultdict(list)
        limit = asyncio.Semaphore(self.max_concurrency)
        async with RolloutClient(self.server_urls) as client:

            async def one(datum: dict) -> None:
                async with limit:
                    sample = await self.rollout_fn(
                        client,
                        self.tokenizer,
                        **{**datum, "prompt": datum[self.prompt_key]},
                        sampling_params=dict(self.sampling_params),
                        reward_fn=self.reward_fn,
                        partial_rollout=False,
                    )
                rewards[datum.get("data_source", "unknown")].append(float(sample.reward))

            await asyncio.gather(*(one(p.datum) for p in self.prompts for _ in range(self.n)))
        metrics = {
            f"val-core/{source}/reward/mean@{self.n}": float(np.mean(v)) for source, v in rewards.items()
        }
        metrics["val/param_version"] = version
        return metrics
