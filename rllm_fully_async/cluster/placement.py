# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Where the rollout servers and the training workers go: Ray placement groups the config shapes.

The servers are one placement group, a bundle per server (``rollout_servers.placement``); the training
workers one group per trainer node as in verl, a bundle per worker (``trainer.placement``). Each placement
has

* ``strategy``: ``pack`` (as few nodes as possible), ``spread`` (as many as possible), ``strict_pack``
  (all on one node) or ``strict_spread`` (each on its own node), Ray's four placement strategies;
* ``resources``: custom Ray resources each bundle also takes, e.g. ``{rollout_node: 1}`` keeps the
  bundles on nodes started with ``ray start --resources='{"rollout_node": 8}'``;
* ``node_labels``: labels the node must carry (``ray start --labels=...``), exact matches.

:func:`check_fits` runs before anything starts and turns a request the cluster cannot hold into an error
naming what is missing, instead of a placement group that waits forever.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from rllm_fully_async.config_schema import section_with_defaults

STRATEGIES = {
    "pack": "PACK",
    "spread": "SPREAD",
    "strict_pack": "STRICT_PACK",
    "strict_spread": "STRICT_SPREAD",
}
# Resources a bundle takes from the config's own counts; `resources` may not set them again.
_BUILTIN_RESOURCES = ("CPU", "GPU", "NPU", "memory", "object_store_memory")
_EPS = 1e-9


class PlacementError(RuntimeError):
    """The cluster cannot hold what the run asks for; the message names what is missing and what to change."""


@dataclass(frozen=True)
class Placement:
    """One ``placement`` config section, checked; build it with :meth:`from_config`."""

    strategy: str
    resources: Mapping[str, float]
    node_labels: Mapping[str, str]
    timeout_s: float

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None, key: str) -> Placement:
        """The section at ``key`` (``rollout_servers.placement`` or ``trainer.placement``) over the base
        YAML's defaults for it; a ValueError names the key."""
        section = key.split(".", 1)[0]
        if OmegaConf.is_config(node):
            node = OmegaConf.to_container(node, resolve=True)
        node = dict(node or {})
        defaults = section_with_defaults(section, None)["placement"]
        unknown = sorted(set(node) - set(defaults))
        if unknown:
            raise ValueError(f"{key}.{unknown[0]}: unknown key; valid: {', '.join(defaults)}")
        node = {**defaults, **{k: v for k, v in node.items() if v is not None}}
        strategy = str(node["strategy"]).lower()
        if strategy not in STRATEGIES:
            raise ValueError(f"{key}.strategy: {strategy!r} is not one of {', '.join(STRATEGIES)}")
        resources: dict[str, float] = {}
        for name, amount in dict(node["resources"] or {}).items():
            if name in _BUILTIN_RESOURCES:
                raise ValueError(
                    f"{key}.resources.{name}: {name} comes from the server / worker counts; list only custom "
                    "Ray resources here"
                )
            if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount <= 0:
                raise ValueError(f"{key}.resources.{name}: must be a number > 0, got {amount!r}")
            resources[str(name)] = float(amount)
        labels = {str(k): str(v) for k, v in dict(node["node_labels"] or {}).items()}
        timeout_s = float(node["timeout_s"])
        if timeout_s <= 0:
            raise ValueError(f"{key}.timeout_s: must be > 0 seconds, got {timeout_s}")
        return cls(strategy, resources, labels, timeout_s)


@dataclass(frozen=True)
class PlacementRequest:
    """``count`` bundles of ``bundle`` (plus the placement's custom resources) for one part of the run."""

    what: str  # e.g. "rollout servers"
    count: int
    bundle: Mapping[str, float]
    placement: Placement
    fix: str  # the config keys that change this request

    @property
    def bundles(self) -> list[dict[str, float]]:
        return [{**self.bundle, **self.placement.resources} for _ in range(self.count)]

    def describe(self) -> str:
        labels = (
            f", on nodes labelled {dict(self.placement.node_labels)}" if self.placement.node_labels else ""
        )
        return (
            f"{self.what}: {self.count} x {_fmt(self.bundles[0])}, strategy {self.placement.strategy}{labels}"
        )


