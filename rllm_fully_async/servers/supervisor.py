# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Keeps a run's rollout servers serving: a server that died is restarted, taken back into the
weight-update group and given the current weights, between training steps or while the trainer waits.

A restarted server comes back with the initial model and outside the ``torch.distributed`` group, which
cannot admit a member: so every recovery is restart ▸ re-join (the whole group forms anew) ▸ push the
trainer's current weights. Meanwhile what the dead server was generating failed over to the others, or,
with none left, waited for it to come back (the client's outage timeout).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from rllm_fully_async.sync.param_sync import ParamSyncError, SyncStats

logger = logging.getLogger(__name__)

# How often the trainer looks for dead rollout servers while it waits for a batch.
CHECK_INTERVAL_S = 5.0
# After a failed weight sync, how long a server death may take to show: a dying server's connections
# close a moment before its process has exited.
DEATH_GRACE_S = 5.0


class Servers(Protocol):
    """What the supervisor needs of :class:`~rllm_fully_async.servers.rollout_servers.RolloutServers`."""

    def check(self) -> list[str]:
        """URLs of the servers that are dead."""

    def restart_dead(self) -> list[str]:
        """Restart the dead servers on their URLs; returns those URLs."""


class WeightSync(Protocol):
    """What the supervisor needs of :class:`~rllm_fully_async.sync.param_sync.ParamSync`."""

    def sync(self, version: int) -> SyncStats: ...

    def rejoin(self) -> None: ...


class ServerSupervisor:
    """Recovers dead rollout servers; ``servers=None`` (servers started outside the run) never recovers.

    ``restarted`` counts the servers brought back so far.
    """

    def __init__(
        self,
        servers: Servers | None,
        param_sync: WeightSync,
        *,
        check_interval_s: float = CHECK_INTERVAL_S,
        death_grace_s: float = DEATH_GRACE_S,
    ) -> None:
        self.servers = servers
        self.param_sync = param_sync
        self.check_interval_s = check_interval_s
        self.death_grace_s = death_grace_s
        self.restarted = 0

    def recover(self, version: int) -> float:
        """Restart the servers that died, re-form the weight-update group, push weights ``version`` (the
        trainer's current ones). Returns the seconds it took, 0 when every server is alive."""
        if self.servers is None or not self.servers.check():
            return 0.0
        start = time.perf_counter()
        restarted = self.servers.restart_dead()
        self.param_sync.rejoin()
        self.param_sync.sync(version)
        self.restarted += len(restarted)
        seconds = time.perf_counter() - start
        logger.warning(
            "rollout servers %s died and were restarted; weights of version %d pushed to them (%.1fs)",
            restarted,
            version,
            seconds,
        )
        return seconds

    def push(self, version: int, current_version: int) -> SyncStats:
        """``param_sync.sync(version)``; when a server died before or during it, it is recovered (with the
        ``current_version`` weights) and the push repeated. A failure with every server alive is raised."""
        self.recover(current_version)
        try:
            return self.param_sync.sync(version)
        except (ParamSyncError, TimeoutError) as e:
            if not self._a_server_died():
                raise
            logger.warning("weight sync to version %d failed, a rollout server died: %s", version, e)
        self.recover(current_version)
        return self.param_sync.sync(version)

    def wait(
        self, wait_fn: Callable[[float], list[Any]], deadline: float, version: int
    ) -> tuple[list[Any], float]:
        """Call ``wait_fn(timeout_s)`` (e.g. a ``ray.wait`` on the trainer's pending batch) until it returns
        something or ``deadline`` (``time.monotonic()``) passes, recovering dead servers between calls.

        Returns what it returned (empty at the deadline) and the seconds spent recovering.
        """
        ready: list[Any] = []
        recovering_s = 0.0
        while not ready and time.monotonic() < deadline:
            recovering_s += self.recover(version)
            ready = wait_fn(min(self.check_interval_s, max(0.0, deadline - time.monotonic())))
        return ready, recovering_s

    def _a_server_died(self) -> bool:
        """Whether a server is dead, allowing one that is dying ``death_grace_s`` to exit."""
        if self.servers is None:
            return False
        deadline = time.monotonic() + self.death_grace_s
        while not self.servers.check():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)  # polls the server processes' state, bounded by the deadline above
        return True
