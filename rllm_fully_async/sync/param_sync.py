# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""ParamSync: push the trainer's new weights into the rollout servers, every K training steps.

One sync is: pause generation (running requests are aborted and later resume as partial rollouts)
▸ broadcast every weight from training-worker rank 0 to all servers over a torch.distributed group
(NCCL on GPU, gloo on CPU), one bucket at a time, each bucket as one buffer in SGLang's
``flattened_bucket`` format or tensor by tensor ▸ bump the servers' weight version ▸ flush their
prefix cache ▸ resume generation under the new version.

The trainer process is synchronous; the servers' HTTP API is driven by a
:class:`~rllm_fully_async.rollout.client.RolloutClient` on a private event loop in a background thread. Every
step waits at most ``timeout_s`` and then raises a :class:`TimeoutError` naming the step, so a dead
or stuck server or worker fails the run instead of hanging it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import ray
import torch

from rllm_fully_async.cluster.addresses import LOOPBACK, is_loopback_url
from rllm_fully_async.cluster.placement import cluster_nodes
from rllm_fully_async.config_schema import LOAD_FORMATS
from rllm_fully_async.rollout.client import RolloutClient, RolloutClientError

T = TypeVar("T")

DEFAULT_GROUP_NAME = "rllm_fully_async_weights"

logger = logging.getLogger(__name__)


class RolloutGate(Protocol):
    """What ParamSync needs from whoever sends generation requests."""

    def pause(self) -> None:
        """Stop sending new requests and abort the running ones (they resume later: partial rollout)."""

    def resume(self, version: int) -> None:
        """Send requests again; what is generated from now on comes from weight ``version``."""


@dataclass
class SyncStats:
    """Wall time of one sync: ``pause_s`` (gate), ``transfer_s`` (broadcast + load on the servers),
    ``resume_s`` (version bump, cache flush, gate), ``total_s``; ``bytes`` broadcast by trainer rank 0 in
    ``broadcasts`` collectives, with at most ``peak_buckets_in_flight`` buckets sent and not yet received."""

    version: int
    pause_s: float
    transfer_s: float
    resume_s: float
    total_s: float
    bytes: int
    broadcasts: int
    peak_buckets_in_flight: int = 0


class ParamSyncError(RuntimeError):
    """A weight-sync step failed on a server or a training worker."""


def split_into_buckets(
    items: Iterable[T], nbytes: Callable[[T], int], bucket_bytes: int
) -> Iterator[list[T]]:
    """Consecutive runs of ``items`` of at most ``bucket_bytes`` each (a larger item is a bucket alone).

    Lazy: an item is taken from ``items`` only when the bucket before it is full or being built, so
    a generator that gathers tensors holds at most one bucket plus one tensor at a time.
    """
    bucket: list[T] = []
    size = 0
    for item in items:
        item_bytes = nbytes(item)
        if bucket and size + item_bytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append(item)
        size += item_bytes
    if bucket:
        yield bucket


def metadata_nbytes(entry: tuple[str, str, list[int]]) -> int:
    """Bytes of one ``(name, dtype, shape)`` weight-metadata entry."""
    _name, dtype, shape = entry
    return torch.Size(shape).numel() * getattr(torch, dtype).itemsize


def check_flattened_alignment(buckets: list[list[tuple[str, str, list[int]]]]) -> None:
    """Raise naming the first tensor that would start a flattened bucket at a misaligned byte.

    A receiver views each tensor's bytes as its dtype, which needs the tensor to start at a multiple of its
    element size; SGLang does not pad between tensors.
    """
    for bucket in buckets:
        offset = 0
        for entry in bucket:
            name, dtype, _shape = entry
            itemsize = getattr(torch, dtype).itemsize
            if offset % itemsize:
                raise ValueError(
                    f"weight {name!r} ({dtype}) would start at byte {offset} of its flattened bucket, not a "
                    f"multiple of {itemsize}: send tensor by tensor "
                    "(async_training.weight_sync_load_format=null) or cast every weight to one dtype"
                )
            offset += metadata_nbytes(entry)


