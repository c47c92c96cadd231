# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Joining a Ray cluster, placing the run's parts on it, and the addresses between its nodes.

Nodes of a ``ray.cluster_utils.Cluster`` on one machine share one IP, so the address rules are proved
here against node tables and IPv6 literals (and a real IPv6 rendezvous on ``::1``); the multi-node runs
are in ``test_multinode.py``.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
from omegaconf import OmegaConf

from rllm_fully_async.cluster.addresses import (
    http_url,
    is_loopback_url,
    rendezvous_host,
    server_addresses,
    tcp_url,
)
from rllm_fully_async.cluster.connect import cluster_address, ray_init_kwargs
from rllm_fully_async.cluster.placement import Node, Placement, PlacementError, PlacementRequest, check_fits


def sglang_init_method(master_address: str, master_port: int) -> str:
    """SGLang 0.5.6, ``ModelRunner.init_weights_update_group``: ``init_method=f"tcp://{master_address}:{master_port}"``."""
    return f"tcp://{master_address}:{master_port}"


# ------------------------------------------------------------------ addresses


@pytest.mark.parametrize(
    ("pinned", "node_ip", "single_node", "listen", "url"),
    [
        (None, "10.0.0.7", True, "127.0.0.1", "http://127.0.0.1:30000"),  # one node: loopback
        (None, "10.0.0.7", False, "10.0.0.7", "http://10.0.0.7:30000"),  # many: the node's IP
        (None, "fd00::7", False, "fd00::7", "http://[fd00::7]:30000"),  # IPv6 node
        ("0.0.0.0", "10.0.0.7", True, "0.0.0.0", "http://10.0.0.7:30000"),  # wildcard: reached at the node
        ("[::]", "fd00::7", False, "::", "http://[fd00::7]:30000"),
        ("10.1.2.3", "10.0.0.7", False, "10.1.2.3", "http://10.1.2.3:30000"),  # pinned address
        ("[fd00::9]", "10.0.0.7", False, "fd00::9", "http://[fd00::9]:30000"),
    ],
)
def test_a_server_listens_on_and_is_reached_at_its_node_address(pinned, node_ip, single_node, listen, url):
    bind, reach = server_addresses(pinned, node_ip, single_node)
    assert bind == listen
    assert http_url(reach, 30000) == url


@pytest.mark.parametrize("address", ["10.0.0.7", "fd00::7", "[fd00::7]", "::1", "trainer-0.cluster.local"])
def test_the_rendezvous_address_sent_to_a_server_makes_a_valid_url_in_sglangs_format(address):
    """SGLang appends ``:port`` verbatim, so the address is sent bracketed when it is IPv6: its URL then
    parses to the same host and port as the trainer's own (which ``tcp_url`` builds)."""
    sent = rendezvous_host(address)
    url = sglang_init_method(sent, 29500)
    assert url == tcp_url(address, 29500)
    parsed = urlparse(url)  # what torch.distributed's tcp:// rendezvous does with it
    assert (parsed.hostname, parsed.port) == (address.strip("[]"), 29500)


def test_an_unbracketed_ipv6_address_would_break_sglangs_rendezvous_url():
    """Why the brackets are sent: SGLang's format with a bare IPv6 literal is not a parseable URL."""
    with pytest.raises(ValueError, match="Port could not be cast"):
        _ = urlparse(sglang_init_method("fd00::7", 29500)).port


def test_loopback_urls_are_recognised():
    for url in ("http://127.0.0.1:1", "http://[::1]:1", "http://localhost:1", "http://127.0.0.2:1"):
        assert is_loopback_url(url), url
    for url in ("http://10.0.0.7:1", "http://[fd00::7]:1", "http://server-0:1"):
        assert not is_loopback_url(url), url


