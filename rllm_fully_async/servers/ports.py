# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Ports for processes that bind later than the port is chosen (a server started with ``--port N``).

A port the kernel hands out for ``bind(0)`` lies in its ephemeral range, from which it also hands out the
local ports of outgoing connections: between choosing such a port and the server binding it, any outgoing
connection may take it. A port below that range is never handed out that way, so only another process
that binds explicitly can collide, and :func:`port_clash` tells that failure apart so the launcher can
retry on another port. Where the binding process is our own, it binds first and tells the port afterwards
instead (the weight-update rendezvous: ``sync.weight_update_group.host_rendezvous_store``).
"""

from __future__ import annotations

import random
import re
import socket

# Used when /proc does not say (not Linux): Linux's default ephemeral range starts at 32768.
_DEFAULT_EPHEMERAL_LOW = 32768
_LOWEST = 20000
_CLASH = re.compile(r"address already in use|errno 98\b|eaddrinuse", re.IGNORECASE)


def ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return _DEFAULT_EPHEMERAL_LOW


def free_port(host: str = "127.0.0.1", attempts: int = 200) -> int:
    """A port that is free on ``host`` now and lies below the kernel's ephemeral range."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    high = max(_LOWEST + 1000, min(ephemeral_low(), 65536))
    for port in random.sample(range(_LOWEST, high), attempts):
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port on {host} in [{_LOWEST}, {high}) after {attempts} tries")


def port_clash(log: str) -> bool:
    """Whether a server's log says it could not bind its port because something else holds it."""
    return bool(_CLASH.search(log))
