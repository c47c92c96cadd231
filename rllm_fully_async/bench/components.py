# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Component benchmarks: the MessageQueue against ray.util.queue, weight sync against raw gloo."""

from __future__ import annotations

import pickle
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from rllm_fully_async.bench.engine import Engine
from rllm_fully_async.bench.placement import Placement, pin_actors, pin_this_process
from rllm_fully_async.bench.run import compose
from rllm_fully_async.bench.settings import BenchSettings, log
from rllm_fully_async.bench.task import Task, model_shape
from rllm_fully_async.rollout.trajectory import Sample, TrajectoryGroup

# ------------------------------------------------------------------------------------------------ components


def _group(index: int, n: int, length: int) -> TrajectoryGroup:
    rng = np.random.default_rng(index)
    samples = [Sample(prompt_ids=list(range(19)), response_ids=rng.integers(0, 320, length).tolist(),
                      response_logprobs=(-rng.random(length)).tolist(), reward=0.5, finish_reason="length",
                      min_version=0, max_version=0) for _ in range(n)]  # fmt: skip
    datum = {"prompt": [{"role": "user", "content": "What is 1+2?"}], "data_source": "bench_digits",
             "extra_info": {"index": index, "max_new_tokens": length}}  # fmt: skip
    return TrajectoryGroup(uid=str(index), epoch=0, datum=datum, samples=samples, launch_version=0)