class EventLoopThread:
    """An asyncio event loop in a daemon thread, so synchronous code can drive async clients."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float, step: str) -> T:
        """Run ``coro`` on the loop; past ``timeout_s`` cancel it, raise ``TimeoutError`` naming ``step``."""
        future = self.submit(coro)
        try:
            return future.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:  # the builtin TimeoutError since Python 3.11
            if future.done():
                raise  # raised by the coroutine itself, not the wait
            future.cancel()
            raise TimeoutError(f"{step} did not finish within {timeout_s:g} s") from None

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


class ParamSync:
    """Pushes weights from a training worker group (``trainer.workers``) into rollout servers.

    ``actor_wg`` is a ``RayWorkerGroup`` of those workers; rank 0 is group rank 0 of the weight-update
    group, server ``i`` (``tp_size`` ranks each) takes ranks ``1 + i * tp_size`` onward.
    ``master_address`` is where the group meets, on worker rank 0's node; None: the loopback when the Ray
    cluster has one node and every server listens on the loopback, else the IP Ray knows rank 0's node by.
    ``dtype`` (e.g. ``"bfloat16"``): the servers' dtype, to which each bucket is converted as it is sent (so
    fp32 master weights cross the wire as bf16 for a bf16 rollout); ``None`` keeps the trainer's dtype.
    ``max_buckets_in_flight``: buckets worker rank 0 may have sent and the servers not yet received.
    ``load_format="flattened_bucket"`` sends each bucket as one buffer (SGLang's format of that name);
    ``None`` sends tensor by tensor, which every SGLang version with this API understands.
    After :meth:`init_group`, ``metadata`` lists every tensor in broadcast order and ``buckets`` how it
    is split into requests of at most ``bucket_size_mb``.
    """

    def __init__(
        self,
        actor_wg: Any,
        server_urls: list[str],
        gate: RolloutGate,
        *,
        backend: str = "gloo",
        group_name: str = DEFAULT_GROUP_NAME,
        bucket_size_mb: float = 256,
        timeout_s: float = 600.0,
        master_address: str | None = None,
        tp_size: int = 1,
        dtype: str | None = None,
        load_format: str | None = None,
        max_buckets_in_flight: int = 2,
        api_key: str | None = None,
    ) -> None:
        if not server_urls:
            raise ValueError("server_urls is empty: ParamSync needs at least one rollout server")
        if backend not in ("gloo", "nccl"):
            raise ValueError(f"backend={backend!r}: use 'nccl' between GPUs or 'gloo' on CPU")
        if bucket_size_mb <= 0:
            raise ValueError(f"bucket_size_mb={bucket_size_mb} must be positive")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s={timeout_s} must be positive")
        if dtype is not None and not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"dtype={dtype!r} is not a torch dtype name such as 'bfloat16' or 'float32'")
        if max_buckets_in_flight < 1:
            raise ValueError(f"max_buckets_in_flight={max_buckets_in_flight} must be >= 1")
        if load_format not in LOAD_FORMATS:
            raise ValueError(f"load_format={load_format!r}: use None (per tensor) or 'flattened_bucket'")
        self.actor_wg = actor_wg
        self.server_urls = list(server_urls)
        self.gate = gate
        self.backend = backend
        self.group_name = group_name
        self.bucket_size_mb = bucket_size_mb
        self.timeout_s = timeout_s
        self.master_address = master_address
        self.dtype = dtype
        self.load_format = load_format
        self.max_buckets_in_flight = max_buckets_in_flight
        self.world_size = 1 + len(self.server_urls) * tp_size
        self.metadata: list[tuple[str, str, list[int]]] | None = None
        self.buckets: list[list[tuple[str, str, list[int]]]] = []
        self._loop = EventLoopThread("param-sync")
        # The client's own HTTP timeout is a little longer, so the step timeout below fires first
        # and names the step.
        self._client = RolloutClient(
            self.server_urls, tp_size=tp_size, control_timeout_s=timeout_s + 5.0, api_key=api_key
        )

    # ------------------------------------------------------------------ public API

    def init_group(self) -> None:
        """Worker rank 0 and every server join the weight-update group (concurrently; they rendezvous)."""
        if self.metadata is not None:
            raise RuntimeError(f"weight-update group {self.group_name!r} is already initialised")
        # Loopback only when it reaches everything: one node, and no server elsewhere (rollout_servers.urls).
        local = len(cluster_nodes()) == 1 and all(is_loopback_url(u) for u in self.server_urls)
        # Rank 0 binds the rendezvous port before the servers are told it: no one can take it in between.
        endpoint = self.actor_wg.rendezvous_endpoint(
            self.master_address or (LOOPBACK if local else None), self.timeout_s
        )
        address, port = self._wait_workers(endpoint, "rendezvous_endpoint")[0]
        worker_refs = self.actor_wg.init_weight_update_group(
            address, port, self.world_size, self.group_name, self.backend, self.timeout_s
        )
        server_call = self._client.init_weights_update_group(
            address, port, self.world_size, self.group_name, self.backend
        )
        self._run_with_workers("init_weights_update_group", server_call, worker_refs)
        metadata = self._wait_workers(self.actor_wg.get_weight_metadata(self.dtype), "get_weight_metadata")[0]
        self.buckets = list(
            split_into_buckets(metadata, metadata_nbytes, int(self.bucket_size_mb * 1024 * 1024))
        )
        if self.load_format == "flattened_bucket":
            check_flattened_alignment(self.buckets)
        self.metadata = metadata

    def sync(self, version: int) -> SyncStats:
        """Pause ▸ broadcast all weights ▸ set weight ``version`` ▸ flush caches ▸ resume under ``version``.

        On failure the gate stays paused: the servers may hold a mix of old and new weights.
        """
        if self.metadata is None:
            raise RuntimeError("ParamSync.sync() before init_group(): call init_group() once first")
        start = time.perf_counter()
        self._call_bounded(self.gate.pause, "pausing the rollout (gate.pause)")
        paused = time.perf_counter()

        worker_refs = self.actor_wg.broadcast_weights(
            self.group_name,
            self.bucket_size_mb,
            self.dtype,
            self.load_format == "flattened_bucket",
            self.max_buckets_in_flight,
            self.timeout_s,
        )
        worker_results = self._run_with_workers(
            "update_weights_from_distributed", self._push_buckets(), worker_refs
        )
        transferred = time.perf_counter()

        self._run_on_servers("update_weight_version and flush_cache", self._publish(version))
        self._call_bounded(lambda: self.gate.resume(version), "resuming the rollout (gate.resume)")
        end = time.perf_counter()
        return SyncStats(
            version=version,
            pause_s=paused - start,
            transfer_s=transferred - paused,
            resume_s=end - transferred,
            total_s=end - start,
            bytes=int(worker_results[0]["bytes"]),
            broadcasts=int(worker_results[0]["broadcasts"]),
            peak_buckets_in_flight=int(worker_results[0]["peak_buckets_in_flight"]),
        )

    def rejoin(self) -> None:
        """Form the weight-update group anew with every server, after one of them restarted.

        A restarted server comes back outside the group, and a ``torch.distributed`` group cannot admit a
        member, so every rank leaves and the group forms again. The restarted server still holds the
        initial weights: call :meth:`sync` next.
        """
        self._leave_group()
        self.init_group()

    def close(self) -> None:
        """Tear the weight-update group down on the servers and the workers; stop the HTTP client.

        Best effort and bounded: it runs in ``finally`` blocks, after failures too, so problems (a dead
        server, a worker still stuck in a failed broadcast) are logged instead of raised.
        """
        self._leave_group()
        try:
            self._loop.run(self._client.close(), 10.0, "closing the rollout client")
        finally:
            self._loop.close()

    # ------------------------------------------------------------------ steps

    def _leave_group(self) -> None:
        """Every rank leaves the group, best effort: a server that restarted or died is not in it any more."""
        if self.metadata is not None:
            self.metadata = None
            worker_refs = self.actor_wg.destroy_weight_update_group(self.group_name)
            for step, wait in [
                (
                    "destroy_weights_update_group on the rollout servers",
                    lambda: self._run_on_servers(
                        "destroy_weights_update_group",
                        self._client.destroy_weights_update_group(self.group_name),
                    ),
                ),
                (
                    "destroy_weight_update_group on the training workers",
                    lambda: self._wait_workers(worker_refs, "destroy_weight_update_group"),
                ),
            ]:
                try:
                    wait()
                except Exception as e:  # cleanup must go on; the cause is logged
                    logger.warning("ParamSync: %s failed: %s", step, e)

    async def _push_buckets(self) -> None:
        """Each bucket is one request per server; the servers receive it while worker rank 0 sends it.

        ``flush_cache=False`` per bucket: SGLang would otherwise flush its prefix cache and empty CUDA's cache
        after every bucket; :meth:`_publish` flushes once, after the last.
        """
        for bucket in self.buckets:
            names, dtypes, shapes = zip(*bucket, strict=True)
            await self._client.update_weights_from_distributed(
                list(names),
                list(dtypes),
                list(shapes),
                self.group_name,
                load_format=self.load_format,
                flush_cache=False,
            )

    async def _publish(self, version: int) -> None:
        """Set the servers' weight version, then flush their prefix caches (computed with the old weights).

        SGLang does not apply a ``weight_version`` sent with an update made while paused, hence the explicit
        ``/update_weight_version``. ``/flush_cache`` answers 400 while requests run; none do while paused.
        """
        await self._client.update_weight_version(version)
        await self._client.flush_cache()

    def _run_with_workers(self, step: str, server_call: Coroutine, worker_refs: list) -> list:
        """Await the servers' HTTP call and the workers' Ray calls together; the first failure wins.

        They must run concurrently because they meet in collectives. Returns the workers' results.
        """

        async def both() -> list:
            workers = asyncio.ensure_future(
                asyncio.gather(*(asyncio.wrap_future(r.future()) for r in worker_refs))
            )
            servers = asyncio.ensure_future(server_call)
            pending = {workers, servers}
            try:
                done, pending = await asyncio.wait(
                    pending, timeout=self.timeout_s, return_when=asyncio.FIRST_EXCEPTION
                )
                for task in done:
                    if task.exception() is not None:
                        side = (
                            f"the rollout servers {self.server_urls}"
                            if task is servers
                            else f"the training workers (broadcasting to {self.server_urls})"
                        )
                        raise ParamSyncError(
                            f"weight sync step {step} failed on {side}: {task.exception()}"
                        ) from task.exception()
                if pending:
                    waiting = []
                    if servers in pending:
                        waiting.append(f"rollout servers {self.server_urls}")
                    if workers in pending:
                        waiting.append("training worker rank 0 (or its FSDP peers)")
                    raise TimeoutError(
                        f"weight sync step {step} did not finish within timeout_s={self.timeout_s:g} s "
                        "(async_training.param_sync_timeout_s); "
                        f"still waiting for {' and '.join(waiting)}"
                    )
                return workers.result()
            finally:
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)

        # The loop-level bound is a backstop; both() enforces timeout_s itself and names the side.
        return self._loop.run(both(), self.timeout_s + 30.0, f"weight sync step {step}")

    def _run_on_servers(self, step: str, call: Coroutine) -> None:
        try:
            self._loop.run(
                call, self.timeout_s, f"weight sync step {step} on rollout servers {self.server_urls}"
            )
        except RolloutClientError as e:
            raise ParamSyncError(f"weight sync step {step} failed: {e}") from e

    def _wait_workers(self, refs: list, step: str) -> list:
        try:
            return ray.get(refs, timeout=self.timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise TimeoutError(
                f"training workers did not finish {step} within timeout_s={self.timeout_s:g} s"
            ) from None

    def _call_bounded(self, fn: Callable[[], None], step: str) -> None:
        """Run a synchronous gate call in a daemon thread so that a stuck gate cannot hang the trainer."""
        outcome: list[BaseException | None] = []

        def target() -> None:
            try:
                fn()
                outcome.append(None)
            except BaseException as e:  # handed to the caller below
                outcome.append(e)

        thread = threading.Thread(target=target, name="param-sync-gate", daemon=True)
        thread.start()
        thread.join(self.timeout_s)
        if thread.is_alive():
            raise TimeoutError(f"{step} did not finish within timeout_s={self.timeout_s:g} s")
        if outcome[0] is not None:
            raise ParamSyncError(f"{step} failed: {outcome[0]}") from outcome[0]
