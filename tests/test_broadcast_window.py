# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The sender of a weight sync keeps at most N buckets in flight while the receiver is not receiving.

A real 2-rank gloo weight-update group: this process sends 32 MB buckets with asynchronous broadcasts, a
receiver process receives them only when told to. Without the window every bucket would be sent (and held) at
once; with it the sender stops after N until the receiver takes the oldest.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator

import pytest
import torch

from rllm_fully_async.servers.ports import free_port
from rllm_fully_async.sync.broadcast_window import BroadcastStalledError, BroadcastWindow
from rllm_fully_async.sync.weight_update_group import (
    broadcast_tensor,
    destroy_weight_update_group,
    init_weight_update_group,
)

BUCKETS = 5
NUMEL = (
    8 * 1024 * 1024
)  # 32 MB of float32: more than loopback sockets buffer, so a send waits for its receiver

RECEIVER = textwrap.dedent(
    """
    import sys, torch
    from rllm_fully_async.sync.weight_update_group import broadcast_tensor, init_weight_update_group
    port, buckets, numel = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    group = init_weight_update_group("127.0.0.1", port, 1, 2, "window-test", timeout_s=60)
    print("joined", flush=True)
    sys.stdin.readline()
    for _ in range(buckets):
        t = torch.empty(numel)
        broadcast_tensor(group, t, src=0)
        print(float(t[0]), float(t[-1]), flush=True)
    """
)


@contextlib.contextmanager
def group_with_receiver(buckets: int) -> Iterator[tuple[object, subprocess.Popen]]:
    """This process as rank 0 of a weight-update group whose rank 1, a child process, has joined and receives
    ``buckets`` broadcasts once a line is written to its stdin."""
    port = free_port()
    receiver = subprocess.Popen(
        [sys.executable, "-c", RECEIVER, str(port), str(buckets), str(NUMEL)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    group = None
    try:
        group = init_weight_update_group("127.0.0.1", port, 0, 2, "window-test", timeout_s=60)
        assert receiver.stdout.readline().strip() == "joined"
        yield group, receiver
    finally:
        receiver.kill()
        receiver.wait(timeout=30)
        if group is not None:
            destroy_weight_update_group(group)


@pytest.mark.parametrize("max_buckets", [1, 2])
def test_sender_holds_at_most_max_buckets_until_the_receiver_takes_them(max_buckets: int) -> None:
    with group_with_receiver(BUCKETS) as (group, receiver):
        window = BroadcastWindow(max_buckets, timeout_s=60)
        issued: list[int] = []
        all_issued = threading.Event()
        errors: list[BaseException] = []

        def send() -> None:
            try:
                for k in range(BUCKETS):
                    window.reserve()
                    tensor = torch.full((NUMEL,), float(k))
                    work = broadcast_tensor(group, tensor, src=0, async_op=True)
                    issued.append(k)
                    window.push([work], [tensor])
                all_issued.set()
                window.drain()
            except BaseException as e:  # reported below
                errors.append(e)
                all_issued.set()

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        # The receiver has taken nothing: a bounded sender cannot have sent everything. (An unbounded one
        # sends all buckets at once; give it time to show.)
        assert not all_issued.wait(timeout=3.0), f"sent all {BUCKETS} buckets with none received"
        assert len(issued) == max_buckets
        receiver.stdin.write("go\n")
        receiver.stdin.flush()
        sender.join(timeout=60)
        assert not sender.is_alive() and not errors, errors
        received = [tuple(map(float, receiver.stdout.readline().split())) for _ in range(BUCKETS)]
        assert received == [(float(k), float(k)) for k in range(BUCKETS)]
        assert 1 <= window.peak <= max_buckets


def test_a_receiver_that_never_receives_fails_the_wait_within_the_timeout() -> None:
    with group_with_receiver(1) as (group, _receiver):
        window = BroadcastWindow(1, timeout_s=2)
        window.reserve()
        tensor = torch.zeros(NUMEL)
        window.push([broadcast_tensor(group, tensor, src=0, async_op=True)], [tensor])
        with pytest.raises(BroadcastStalledError, match="within 2 s .async_training.param_sync_timeout_s"):
            window.drain()
