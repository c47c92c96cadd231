# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The weight-update process group: two real processes rendezvous over TCP and broadcast over gloo."""

from __future__ import annotations

import errno
import multiprocessing as mp
import socket

import pytest
import torch

from rllm_fully_async.servers.ports import free_port


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
    port = free_port()
    procs = [
        ctx.Process(
            target=_rank_main,
            args=(rank, port, free_port() if rank == rank_with_default_group else None, results),
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
        init_weight_update_group("127.0.0.1", free_port(), 2, 2, "g")
    with pytest.raises(ValueError, match="group_name"):
        init_weight_update_group("127.0.0.1", free_port(), 0, 2, "")


def _server_rank(ports: mp.Queue, results: mp.Queue) -> None:
    """A server's side: join the group at the port it is told, receive one tensor; twice (a re-join)."""
    from rllm_fully_async.sync.weight_update_group import (
        broadcast_tensor,
        destroy_weight_update_group,
        init_weight_update_group,
    )

    for _ in range(2):
        group = init_weight_update_group("127.0.0.1", ports.get(timeout=30), 1, 2, "weights", timeout_s=30)
        received = torch.zeros(3)
        broadcast_tensor(group, received, src=0)
        destroy_weight_update_group(group)
        results.put(received.tolist())


def test_rank0_holds_its_rendezvous_port_from_before_it_is_told_until_the_group_forms() -> None:
    """The port is bound when it is chosen, so nothing can take it before rank 0 listens on it; every
    re-join gets a fresh store the same way."""
    from rllm_fully_async.sync.weight_update_group import (
        broadcast_tensor,
        destroy_weight_update_group,
        host_rendezvous_store,
        init_weight_update_group,
    )

    ctx = mp.get_context("spawn")
    ports, results = ctx.Queue(), ctx.Queue()
    server = ctx.Process(target=_server_rank, args=(ports, results))
    server.start()
    try:
        for round_ in range(2):
            store = host_rendezvous_store("127.0.0.1", timeout_s=30)
            with socket.socket() as other, pytest.raises(OSError) as taken:
                other.bind(("127.0.0.1", store.port))
            assert taken.value.errno == errno.EADDRINUSE
            ports.put(store.port)
            group = init_weight_update_group(
                "127.0.0.1", store.port, 0, 2, "weights", timeout_s=30, store=store
            )
            broadcast_tensor(group, torch.full((3,), float(round_ + 1)), src=0)
            destroy_weight_update_group(group)
            assert results.get(timeout=30) == [float(round_ + 1)] * 3
    finally:
        server.join(30)
        if server.is_alive():
            server.kill()
    assert server.exitcode == 0
