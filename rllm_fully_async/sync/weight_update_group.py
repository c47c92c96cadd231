# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""A torch.distributed process group for pushing weights from a trainer into rollout servers.

The group is independent of any default process group, so a trainer that already runs inside its
own ``torch.distributed`` world (FSDP, Megatron) can also join a group with the rollout servers.
It is created exactly as SGLang's server creates its side in ``/init_weights_update_group``
(``sglang.srt.utils.common.init_custom_process_group``, called by
``ModelRunner.init_weights_update_group`` with ``rank = rank_offset + tp_rank``):

* rendezvous through ``tcp://master_address:master_port`` (an IPv6 literal bracketed or not); rank 0 (the
  trainer) hosts the TCP store, listening on ``master_address`` only (torch's own rendezvous would
  listen on every interface), on a port bound before anyone is told it (:func:`host_rendezvous_store`)
  and held from then on, so nothing else can take the port between choosing and binding it;
* every key in that store is prefixed with ``group_name`` (``PrefixStore``), so several groups can
  share one store port and two groups with different names coexist in one process;
* the group maps group rank ``i`` to global rank ``i`` so collectives take ``src`` in group ranks.

The same trainer code therefore talks to SGLang (``backend="nccl"``) and to the embedded CPU
engine (``backend="gloo"``).
"""

from __future__ import annotations

import errno
import socket
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.distributed_c10d import (
    Backend,
    PrefixStore,
    _new_process_group_helper,
    _world,
    rendezvous,
)

from rllm_fully_async.cluster.addresses import tcp_url


def host_rendezvous_store(master_address: str, timeout_s: float = 300.0) -> dist.TCPStore:
    """Rank 0's rendezvous store, listening on ``master_address`` at a port the kernel picks (``store.port``).

    Binding first and telling the port afterwards closes the race of picking a free port and binding it
    later, when an outgoing connection or another process may have taken it meanwhile.
    """
    return _host_store(master_address, 0, None, timedelta(seconds=timeout_s))


def init_weight_update_group(
    master_address: str,
    master_port: int,
    rank: int,
    world_size: int,
    group_name: str,
    backend: str = "gloo",
    timeout_s: float = 300.0,
    store: dist.Store | None = None,
) -> dist.ProcessGroup:
    """Join (rank > 0) or host (rank 0) the weight-update group ``group_name``.

    ``store``: rank 0's store from :func:`host_rendezvous_store` (listening on ``master_port``); without it
    rank 0 opens one on ``master_port`` itself. Blocks until all ``world_size`` ranks have joined or
    ``timeout_s`` passes (then raises).
    """
    if not group_name:
        raise ValueError("group_name must be a non-empty string (it prefixes every rendezvous key)")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must satisfy 0 <= rank < world_size={world_size}")
    timeout = timedelta(seconds=timeout_s)
    if rank == 0:
        store = store or _host_store(master_address, int(master_port), world_size, timeout)
    else:
        if store is not None:
            raise ValueError("only rank 0 hosts the rendezvous store; other ranks connect to master_port")
        init_method = tcp_url(master_address, int(master_port))
        store, rank, world_size = next(rendezvous(init_method, rank, world_size, timeout=timeout))
    store.set_timeout(timeout)
    store = PrefixStore(group_name, store)
    group, _ = _new_process_group_helper(
        world_size,
        rank,
        [],
        Backend(backend),
        store,
        group_name=group_name,
        timeout=timeout,
        group_desc=group_name,
    )
    _world.pg_group_ranks[group] = {i: i for i in range(world_size)}
    return group


def _host_store(address: str, port: int, world_size: int | None, timeout: timedelta) -> dist.TCPStore:
    """The rendezvous store of rank 0, on a socket bound to ``address`` alone: a store on every interface
    would let any host that reaches this machine join or disturb the group.

    Multi-tenant as torch's own ``tcp://`` rendezvous: a second group on the same port in this process
    shares the server the first one started (the port is then in use, by it)."""
    info = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(max(128, world_size or 0))
        port = sock.getsockname()[1]  # the kernel's pick when asked for port 0
    except OSError as e:
        sock.close()
        if e.errno != errno.EADDRINUSE:
            raise
        sock = None  # this process's store serves the port already (or the store below reports the clash)
    store = dist.TCPStore(
        address,
        port,
        world_size,
        True,
        timeout,
        wait_for_workers=False,
        multi_tenant=True,
        master_listen_fd=sock.fileno() if sock is not None else None,
    )
    if sock is not None:
        sock.detach()  # the store listens on this descriptor from now on: it must stay open
    return store


def broadcast_tensor(
    group: dist.ProcessGroup, tensor: torch.Tensor, src: int = 0, async_op: bool = False
) -> dist.Work | None:
    """Broadcast ``tensor`` in place from group rank ``src`` to every rank of ``group``.

    ``async_op``: return the collective's work at once instead of waiting for it.
    """
    return dist.broadcast(tensor, src=src, group=group, async_op=async_op)


def destroy_weight_update_group(group: dist.ProcessGroup) -> None:
    """Tear the group down; the default process group (if any) is left untouched."""
    dist.destroy_process_group(group)
