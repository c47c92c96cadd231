# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Throughput of the embedded CPU engine: N concurrent requests against one request at a time.

    python -m rllm_fully_async.bench.engine_throughput [--model-path DIR] [--concurrency 32]

Without ``--model-path`` it builds the offline toy model in a temporary directory. Both phases run
in the same engine and the same process, so the printed ratio shows what continuous batching buys.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time

import aiohttp

from rllm_fully_async.servers.rollout_servers import CpuEngineProcess
from rllm_fully_async.toy import model as toy_model


async def _generate(session: aiohttp.ClientSession, url: str, prompt: list[int], max_new_tokens: int) -> int:
    body = {"input_ids": prompt, "sampling_params": {"max_new_tokens": max_new_tokens, "ignore_eos": True}}
    async with session.post(f"{url}/generate", json=body) as response:
        response.raise_for_status()
        return (await response.json())["meta_info"]["completion_tokens"]


async def _measure(url: str, concurrency: int, requests: int, max_new_tokens: int) -> float:
    """Generated tokens per second with ``concurrency`` requests in flight, ``requests`` in total."""
    prompts = [[1, 10 + i % 200, 20 + i % 97, 30] for i in range(requests)]
    semaphore = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:

        async def one(prompt: list[int]) -> int:
            async with semaphore:
                return await _generate(session, url, prompt, max_new_tokens)

        start = time.perf_counter()
        tokens = sum(await asyncio.gather(*(one(p) for p in prompts)))
        return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", default=None, help="HF checkpoint; default: the offline toy model")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--sequential-requests", type=int, default=8)
    parser.add_argument(
        "--num-threads", type=int, default=1, help="torch threads in the engine (1 suits the toy)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model_path = args.model_path or str(toy_model.build(tmp, seed=0))
        with CpuEngineProcess(model_path, num_threads=args.num_threads) as engine:
            asyncio.run(_measure(engine.url, 4, 4, 4))  # warm-up
            one_at_a_time = asyncio.run(
                _measure(engine.url, 1, args.sequential_requests, args.max_new_tokens)
            )
            concurrent = asyncio.run(
                _measure(engine.url, args.concurrency, args.concurrency * 2, args.max_new_tokens)
            )
    print(f"one at a time:           {one_at_a_time:8.1f} generated tokens/s")
    print(f"{args.concurrency:3d} concurrent requests: {concurrent:8.1f} generated tokens/s")
    print(f"speed-up from batching:  {concurrent / one_at_a_time:8.1f}x")


if __name__ == "__main__":
    main()
