# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""A torch.distributed process group for pushing weights from a trainer into rollout servers.

The group is independent of any default process group, so a trainer that already runs inside its
own ``torch.distributed`` world (FSDP, Megatron) can also join a group with the rollout servers.
It is created exactly as SGLang's server creates its side in ``/init_weights_update_group``
(``sglang.srt.utils.common.init_custom_process_group``, called by
``ModelRunner.init_weights_update_group`` with ``rank = rank_offset + tp_rank``):

* rendezvous through ``tcp://master_address:master_port`` (an IPv6 literal bracketed or not); rank 0 (the
  trainer) hosts the TCP store;
* every key in that store is prefixed with ``group_name`` (``PrefixStore``), so several groups can
  share one store port and two groups with different names coexist in one process;
* the group maps group rank ``i`` to global rank ``i`` so collectives take ``src`` in group ranks.

The same trainer code therefore talks to SGLang (``backend="nccl"``) and to the embedded CPU
engine (``backend="gloo"``).
"""

from __future__ import annotations

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


def init_weight_update_group(
    master_address: str,
    master_port: int,
    rank: int,
    world_size: int,
    group_name: str,
    backend: str = "gloo",
    timeout_s: float = 300.0,
) -> dist.ProcessGroup:
    """Join (rank > 0) or host (rank 0) the weight-update group ``group_name``.

    Blocks until all ``world_size`` ranks have joined or ``timeout_s`` passes (then raises).
    """
    if not group_name:
        raise ValueError("group_name must be a non-empty string (it prefixes every rendezvous key)")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must satisfy 0 <= rank < world_size={world_size}")
    timeout = timedelta(seconds=timeout_s)
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
