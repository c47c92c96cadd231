# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Training workers: verl's legacy actor/ref workers plus pushing weights into the rollout servers.

Rollout never runs inside these workers; it runs on separate inference servers. So each worker is
verl 0.7.1's ``ActorRolloutRefWorker`` (FSDP or Megatron) started with rollout switched off, plus
registered methods that :class:`rllm_fully_async.sync.param_sync.ParamSync` drives:

* ``get_weight_metadata`` - ``(name, dtype, shape)`` of every tensor in Hugging Face naming, the
  order in which the tensors will be broadcast;
* ``rendezvous_endpoint``, ``init_weight_update_group`` / ``destroy_weight_update_group`` - worker rank 0
  hosts the servers' weight-update group as its rank 0 (``rllm_fully_async.sync.weight_update_group``),
  its rendezvous store bound before the servers are told its port;
* ``broadcast_weights`` - every rank takes part in gathering full tensors, a bucket at a time so that
  memory stays bounded, and rank 0 broadcasts them in metadata order (one collective per tensor, or
  one per bucket in the ``flattened_bucket`` format).

They return Ray object refs (non-blocking), so the caller can bound every wait and run the servers'
side of a collective at the same time.

On a CPU-only machine (CI, the demo) the FSDP worker needs five narrow workarounds, each applied
only when verl finds no accelerator; see :func:`apply_cpu_overrides`.
"""

from __future__ import annotations

import datetime
import functools
import importlib.util
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
import ray
import torch
import torch.distributed as dist
from omegaconf import DictConfig, open_dict
from verl.single_controller.base.decorator import Dispatch, register
from verl.single_controller.ray import RayClassWithInitArgs, RayResourcePool, RayWorkerGroup
from verl.single_controller.ray.base import sort_placement_group_by_node_ip
from verl.utils.device import get_device_id, get_device_name
from verl.workers import fsdp_workers

from rllm_fully_async.cluster.addresses import strip_brackets
from rllm_fully_async.cluster.placement import PlacementRequest, reserve, trainer_requests
from rllm_fully_async.patches import VerlPatchError, require_patched_verl
from rllm_fully_async.sync.broadcast_window import BroadcastWindow
from rllm_fully_async.sync.param_sync import split_into_buckets
from rllm_fully_async.sync.weight_update_group import (
    broadcast_tensor,
    destroy_weight_update_group,
    host_rendezvous_store,
    init_weight_update_group,
)
from rllm_fully_async.trainer.off_policy import register as register_policy_losses

# Our role names -> the verl role the worker is built with. Rollout is never built here (the rollout
# servers do that), but "actor" is built as verl's "actor_rollout" so that verl normalises
# ``rollout.log_prob_micro_batch_size``, which its ``compute_log_prob`` reads for the actor.
VERL_ROLES = {"actor": "actor_rollout", "ref": "ref", "actor_ref": "actor_rollout_ref"}

FSDP_STRATEGIES = ("fsdp", "fsdp2")
MEGATRON_STRATEGY = "megatron"

WeightMetadata = list[tuple[str, str, list[int]]]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``: the dtype spelling SGLang's weight-update requests use."""
    return str(dtype).removeprefix("torch.")


def _verl_role(role: str) -> str:
    if role not in VERL_ROLES:
        raise ValueError(f"role={role!r} is not a training-worker role; choose one of {sorted(VERL_ROLES)}")
    return VERL_ROLES[role]


def require_patched_verl_on_this_node() -> None:
    """The patch check, run where the worker runs: every node has its own verl, and one unpatched node would
    train with verl's per-mini-batch steps while the others train with whole-batch ones."""
    try:
        require_patched_verl()
    except VerlPatchError as err:
        node = f"{ray.util.get_node_ip_address()} (node id {ray.get_runtime_context().get_node_id()})"
        raise VerlPatchError(f"on node {node}: {err} (run it on that node)") from None


# ----------------------------------------------------------------------------------------------
# CPU-only workarounds
# ----------------------------------------------------------------------------------------------


