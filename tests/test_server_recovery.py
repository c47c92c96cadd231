# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The server supervisor's control flow when a rollout server dies during a weight sync or while the trainer
waits, with the death injected.

The real path (a SIGKILLed server, restarted, re-joined and synced) runs end to end in ``test_e2e.py``;
there the death lands between syncs. This covers the other timing: the server dies mid-sync.
"""

from __future__ import annotations

import time

import pytest

from rllm_fully_async.servers.supervisor import ServerSupervisor
from rllm_fully_async.sync.param_sync import ParamSyncError, SyncStats

URL = "http://127.0.0.1:1"


class Servers:
    """Injected fault: ``die()`` kills the server, which shows as dead only after ``checks_to_exit`` more
    checks (a dying process exits a moment after its connections close); ``restart_dead`` brings it back."""

    def __init__(self, log: list[str], checks_to_exit: int = 0) -> None:
        self.log, self.dead, self.checks_to_exit = log, [], checks_to_exit
        self.dying = False

    def die(self) -> None:
        self.dying = True

    def check(self) -> list[str]:
        if self.dying:
            if self.checks_to_exit == 0:
                self.dead, self.dying = [URL], False
            self.checks_to_exit -= 1
        return list(self.dead)

    def restart_dead(self) -> list[str]:
        restarted, self.dead = self.dead, []
        self.log.append(f"restart {restarted}")
        return restarted


class ParamSyncKilledMidSync:
    """Injected fault: the first sync kills the server and fails the way ParamSync does then."""

    def __init__(self, servers: Servers, log: list[str], error: type[Exception]) -> None:
        self.servers, self.log, self.error, self.failed = servers, log, error, False

    def sync(self, version: int) -> SyncStats:
        self.log.append(f"sync {version}")
        if not self.failed:
            self.failed = True
            self.servers.die()
            raise self.error(f"weight sync step update_weights_from_distributed failed on {URL}")
        return SyncStats(version, 0.0, 0.0, 0.0, 0.0, 0, 0)

    def rejoin(self) -> None:
        self.log.append("rejoin")


class HealthySync:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def sync(self, version: int) -> SyncStats:
        self.log.append(f"sync {version}")
        return SyncStats(version, 0.0, 0.0, 0.0, 0.0, 0, 0)

    def rejoin(self) -> None:
        self.log.append("rejoin")


@pytest.mark.parametrize(
    ("error", "checks_to_exit"), [(ParamSyncError, 0), (TimeoutError, 0), (ParamSyncError, 3)]
)
def test_a_server_dying_mid_sync_is_restarted_rejoined_and_the_sync_repeated(error, checks_to_exit):
    log: list[str] = []
    servers = Servers(log, checks_to_exit)
    supervisor = ServerSupervisor(servers, ParamSyncKilledMidSync(servers, log, error))
    stats = supervisor.push(3, current_version=2)
    assert stats.version == 3 and supervisor.restarted == 1
    # the restarted server first gets the current weights (version 2), then the new ones
    assert log == ["sync 3", f"restart {[URL]}", "rejoin", "sync 2", "sync 3"]


def test_a_failed_sync_with_every_server_alive_is_raised():
    log: list[str] = []
    servers = Servers(log)
    param_sync = ParamSyncKilledMidSync(servers, log, ParamSyncError)
    servers.die = lambda: None  # the sync fails, but no server died: nothing to recover, the error stands
    with pytest.raises(ParamSyncError, match="update_weights_from_distributed failed"):
        ServerSupervisor(servers, param_sync, death_grace_s=0.2).push(3, current_version=2)
    assert log == ["sync 3"]


def test_a_death_while_waiting_for_a_batch_is_recovered_between_waits():
    log: list[str] = []
    servers = Servers(log)
    supervisor = ServerSupervisor(servers, HealthySync(log), check_interval_s=0.01)
    answers = iter([[], [], ["batch"]])

    def wait_fn(timeout_s: float) -> list[str]:
        assert 0 < timeout_s <= 0.01
        log.append("wait")
        if len(log) == 2:
            servers.die()  # dies during the second wait; the next round recovers it
        return next(answers)

    ready, recovering_s = supervisor.wait(wait_fn, deadline=time.monotonic() + 60, version=4)
    assert ready == ["batch"] and supervisor.restarted == 1 and recovering_s >= 0
    assert log == ["wait", "wait", f"restart {[URL]}", "rejoin", "sync 4", "wait"]


def test_waiting_ends_at_the_deadline_and_never_recovers_servers_it_did_not_start():
    log: list[str] = []
    supervisor = ServerSupervisor(None, HealthySync(log), check_interval_s=0.01)
    ready, recovering_s = supervisor.wait(lambda timeout_s: [], deadline=time.monotonic() + 0.05, version=1)
    assert (ready, recovering_s, supervisor.restarted, log) == ([], 0.0, 0, [])
