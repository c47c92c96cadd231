# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The weight-update process group: two real processes rendezvous over TCP and broadcast over gloo."""

from __future__ import annotations

import multiprocessing as mp
import random
import socket

import pytest
import torch


def _free_port() -> int:
    """A free port below the ephemeral range. A port the kernel handed out (bind to 0) can be handed out
    again, to any outgoing connection, before the rank that is to listen on it binds it."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral_low = int(f.read().split()[0])
    for port in random.sample(range(20000, min(ephemeral_low, 32768)), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def _rank_main(rank: int, port: int, default_group_port: int | None, results: mp.Queue) -> None:
    """One rank: optionally its own default gloo world first, then two named weight-update groups."""
    import torch.distributed as dist

    from rllm_fully_async.sync.weight_update_group import (
        broadcast_tensor,
        destroy_weight_update_group,
        init_weight_update_group,
    )

    if default_group_port is not None:
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{default_group_port}", rank=0, world_size=1
        )
    group_a = init_weight_update_group("127.0.0.1", port, rank, 2, "weights_a", timeout_s=30)
    group_b = init_weight_update_group("127.0.0.1", port, rank, 2, "weights_b", timeout_s=30)

    from_rank0 = torch.arange(6, dtype=torch.float32).reshape(2, 3) if rank == 0 else torch.zeros(2, 3)
    broadcast_tensor(group_a, from_rank0, src=0)
    from_rank1 = (
        torch.full((4,), 7, dtype=torch.bfloat16) if rank == 1 else torch.zeros(4, dtype=torch.bfloat16)
    )
    broadcast_tensor(group_b, from_rank1, src=1)

    destroy_weight_update_group(group_a)
    destroy_weight_update_group(group_b)
    default_alive = dist.is_initialized()
    if default_group_port is not None:
        dist.destroy_process_group()
    results.put((rank, from_rank0.tolist(), from_rank1.float().tolist(), default_alive))


def test_two_processes_broadcast_over_two_named_groups() -> None:
    """Rank 1 runs inside its own default gloo world, rank 0 has none: both set-ups must work."""
    rank_with_default_group = 1
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [
        ctx.Process(
            target=_rank_main,
            args=(rank, port, _free_port() if rank == rank_with_default_group else None, results),
        )
        for rank in range(2)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    assert [proc.exitcode for proc in procs] == [0, 0]
    by_rank = {rank: rest for rank, *rest in (results.get(timeout=5) for _ in procs)}
    for rank in range(2):
        tensor_a, tensor_b, default_alive = by_rank[rank]
        assert tensor_a == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
        assert tensor_b == [7.0] * 4
        # Destroying the weight-update groups leaves a default group alone.
        assert default_alive == (rank == rank_with_default_group)


def test_bad_rank_is_rejected_before_any_rendezvous() -> None:
    from rllm_fully_async.sync.weight_update_group import init_weight_update_group

    with pytest.raises(ValueError, match="rank=2"):
        init_weight_update_group("127.0.0.1", _free_port(), 2, 2, "g")
    with pytest.raises(ValueError, match="group_name"):
        init_weight_update_group("127.0.0.1", _free_port(), 0, 2, "")