def _cpu_device_module_additions() -> dict:
    """Stand-ins for the ``torch.cuda`` functions that verl calls through ``get_torch_device()``.

    ``verl.utils.device.get_torch_device()`` returns ``torch.cpu`` without an accelerator, which
    lacks them: ``fsdp_workers.update_actor`` (``max_memory_allocated`` / ``max_memory_reserved``),
    ``verl.utils.memory_utils.aggressive_empty_cache`` (``memory_reserved``, ``memory_allocated``,
    ``empty_cache``), ``verl.utils.fsdp_utils`` (``empty_cache``), ``memory_utils``
    (``reset_peak_memory_stats``, ``mem_get_info``) and ``checkpoint_manager.BaseCheckpointManager``
    (``get_rng_state`` / ``set_rng_state``). CPU has no device allocator, so memory reads are 0.
    """
    return {
        "memory_allocated": lambda device=None: 0,
        "memory_reserved": lambda device=None: 0,
        "max_memory_allocated": lambda device=None: 0,
        "max_memory_reserved": lambda device=None: 0,
        "reset_peak_memory_stats": lambda device=None: None,
        "empty_cache": lambda: None,
        "mem_get_info": lambda device=None: (
            psutil.virtual_memory().available,
            psutil.virtual_memory().total,
        ),
        "get_rng_state": lambda device="cpu": torch.get_rng_state(),
        "set_rng_state": lambda new_state, device="cpu": torch.set_rng_state(new_state),
        "manual_seed": torch.manual_seed,
    }


def _no_offload_on_cpu(pin_memory: bool = True) -> None:
    """Stands in for ``CPUOffloadPolicy`` in ``fsdp_workers``: without an accelerator nothing is offloaded."""
    return None


def default_to_sdpa(config: DictConfig) -> None:
    """Where flash-attn is absent, build the model with PyTorch's SDPA attention unless the config names one.

    verl's ``_build_model_optimizer`` defaults ``attn_implementation`` to ``"flash_attention_2"``; the GPU
    install can leave flash-attn out (``FLASH_ATTN=skip``), and CPUs never have it.
    """
    with open_dict(config.model):
        if config.model.get("override_config") is None:
            config.model.override_config = {}
        if "attn_implementation" not in config.model.override_config:
            config.model.override_config.attn_implementation = "sdpa"