def bench_queue(settings: BenchSettings, task: Task) -> dict[str, Any]:
    """Groups through Ray: put (pipelined, as concurrent rollouts do), then get in training batches; the
    MessageQueue against a plain ``ray.util.queue.Queue`` on the same groups. Typical groups have the task's
    lengths; large ones 4096 tokens per sample, where bytes rather than calls dominate."""
    count = 32 if settings.smoke else 512
    lengths = task.lengths[:count]
    sizes = {"typical_groups": [_group(i, settings.n, length) for i, length in enumerate(lengths)]}
    if not settings.smoke:
        sizes["large_groups"] = [_group(i, settings.n, 4096) for i in range(count // 8)]
    return {name: _queue_throughput(groups, settings.groups_per_step) for name, groups in sizes.items()}


def _queue_throughput(groups: list[TrajectoryGroup], batch: int, window: int = 16) -> dict[str, Any]:
    import ray
    from ray.util.queue import Queue

    from rllm_fully_async.message_queue import MessageQueue

    start = time.perf_counter()
    payloads = [pickle.dumps(g) for g in groups]
    for payload in payloads:
        pickle.loads(payload)
    pickle_ms = (time.perf_counter() - start) / len(groups) * 1e3
    group_bytes = float(np.mean([len(p) for p in payloads]))

    def through(put, get) -> dict[str, float]:
        pending, start = [], time.perf_counter()
        for g in groups:
            pending.append(put(g))
            if len(pending) >= window:
                ray.get(pending.pop(0))
        ray.get(pending)
        put_s, start = time.perf_counter() - start, time.perf_counter()
        for _ in range(len(groups) // batch):
            ray.get(get(batch))
        get_s = time.perf_counter() - start
        rate = len(groups) / (put_s + get_s)
        return {
            "groups_per_s": rate,
            "mb_per_s": rate * group_bytes / 1e6,
            "put_ms": put_s / len(groups) * 1e3,
            "get_batch_ms": get_s / (len(groups) // batch) * 1e3,
        }

    queue = MessageQueue.options(num_cpus=0).remote(len(groups))
    ray.get([queue.register_drawn.remote(g.uid, g.epoch, g.datum) for g in groups])  # the ledger needs them
    ours = through(queue.put.remote, lambda k: queue.get_batch.remote(k, 0))
    ray.kill(queue)
    plain = Queue(maxsize=len(groups), actor_options={"num_cpus": 0})
    ray.get(plain.actor.qsize.remote())  # started before the clock runs, as the MessageQueue was
    baseline = through(plain.actor.put.remote, plain.actor.get_nowait_batch.remote)
    plain.shutdown()
    return {"groups": len(groups), "group_bytes": group_bytes, "pickle_roundtrip_ms": pickle_ms,
            "message_queue": ours, "ray_queue": baseline}  # fmt: skip


def _gloo_receiver(port: int, nbytes: int, repeats: int, cores: list[int]) -> None:
    import torch

    from rllm_fully_async.sync.weight_update_group import (
        destroy_weight_update_group,
        init_weight_update_group,
    )

    pin_this_process(cores)
    group = init_weight_update_group("127.0.0.1", port, 1, 2, "bench_raw", backend="gloo", timeout_s=60)
    buffer = torch.empty(nbytes, dtype=torch.uint8)
    for _ in range(repeats + 1):
        torch.distributed.broadcast(buffer, src=0, group=group)
    torch.distributed.barrier(group=group)
    destroy_weight_update_group(group)


def raw_gloo_broadcast_s(nbytes: int, placement: Placement, repeats: int = 3) -> float:
    """Seconds per gloo broadcast of one flat ``nbytes`` buffer to another process: the bandwidth bound."""
    import multiprocessing
    import socket

    import torch

    from rllm_fully_async.sync.weight_update_group import (
        destroy_weight_update_group,
        init_weight_update_group,
    )

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = (port, nbytes, repeats, placement.gen_cores)
    peer = multiprocessing.get_context("spawn").Process(target=_gloo_receiver, args=args)
    peer.start()
    try:
        group = init_weight_update_group("127.0.0.1", port, 0, 2, "bench_raw", backend="gloo", timeout_s=60)
        buffer = torch.zeros(nbytes, dtype=torch.uint8)
        torch.distributed.broadcast(buffer, src=0, group=group)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            torch.distributed.broadcast(buffer, src=0, group=group)
        torch.distributed.barrier(group=group)
        seconds = (time.perf_counter() - start) / repeats
        destroy_weight_update_group(group)
    finally:
        peer.join(timeout=60)
        if peer.is_alive():
            peer.kill()
    return seconds


def bench_weight_sync(settings: BenchSettings, placement: Placement) -> dict[str, Any]:
    """ParamSync, the production path (FSDP worker, gloo, engine), against the raw bound, per model size."""
    from rllm_fully_async.toy import model as toy_model

    rows = []
    for shape in settings.weight_sync_shapes:
        with tempfile.TemporaryDirectory(prefix="bench_weights_") as tmp:
            row = _weight_sync_row(toy_model.build(tmp, seed=0, **model_shape(*shape)), placement)
        rows.append({"shape": list(shape), **row})
        log(f"weight sync, {row['params'] / 1e6:.2f}M params: {row['transfer_s']:.3f}s "
            f"(raw gloo {row['raw_gloo_s']:.3f}s)")  # fmt: skip
    return {"backend": "gloo", "sizes": rows,
            "nccl": "GPU-only: not measured without a CUDA device (on GPUs ParamSync uses NCCL)"}  # fmt: skip


def _weight_sync_row(model: Path, placement: Placement) -> dict[str, Any]:
    """Three syncs of one model through ParamSync in the configured load format, three tensor by tensor
    (the baseline), and the raw broadcast of the same bytes."""
    from rllm_fully_async.bench.client_gate import ClientGate
    from rllm_fully_async.sync.param_sync import ParamSync
    from rllm_fully_async.trainer.workers import create_actor_worker_group, shutdown_worker_group

    cfg = compose(
        "fully_async_ppo_cpu",
        [f"actor_rollout_ref.model.path={model}", "actor_rollout_ref.actor.optim.total_training_steps=1"],
    )
    engine = Engine.start_on(placement.gen_cores, str(model))
    load_format = cfg.async_training.weight_sync_load_format
    wg = gate = None
    stats = {}
    try:
        wg = create_actor_worker_group(cfg, role="actor", num_workers=1)
        wg.init_model()
        pin_actors(wg.workers, placement.train_cores)
        gate = ClientGate([engine.url])
        for fmt in dict.fromkeys([None, load_format]):
            sync = ParamSync(wg, [engine.url], gate, backend="gloo", group_name=f"bench_{fmt}",
                             bucket_size_mb=cfg.async_training.weight_sync_bucket_mb, timeout_s=300,
                             load_format=fmt)  # fmt: skip
            try:
                sync.init_group()
                stats[fmt] = [sync.sync(version) for version in (1, 2, 3)]
            finally:
                sync.close()
    finally:
        if gate is not None:
            gate.close()
        if wg is not None:
            shutdown_worker_group(wg)
        engine.stop()

    def median_s(fmt: str | None, part: str) -> float:
        return float(np.median([getattr(s, f"{part}_s") for s in stats[fmt]]))

    nbytes = stats[load_format][-1].bytes
    row = {f"{part}_s": median_s(load_format, part) for part in ("pause", "transfer", "resume", "total")}
    raw = raw_gloo_broadcast_s(nbytes, placement)
    row.update(load_format=load_format, per_tensor_transfer_s=median_s(None, "transfer"),
               per_tensor_total_s=median_s(None, "total"), params=nbytes / 4, bytes=nbytes, raw_gloo_s=raw,
               raw_gloo_gb_per_s=nbytes / raw / 1e9)  # fmt: skip
    return {**row, "fraction_of_bound": raw / row["transfer_s"]}