@dataclass
class Node:
    """One alive node of the cluster, as ``ray.nodes()`` lists it."""

    node_id: str
    ip: str
    resources: dict[str, float]
    labels: dict[str, str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(self.labels.get(k) == v for k, v in labels.items())

    def describe(self) -> str:
        shown = {k: v for k, v in self.resources.items() if not k.startswith("node:") and "memory" not in k}
        user_labels = {k: v for k, v in self.labels.items() if not k.startswith("ray.io/")}
        labels = f", labels {user_labels}" if user_labels else ""
        return f"{self.ip} ({self.node_id[:8]}): {_fmt(shown)}{labels}"


def cluster_nodes() -> list[Node]:
    """The alive nodes of the connected Ray cluster."""
    import ray

    return [
        Node(n["NodeID"], n["NodeManagerAddress"], dict(n["Resources"]), dict(n.get("Labels") or {}))
        for n in ray.nodes()
        if n["Alive"]
    ]


def _fmt(resources: Mapping[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(resources.items())) + "}"


def _fits(free: Mapping[str, float], bundle: Mapping[str, float], times: int = 1) -> bool:
    return all(free.get(k, 0.0) + _EPS >= v * times for k, v in bundle.items())


def _take(free: dict[str, float], bundle: Mapping[str, float], times: int = 1) -> None:
    for k, v in bundle.items():
        free[k] = free.get(k, 0.0) - v * times


def _place(request: PlacementRequest, free: dict[str, dict[str, float]], nodes: list[Node]) -> str | None:
    """Take ``request``'s bundles out of ``free`` (per node id); return why it cannot be held, or None."""
    bundle = request.bundles[0]
    eligible = [n for n in nodes if n.matches(request.placement.node_labels)]
    if not eligible:
        return f"no node carries the labels {dict(request.placement.node_labels)}"
    absent = [k for k in bundle if not any(n.resources.get(k, 0.0) > 0 for n in eligible)]
    if absent:
        where = " with the labels asked for" if request.placement.node_labels else ""
        return f"no node{where} has the resource {', '.join(repr(k) for k in absent)}"
    strategy = request.placement.strategy
    if strategy == "strict_pack":
        node = next((n for n in eligible if _fits(free[n.node_id], bundle, request.count)), None)
        if node is None:
            most = max(
                eligible, key=lambda n: min(free[n.node_id].get(k, 0.0) / v for k, v in bundle.items())
            )
            return (
                f"strict_pack needs {_fmt({k: v * request.count for k, v in bundle.items()})} on one node; "
                f"the roomiest node has {_fmt({k: free[most.node_id].get(k, 0.0) for k in bundle})} left"
            )
        _take(free[node.node_id], bundle, request.count)
        return None
    if strategy == "strict_spread":
        hosts = [n for n in eligible if _fits(free[n.node_id], bundle)]
        if len(hosts) < request.count:
            return f"strict_spread needs {request.count} nodes that each hold one bundle; {len(hosts)} do"
        for n in hosts[: request.count]:
            _take(free[n.node_id], bundle)
        return None
    for i in range(request.count):
        node = next((n for n in eligible if _fits(free[n.node_id], bundle)), None)
        if node is None:
            short = {
                k: (v * request.count, sum(free[n.node_id].get(k, 0.0) for n in eligible) + v * i)
                for k, v in bundle.items()
            }
            missing = [
                f"{k} needs {need:g}, {have:g} left"
                for k, (need, have) in short.items()
                if have + _EPS < need
            ]
            return (
                "; ".join(missing)
                if missing
                else f"only {i} of the {request.count} bundles fit whole on a node"
            )
        _take(free[node.node_id], bundle)
    return None


def _constraint(request: PlacementRequest, nodes: list[Node]) -> tuple[int, bool]:
    """Sort key: nodes that could hold one of the request's bundles, then False for a strict strategy."""
    bundle = request.bundles[0]
    eligible = sum(
        n.matches(request.placement.node_labels) and all(n.resources.get(k, 0.0) > 0 for k in bundle)
        for n in nodes
    )
    return eligible, not request.placement.strategy.startswith("strict")


def check_fits(nodes: list[Node], requests: Iterable[PlacementRequest]) -> None:
    """Raise :class:`PlacementError` unless every request fits the nodes' total resources at once.

    Requests are placed one after the other, each taking its share, the most constrained first (fewest
    nodes that could hold a bundle, then the strict strategies), so that a request free to go anywhere does
    not take the room of one that can go to few nodes. A cluster that is busy with other jobs may still
    make a placement group wait; that is bounded by ``placement.timeout_s`` in :func:`reserve`.
    """
    free = {n.node_id: dict(n.resources) for n in nodes}
    placed: list[str] = []
    for request in sorted(requests, key=lambda r: _constraint(r, nodes)):
        reason = _place(request, free, nodes)
        if reason is not None:
            after = f" (after {', '.join(placed)} took their share)" if placed else ""
            cluster = "\n  ".join(n.describe() for n in nodes) or "(no alive nodes)"
            raise PlacementError(
                f"the Ray cluster cannot hold the {request.describe()}: {reason}{after}. "
                f"Fix: {request.fix}, or add nodes with those resources. The cluster's nodes:\n  {cluster}"
            )
        placed.append(request.what)


def trainer_requests(cfg: Any, num_workers: int | None = None) -> list[PlacementRequest]:
    """The training workers' placement groups, verl's layout: ``trainer.nnodes`` groups of
    ``trainer.n_gpus_per_node`` workers (or ``num_workers`` split over them), each worker a bundle of one CPU
    plus one device where there is one, each group shaped by ``trainer.placement`` (by default
    ``strict_pack``: a group's ranks share a node)."""
    nnodes = int(cfg.trainer.get("nnodes", 1))
    num_workers = nnodes * int(cfg.trainer.n_gpus_per_node) if num_workers is None else num_workers
    if num_workers < 1 or num_workers % nnodes:
        raise ValueError(f"num_workers={num_workers} must be a positive multiple of trainer.nnodes={nnodes}")
    device = cfg.trainer.get("device", "cuda")
    bundle = {"CPU": 1.0}
    if device != "cpu":
        bundle["GPU" if device == "cuda" else device.upper()] = 1.0
    placement = Placement.from_config(cfg.trainer.get("placement"), "trainer.placement")
    fix = "lower trainer.nnodes x trainer.n_gpus_per_node or change trainer.placement"
    return [
        PlacementRequest(
            "training workers" + (f" of trainer node {i + 1}/{nnodes}" if nnodes > 1 else ""),
            num_workers // nnodes,
            bundle,
            placement,
            fix,
        )
        for i in range(nnodes)
    ]


def reserve(request: PlacementRequest, name: str = "") -> Any:
    """Create the request's placement group and wait, at most ``placement.timeout_s``, until it is ready.

    A request that the cluster could not hold even when idle fails at once (:func:`check_fits`).
    """
    import ray
    from ray.util.placement_group import placement_group

    check_fits(cluster_nodes(), [request])
    labels = dict(request.placement.node_labels)
    group = placement_group(
        request.bundles,
        strategy=STRATEGIES[request.placement.strategy],
        name=name,
        bundle_label_selector=[labels] * request.count if labels else None,
    )
    try:
        ray.get(group.ready(), timeout=request.placement.timeout_s)
    except ray.exceptions.GetTimeoutError:
        ray.util.remove_placement_group(group)
        raise PlacementError(
            f"could not reserve the {request.describe()} within {request.placement.timeout_s:g} s "
            f"(placement.timeout_s); the cluster has {_fmt(ray.available_resources())} free. "
            f"Fix: {request.fix}, or free the resources other jobs hold"
        ) from None
    return group


def bundle_nodes(group: Any) -> list[str]:
    """The node id of each bundle of a ready placement group, in bundle order."""
    from ray.util.placement_group import placement_group_table

    table = placement_group_table(group)["bundles_to_node_id"]
    return [table[i] for i in range(len(table))]