def apply_cpu_overrides(config: DictConfig) -> None:
    """Let verl 0.7.1's FSDP worker run without an accelerator. Call only on CPU, before its ``__init__``.

    ``config`` is the worker's ``actor_rollout_ref`` config. Each override is the narrowest fix for
    one verl line that assumes a GPU:

    1. ``fsdp_workers.ActorRolloutRefWorker.__init__`` calls ``init_process_group(backend=
       f"cpu:gloo,{get_device_name()}:{get_nccl_backend()}")``, which is ``"cpu:gloo,cpu:nccl"`` on
       CPU and invalid; it only does so when no default group exists, so create a gloo one first.
    2. ``_build_model_optimizer`` defaults ``attn_implementation`` to ``"flash_attention_2"``, which
       needs flash-attn (CUDA only); default it to ``"sdpa"`` unless the config names one.
    3. ``_build_model_optimizer`` wraps FSDP1 with ``sync_module_states=True``, which torch rejects for
       CPU parameters; FSDP2 (``fully_shard``) works on a CPU mesh, so refuse FSDP1 here.
    4. ``get_torch_device()`` is ``torch.cpu``, which lacks the memory and RNG helpers verl calls;
       add CPU stand-ins for the missing ones (:func:`_cpu_device_module_additions`).
    5. ``_build_model_optimizer`` always gives the FSDP2 reference model (and an actor with
       ``fsdp_config.offload_policy``) ``CPUOffloadPolicy(pin_memory=True)``; pinning needs an
       accelerator. Parameters already live in host memory, so build them without offload, as verl
       builds the actor (``offload_policy=None``).
    """
    strategy = config.actor.strategy
    if strategy == "fsdp":
        raise ValueError(
            "actor_rollout_ref.actor.strategy=fsdp (FSDP1) cannot run on CPU: verl wraps it with "
            "sync_module_states=True, which torch only supports on GPU. "
            "Use actor_rollout_ref.actor.strategy=fsdp2."
        )
    if not dist.is_initialized():
        dist.init_process_group(
            backend="gloo",
            rank=int(os.environ.get("RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
            timeout=datetime.timedelta(seconds=config.get("nccl_timeout", 600)),
            init_method=os.environ.get("DIST_INIT_METHOD", None),
        )
    default_to_sdpa(config)
    for name, fn in _cpu_device_module_additions().items():
        if not hasattr(torch.cpu, name):
            setattr(torch.cpu, name, fn)
    fsdp_workers.CPUOffloadPolicy = _no_offload_on_cpu


# ----------------------------------------------------------------------------------------------
# Weight push, shared by the FSDP and Megatron workers
# ----------------------------------------------------------------------------------------------


class WeightSyncMixin:
    """Registered methods that push the actor's weights into the rollout servers' update group.

    A subclass provides ``_full_weights()``: a generator, run on every rank at once (it may use
    collectives), that yields ``(hf_name, full_tensor)`` in a fixed order; and ``_weights_ready()``,
    a context in which the weights are on the device (undoing parameter offload).
    """

    def _init_weight_sync(self) -> None:
        # Names are tracked on every rank so that all ranks agree whether a broadcast may start
        # (otherwise a rank-0-only failure would leave the others inside a gather collective).
        self._weight_group_names: set[str] = set()
        self._weight_groups: dict[str, dist.ProcessGroup] = {}
        # rank 0: rendezvous stores opened for groups not formed yet, by port
        self._rendezvous_stores: dict[int, dist.TCPStore] = {}

    def _full_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        raise NotImplementedError

    def _weight_shapes(self) -> Iterator[tuple[str, torch.dtype, torch.Size]]:
        raise NotImplementedError

    @contextmanager
    def _weights_ready(self):
        yield

    def _require_actor(self, what: str) -> None:
        if not self._is_actor:
            raise RuntimeError(f"{what} needs the actor's weights, but this worker has role={self.role!r}")

    @register(dispatch_mode=Dispatch.ONE_TO_ALL, blocking=False)
    def get_weight_metadata(self, dtype: str | None = None) -> WeightMetadata:
        """``[(hf_name, dtype, shape), ...]`` in broadcast order; ``dtype`` overrides the parameters' dtype.

        Every rank returns the same list.
        """
        self._require_actor("get_weight_metadata")
        return [
            (name, dtype or dtype_name(tensor_dtype), list(shape))
            for name, tensor_dtype, shape in self._weight_shapes()
        ]

    @register(dispatch_mode=Dispatch.ONE_TO_ALL, blocking=False)
    def rendezvous_endpoint(
        self, host: str | None = None, timeout_s: float = 300.0
    ) -> tuple[str, int] | None:
        """``(address, port)`` of the weight-update rendezvous store rank 0 opens on its node and holds until
        ``init_weight_update_group`` uses it (other ranks: ``None``).

        ``host`` None: the IP Ray knows this node by, which the servers on other nodes can reach.
        """
        if self.rank != 0:
            return None
        host = strip_brackets(host or ray.util.get_node_ip_address())
        store = host_rendezvous_store(host, timeout_s)
        self._rendezvous_stores[store.port] = store
        return host, store.port

    @register(dispatch_mode=Dispatch.ONE_TO_ALL, blocking=False)
    def init_weight_update_group(
        self,
        master_address: str,
        master_port: int,
        world_size: int,
        group_name: str,
        backend: str = "gloo",
        timeout_s: float = 300.0,
    ) -> None:
        """Rank 0 hosts the group as its rank 0 and blocks until the servers have joined.

        Not blocking for the caller: the servers must be asked to join while this waits.
        """
        self._require_actor("init_weight_update_group")
        if group_name in self._weight_group_names:
            raise ValueError(f"weight-update group {group_name!r} already exists; destroy it first")
        if self.rank == 0:
            self._weight_groups[group_name] = init_weight_update_group(
                master_address,
                master_port,
                0,
                world_size,
                group_name,
                backend=backend,
                timeout_s=timeout_s,
                store=self._rendezvous_stores.pop(master_port, None),
            )
        self._weight_group_names.add(group_name)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL, blocking=False)
    def destroy_weight_update_group(self, group_name: str) -> None:
        """Leave the group (a no-op for a group this worker does not know)."""
        group = self._weight_groups.pop(group_name, None)
        if group is not None:
            destroy_weight_update_group(group)
        self._weight_group_names.discard(group_name)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL, blocking=False)
    def broadcast_weights(
        self,
        group_name: str,
        bucket_size_mb: float,
        dtype: str | None = None,
        flattened: bool = False,
        max_buckets_in_flight: int = 2,
        timeout_s: float = 600.0,
    ) -> dict:
        """Gather full tensors a bucket at a time; rank 0 broadcasts them in metadata order.

        ``dtype``: the rollout servers' dtype; each bucket is converted to it as it is sent (bf16 servers get
        bf16 bytes from fp32 master weights), one bucket at a time. ``flattened``: one broadcast per bucket of
        the tensors' bytes back to back (SGLang's ``flattened_bucket`` load format) instead of one per tensor.
        At most ``max_buckets_in_flight`` buckets are sent and not yet received (:class:`BroadcastWindow`);
        a wait longer than ``timeout_s`` raises. Not blocking for the caller, who must meanwhile have the
        servers receive. Returns ``{"bytes": bytes broadcast, "broadcasts": collectives issued,
        "peak_buckets_in_flight": most buckets sent and not yet received (all 0 on ranks > 0), "seconds":
        wall time on this rank}``.
        """
        self._require_actor("broadcast_weights")
        if group_name not in self._weight_group_names:
            raise RuntimeError(f"no weight-update group {group_name!r}; call init_weight_update_group first")
        start = time.perf_counter()
        group = self._weight_groups.get(group_name)
        target_dtype = getattr(torch, dtype) if dtype else None
        sent = broadcasts = 0
        window = BroadcastWindow(max_buckets_in_flight, timeout_s)
        with torch.no_grad(), self._weights_ready():
            buckets = split_into_buckets(
                self._full_weights(),
                nbytes=lambda item: item[1].numel() * (target_dtype or item[1].dtype).itemsize,
                bucket_bytes=int(bucket_size_mb * 1024 * 1024),
            )
            for bucket in buckets:
                if group is not None:
                    window.reserve()
                    converted = (t.to(dtype=target_dtype or t.dtype).contiguous() for _name, t in bucket)
                    if flattened:
                        converted = iter([torch.cat([t.reshape(-1).view(torch.uint8) for t in converted])])
                    tensors, works = [], []
                    for tensor in converted:  # each converted just before it is sent
                        tensors.append(tensor)
                        works.append(broadcast_tensor(group, tensor, src=0, async_op=True))
                    sent += sum(tensor.numel() * tensor.element_size() for tensor in tensors)
                    broadcasts += len(tensors)
                    window.push(works, tensors)
                    del tensors, works
                del bucket
            window.drain()
        return {
            "bytes": sent,
            "broadcasts": broadcasts,
            "peak_buckets_in_flight": window.peak,
            "seconds": time.perf_counter() - start,
        }