def test_weights_reach_a_cpu_engine_over_an_ipv6_rendezvous(toy_model_dir: Path):
    """A real CPU engine listening on ``::1``, reached by the real client at ``http://[::1]:port``, joins a
    weight-update group hosted at the IPv6 address (sent to it bracketed, as SGLang needs) and loads a
    tensor broadcast over it."""
    from rllm_fully_async.rollout.client import RolloutClient
    from rllm_fully_async.servers.rollout_servers import CpuEngineProcess
    from rllm_fully_async.sync.weight_update_group import (
        broadcast_tensor,
        destroy_weight_update_group,
        init_weight_update_group,
    )

    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", 0))
        port = sock.getsockname()[1]
    with CpuEngineProcess(str(toy_model_dir), host="::1", num_threads=1) as engine:
        assert engine.url.startswith("http://[::1]:")
        client = RolloutClient([engine.url], control_timeout_s=60)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()

        def call(coro):
            return asyncio.run_coroutine_threadsafe(coro, loop)

        joined = call(client.init_weights_update_group("::1", port, 2, "v6", "gloo"))
        group = init_weight_update_group("::1", port, 0, 2, "v6", backend="gloo", timeout_s=60)
        try:
            joined.result(timeout=60)
            name, tensor = "model.norm.weight", torch.full((64,), 0.5)
            loaded = call(client.update_weights_from_distributed([name], ["float32"], [[64]], "v6"))
            broadcast_tensor(group, tensor, src=0)
            loaded.result(timeout=60)
            call(client.destroy_weights_update_group("v6")).result(timeout=60)
        finally:
            destroy_weight_update_group(group)
            call(client.close()).result(timeout=30)
            loop.call_soon_threadsafe(loop.stop)


# ------------------------------------------------------------------ joining a cluster


def _cfg(**ray_init) -> OmegaConf:
    return OmegaConf.create({"ray_kwargs": {"ray_init": {"num_cpus": None, "address": None, **ray_init}}})


def test_ray_address_joins_the_cluster_without_resource_counts():
    kwargs = ray_init_kwargs(_cfg(num_cpus=8), {"RAY_ADDRESS": "10.0.0.1:6379"})
    assert kwargs["address"] == "10.0.0.1:6379"
    assert "num_cpus" not in kwargs and "include_dashboard" not in kwargs
    assert kwargs["runtime_env"]["env_vars"]["TOKENIZERS_PARALLELISM"] == "false"


def test_the_config_address_wins_and_local_starts_a_private_cluster():
    env = {"RAY_ADDRESS": "10.0.0.1:6379", "HF_TOKEN": "t"}
    assert cluster_address(_cfg(address="ray://head:10001"), env) == "ray://head:10001"
    assert cluster_address(_cfg(address="local"), env) is None
    local = ray_init_kwargs(_cfg(address="local"), env)
    assert local["address"] == "local" and local["num_cpus"] >= 1 and local["include_dashboard"] is False
    assert cluster_address(_cfg(), {}) is None
    # Named nowhere: still "local", because ray.init(address=None) joins the cluster last started on the
    # machine (recorded in /tmp/ray/ray_current_cluster) and then refuses num_cpus.
    assert ray_init_kwargs(_cfg(), {})["address"] == "local"


def test_runtime_env_carries_the_run_s_and_the_user_s_settings_to_every_worker():
    cfg = _cfg(runtime_env={"env_vars": {"NCCL_DEBUG": "INFO", "MY_FLAG": "1"}, "working_dir": "/src"})
    kwargs = ray_init_kwargs(cfg, {"RAY_ADDRESS": "auto", "HF_TOKEN": "secret", "HOME": "/root"})
    env_vars = kwargs["runtime_env"]["env_vars"]
    assert env_vars["NCCL_DEBUG"] == "INFO" and env_vars["MY_FLAG"] == "1"  # the user's win
    assert env_vars["TOKENIZERS_PARALLELISM"] == "false"
    assert env_vars["HF_TOKEN"] == "secret"  # model hub access on other nodes
    assert "HOME" not in env_vars
    assert kwargs["runtime_env"]["working_dir"] == "/src"


