# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Network addresses between the nodes of a run: what a server listens on, how it is reached, and how the
weight-update rendezvous address is written.

On one node everything talks over the loopback. Across nodes a server listens on, and is reached at, its
node's IP (the one Ray registered the node under), and the weight-update group meets at the node of
training-worker rank 0. An IPv6 literal is written in brackets wherever it is followed by a port: in
``http://[addr]:port`` and in ``tcp://[addr]:port``. SGLang 0.5.6 builds the rendezvous URL as
``f"tcp://{master_address}:{master_port}"`` (``ModelRunner.init_weights_update_group``) without adding
brackets itself, so the address sent to a server is already bracketed (:func:`rendezvous_host`).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

LOOPBACK = "127.0.0.1"
WILDCARDS = ("0.0.0.0", "::")


def strip_brackets(host: str) -> str:
    """``"[fd00::1]"`` -> ``"fd00::1"``; anything else unchanged."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_ipv6(host: str) -> bool:
    """True for an IPv6 literal, bracketed or not; False for IPv4 literals and host names."""
    try:
        return isinstance(ipaddress.ip_address(strip_brackets(host)), ipaddress.IPv6Address)
    except ValueError:
        return False


def host_for_url(host: str) -> str:
    """The host as it is written in front of ``:port``: an IPv6 literal in brackets."""
    host = strip_brackets(host)
    return f"[{host}]" if is_ipv6(host) else host


def http_url(host: str, port: int) -> str:
    return f"http://{host_for_url(host)}:{int(port)}"


def tcp_url(host: str, port: int) -> str:
    """``tcp://host:port`` for torch.distributed's TCP rendezvous (SGLang's ``format_tcp_address``)."""
    return f"tcp://{host_for_url(host)}:{int(port)}"


def rendezvous_host(host: str) -> str:
    """The ``master_address`` to send to a server's ``/init_weights_update_group``.

    SGLang 0.5.6 appends ``:port`` to it verbatim, so an IPv6 literal must arrive bracketed; the embedded
    CPU engine accepts both spellings.
    """
    return host_for_url(host)


def is_loopback_url(url: str) -> bool:
    """``http://127.0.0.1:30000``, ``http://[::1]:30000``, ``http://localhost:30000``: True."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    return strip_brackets(host) in WILDCARDS


def server_addresses(pinned_host: str | None, node_ip: str, single_node: bool) -> tuple[str, str]:
    """``(listen, reach)``: the address a server binds and the one its URL names.

    ``pinned_host`` is ``rollout_servers.host`` (None: chosen here). Unpinned, a server on a one-node
    cluster listens on the loopback, and on a larger cluster on its node's IP ``node_ip``. A wildcard pin
    (``0.0.0.0``, ``::``) listens everywhere and is reached at the node's IP.
    """
    if pinned_host is None:
        address = LOOPBACK if single_node else strip_brackets(node_ip)
        return address, address
    listen = strip_brackets(pinned_host)
    return listen, strip_brackets(node_ip) if is_wildcard(listen) else listen


def rendezvous_address(node_ip: str, single_node: bool) -> str:
    """Where the weight-update group meets: training-worker rank 0's node, the loopback on one node."""
    return LOOPBACK if single_node else strip_brackets(node_ip)