# ----------------------------------------------------------------------------------------------
# FSDP
# ----------------------------------------------------------------------------------------------


class FSDPActorRefWorker(WeightSyncMixin, fsdp_workers.ActorRolloutRefWorker):
    """verl's FSDP actor/ref worker (roles ``actor``, ``ref``, ``actor_ref``) with weight push.

    The actor update is verl's own ``update_actor`` -> ``DataParallelPPOActor.update_policy``.
    """

    def __init__(self, config: DictConfig, role: str = "actor", **kwargs):
        require_patched_verl_on_this_node()
        verl_role = _verl_role(role)
        if get_device_name() == "cpu":
            apply_cpu_overrides(config)
        elif importlib.util.find_spec("flash_attn") is None:
            default_to_sdpa(config)
        register_policy_losses()  # this project's losses, in the process that builds the actor
        super().__init__(config, verl_role, **kwargs)
        self.role = role
        self._is_rollout = False
        self._init_weight_sync()

    def _sharded_state_dict(self) -> dict[str, torch.Tensor]:
        """The actor's state dict in Hugging Face naming; DTensor shards, nothing gathered yet.

        FSDP2 returns DTensors by default; FSDP1 (built with a device mesh) does so under
        ``SHARDED_STATE_DICT``, the same state verl's own rollout sync reads.
        """
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp import ShardedStateDictConfig, StateDictType
        from verl.utils.fsdp_utils import fsdp_version
        from verl.utils.model import convert_weight_keys

        if self._is_lora:
            raise NotImplementedError(
                "weight sync of LoRA adapters is not supported; unset actor_rollout_ref.model.lora_rank"
            )
        module = self.actor_module_fsdp
        if fsdp_version(module) == 1:
            with FSDP.state_dict_type(module, StateDictType.SHARDED_STATE_DICT, ShardedStateDictConfig()):
                state = module.state_dict()
        else:
            state = module.state_dict()
        return convert_weight_keys(state, getattr(module, "_fsdp_wrapped_module", module))

    def _weight_shapes(self):
        for name, tensor in self._sharded_state_dict().items():
            yield name, tensor.dtype, tensor.shape

    def _full_weights(self):
        from torch.distributed.tensor import DTensor

        device = get_device_id()
        for name, tensor in self._sharded_state_dict().items():
            if isinstance(tensor, DTensor):
                # An all-gather over the FSDP mesh: every rank takes part, in the same order.
                tensor = tensor.to(device).full_tensor()
            yield name, tensor

    @contextmanager
    def _weights_ready(self):
        from verl.utils.fsdp_utils import load_fsdp_model_to_gpu, offload_fsdp_model_to_cpu

        if self._is_offload_param:
            load_fsdp_model_to_gpu(self.actor_module_fsdp)
        try:
            yield
        finally:
            if self._is_offload_param:
                offload_fsdp_model_to_cpu(self.actor_module_fsdp)