# ------------------------------------------------------------------ placement


def _nodes() -> list[Node]:
    return [
        Node("a" * 56, "10.0.0.1", {"CPU": 4.0, "trainer_node": 1.0}, {"role": "trainer"}),
        Node("b" * 56, "10.0.0.2", {"CPU": 2.0, "rollout_node": 2.0}, {"role": "rollout"}),
    ]


def _request(what: str, count: int, bundle: dict, **placement) -> PlacementRequest:
    placement = Placement.from_config(placement, "rollout_servers.placement")
    return PlacementRequest(what, count, bundle, placement, fix=f"change {what}.placement")


def test_servers_and_trainer_fit_on_the_nodes_their_resources_name():
    servers = _request("servers", 2, {"CPU": 1.0}, resources={"rollout_node": 1.0})
    trainer = _request("trainer", 4, {"CPU": 1.0}, node_labels={"role": "trainer"}, strategy="strict_pack")
    check_fits(_nodes(), [servers, trainer])


def test_a_request_free_to_go_anywhere_leaves_room_for_one_that_can_go_to_few_nodes():
    """The small node is the only one with ``only_here``; the unconstrained servers, listed first, must not
    take its CPU."""
    nodes = [Node("c" * 56, "10.0.0.3", {"CPU": 1.0, "only_here": 1.0}, {}), *_nodes()]
    servers = _request("servers", 1, {"CPU": 1.0})
    trainer = _request("trainer", 1, {"CPU": 1.0}, resources={"only_here": 1.0})
    check_fits(nodes, [servers, trainer])


@pytest.mark.parametrize(
    ("requests", "message"),
    [
        (
            [_request("servers", 1, {"CPU": 1.0}, resources={"gpu_box": 1.0})],
            r"cannot hold the servers: 1 x \{CPU: 1, gpu_box: 1\}, strategy pack: no node has the resource "
            r"'gpu_box'\. Fix: change servers.placement",
        ),
        (
            [_request("servers", 3, {"CPU": 1.0}, resources={"rollout_node": 1.0})],
            "rollout_node needs 3, 2 left",
        ),
        (
            [_request("servers", 2, {"CPU": 1.0}), _request("trainer", 5, {"CPU": 1.0})],
            r"cannot hold the trainer: .*CPU needs 5, 4 left \(after servers took their share\)",
        ),
        ([_request("trainer", 3, {"CPU": 1.0}, strategy="strict_spread")], "needs 3 nodes .* 2 do"),
        ([_request("trainer", 5, {"CPU": 1.0}, strategy="strict_pack")], r"\{CPU: 5\} on one node"),
        ([_request("servers", 1, {"CPU": 1.0}, node_labels={"role": "gpu"})], "no node carries the labels"),
        ([_request("trainer", 1, {"CPU": 1.0, "GPU": 1.0})], "no node has the resource 'GPU'"),
    ],
)
def test_a_request_the_cluster_cannot_hold_names_what_is_missing(requests, message):
    with pytest.raises(PlacementError, match=message) as err:
        check_fits(_nodes(), requests)
    assert "10.0.0.2 (bbbbbbbb): {CPU: 2, rollout_node: 2}, labels {'role': 'rollout'}" in str(err.value)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"strategy": "pack_tight"}, "strategy: 'pack_tight' is not one of pack, spread"),
        ({"resources": {"CPU": 2}}, r"resources.CPU: CPU comes from the server / worker counts"),
        ({"resources": {"rollout_node": 0}}, "resources.rollout_node: must be a number > 0"),
        ({"nodes": 2}, "nodes: unknown key"),
    ],
)
def test_a_bad_placement_section_names_its_key(section, message):
    with pytest.raises(ValueError, match=f"rollout_servers.placement.{message}"):
        Placement.from_config(section, "rollout_servers.placement")