# ----------------------------------------------------------------------------------------------
# Megatron
# ----------------------------------------------------------------------------------------------


class MegatronUnavailableError(RuntimeError):
    """``actor_rollout_ref.actor.strategy=megatron`` was asked for where Megatron cannot run."""


def _megatron_unavailable(missing: str) -> MegatronUnavailableError:
    return MegatronUnavailableError(
        f"actor_rollout_ref.actor.strategy={MEGATRON_STRATEGY} needs megatron-core and a CUDA GPU, but "
        f"{missing}. Install the Megatron GPU profile (install/ directory) on a GPU machine, or use "
        "actor_rollout_ref.actor.strategy=fsdp2."
    )


def _check_megatron_importable() -> None:
    if importlib.util.find_spec("megatron") is None or importlib.util.find_spec("megatron.core") is None:
        raise _megatron_unavailable("megatron-core is not installed (import megatron.core fails)")


@functools.cache
def megatron_worker_class() -> type:
    """verl's Megatron actor/ref worker with weight push; built on first use.

    verl's ``megatron_workers`` imports megatron-core at module level, so the class is only built
    when that strategy is asked for; it raises :class:`MegatronUnavailableError` without megatron-core.
    """
    _check_megatron_importable()
    from verl.workers import megatron_workers

    class MegatronActorRefWorker(WeightSyncMixin, megatron_workers.ActorRolloutRefWorker):
        """verl's Megatron actor/ref worker (roles ``actor``, ``ref``, ``actor_ref``) with weight push.

        Full tensors come from verl's own export, as in its ``rollout_mode``: mbridge's
        ``export_weights`` / ``export_hf_weights``, else ``per_tensor_generator`` (pipeline broadcast
        and tensor-parallel gather per tensor, Hugging Face names). Every rank iterates it.
        """

        def __init__(self, config: DictConfig, role: str = "actor", **kwargs):
            require_patched_verl_on_this_node()
            if not torch.cuda.is_available():
                # Megatron's forward calls torch.cuda.current_device(): it cannot train on CPU.
                raise _megatron_unavailable("torch.cuda.is_available() is False on this worker")
            register_policy_losses()
            super().__init__(config, _verl_role(role), **kwargs)
            if self._is_ref:
                # verl 0.7.1 sets this only for a ref-only worker, but init_model reads it whenever a
                # reference model is built: an actor+ref worker would fail with AttributeError.
                self._ref_is_offload_param = self.config.ref.megatron.get("param_offload", False)
            self.role = role
            self._is_rollout = False
            self._init_weight_sync()
            self._weight_shape_cache = None

        def _full_weights(self):
            if getattr(self, "peft_cls", None) is not None:
                raise NotImplementedError(
                    "weight sync of LoRA adapters is not supported; unset actor_rollout_ref.model.lora"
                )
            from verl.utils.megatron_utils import per_tensor_generator

            if self.bridge is not None:
                if self.vanilla_bridge:
                    return self.bridge.export_weights(self.actor.actor_module)
                return self.bridge.export_hf_weights(self.actor.actor_module)
            return per_tensor_generator(
                self.actor.actor_module,
                self.actor_model_config,
                self.weight_converter,
                self.tf_config,
                self.layer_name_mapping,
            )

        def _weight_shapes(self):
            # The export is the only source of Hugging Face names and shapes; it is collective and
            # gathers every tensor, so it runs once and is cached (shapes never change).
            if self._weight_shape_cache is None:
                with torch.no_grad(), self._weights_ready():
                    self._weight_shape_cache = [(n, t.dtype, t.shape) for n, t in self._full_weights()]
            return iter(self._weight_shape_cache)

        @contextmanager
        def _weights_ready(self):
            from verl.utils.megatron_utils import load_megatron_model_to_gpu, offload_megatron_model_to_cpu

            if self._is_offload_param:
                load_megatron_model_to_gpu(self.actor.actor_module, load_grad=False)
            try:
                yield
            finally:
                if self._is_offload_param:
                    offload_megatron_model_to_cpu(self.actor.actor_module)

    return MegatronActorRefWorker


# ----------------------------------------------------------------------------------------------
# Worker groups
# ----------------------------------------------------------------------------------------------


def worker_class(strategy: str) -> type:
    """The worker class for ``actor_rollout_ref.actor.strategy``."""
    if strategy in FSDP_STRATEGIES:
        return FSDPActorRefWorker
    if strategy == MEGATRON_STRATEGY:
        return megatron_worker_class()
    raise ValueError(
        f"actor_rollout_ref.actor.strategy={strategy!r} is not supported; "
        f"choose one of {[*FSDP_STRATEGIES, MEGATRON_STRATEGY]}"
    )


def create_actor_worker_group(
    config: DictConfig, role: str = "actor", num_workers: int | None = None
) -> RayWorkerGroup:
    """Start ``num_workers`` training workers (default ``trainer.nnodes * trainer.n_gpus_per_node``).

    ``trainer.device`` picks the device (``cpu``, or ``cuda`` / ``npu``). The resource pool is built
    here rather than by verl's ``ResourcePoolManager``, which always asks for GPUs: one process per
    bundle (``max_colocate_count=1``), a bundle being one CPU, plus one GPU where there are GPUs, in one
    placement group shaped by ``trainer.placement`` (:class:`PlacedResourcePool`). Returns once every
    worker is constructed; a worker on a node whose verl is not patched raises ``VerlPatchError`` naming
    that node. Call ``init_model()`` on the returned group to build the models.
    """
    _verl_role(role)
    device = config.trainer.get("device", "cuda")
    strategy = config.actor_rollout_ref.actor.strategy
    if strategy == MEGATRON_STRATEGY and device == "cpu":
        raise _megatron_unavailable("trainer.device=cpu")
    cls = worker_class(strategy)

    pool = PlacedResourcePool(trainer_requests(config, num_workers), use_gpu=device != "cpu")
    cls_with_init = RayClassWithInitArgs(cls=ray.remote(cls), config=config.actor_rollout_ref, role=role)
    group = RayWorkerGroup(resource_pool=pool, ray_cls_with_init=cls_with_init, device_name=device)
    try:
        ray.get([worker.__ray_ready__.remote() for worker in group.workers])
    except ray.exceptions.RayActorError as err:
        shutdown_worker_group(group)
        # A worker's own check failed (verl unpatched on its node): raise that error, not Ray's wrapper.
        reason = next((line for line in str(err).splitlines() if "VerlPatchError:" in line), None)
        if reason is not None:
            raise VerlPatchError(reason.split("VerlPatchError:", 1)[1].strip()) from None
        raise
    return group


class PlacedResourcePool(RayResourcePool):
    """verl's resource pool with its placement groups shaped by ``trainer.placement``: one group per trainer
    node as in verl (whose own pool makes each ``STRICT_PACK``, with no say in where), ordered by node IP as
    verl orders them, so rank 0 (verl's ``MASTER_ADDR``, and the weight-update group's host) is bundle 0 of
    the first group."""

    def __init__(self, requests: list[PlacementRequest], use_gpu: bool) -> None:
        super().__init__([r.count for r in requests], use_gpu=use_gpu, max_colocate_count=1)
        self.requests = requests

    def get_placement_groups(
        self, strategy: str = "STRICT_PACK", name: str | None = None, device_name: str = "cuda"
    ) -> list:
        """verl asks for ``strategy``; the configured placement decides instead."""
        if self.pgs is None:
            groups = []
            try:
                for request in self.requests:
                    groups.append(reserve(request))
            except BaseException:
                for group in groups:
                    ray.util.remove_placement_group(group)
                raise
            self.pgs = sort_placement_group_by_node_ip(groups)
        return self.pgs


def shutdown_worker_group(worker_group: RayWorkerGroup) -> None:
    """Kill the workers and release their placement groups, so the resources can be used again."""
    for worker in worker_group.workers:
        ray.kill(worker)
    for pg in worker_group.resource_pool.pgs or []:
        ray.util.remove_placement_group(pg)
