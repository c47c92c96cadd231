# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Runs of ``python -m rllm_fully_async.main`` joining an existing multi-node Ray cluster.

A ``ray.cluster_utils.Cluster`` runs three Ray nodes on this machine: a trainer node, a rollout node (a
custom resource and a label), and a node whose verl is not patched (its raylet puts an unpatched copy of
verl first on the workers' path). The runs find it through ``RAY_ADDRESS``, as ``ray start`` users do.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import test_e2e
from test_e2e import balanced, command, ledger

pytestmark = pytest.mark.slow
task = test_e2e.task  # the e2e tests' dataset, reward function and toy model (a fixture)

RUN_STEPS = 3


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Three Ray nodes; yields ``{"address", "trainer", "rollout", "unpatched"}`` (node ids)."""
    from ray.cluster_utils import Cluster

    from rllm_fully_async.patches import default_target, revert_patch

    unpatched = tmp_path_factory.mktemp("unpatched_verl")
    shutil.copytree(default_target(), unpatched / "verl", ignore=shutil.ignore_patterns("__pycache__"))
    revert_patch(unpatched / "verl")
    path = os.pathsep.join(p for p in (str(unpatched), os.environ.get("PYTHONPATH", "")) if p)

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"trainer_node": 2}})
    try:
        rollout = cluster.add_node(num_cpus=2, resources={"rollout_node": 2}, labels={"role": "rollout"})
        bad = cluster.add_node(num_cpus=1, resources={"unpatched_verl": 1}, env_vars={"PYTHONPATH": path})
        yield {
            "address": cluster.address,
            "trainer": cluster.head_node.node_id,
            "rollout": rollout.node_id,
            "unpatched": bad.node_id,
        }
    finally:
        cluster.shutdown()


def run_joined(cmd: list[str], out: Path, address: str, timeout: float = 420) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": address, "VERL_FILE_LOGGER_PATH": str(out / "metrics.jsonl")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=out)


def cluster_state(address: str) -> dict:
    """Alive nodes and free resources, seen by a separate driver."""
    probe = (
        f"import json, ray; ray.init(address={address!r}, log_to_driver=False); "
        "print(json.dumps({'alive': sum(n['Alive'] for n in ray.nodes()), "
        "'total': ray.cluster_resources(), 'free': ray.available_resources()}))"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_run_joins_the_cluster_places_servers_and_trainer_where_asked_and_leaves_it_running(
    cluster, task, tmp_path
):
    cmd = command(
        task, tmp_path,
        "rollout_servers.placement.resources={rollout_node:1}",
        "trainer.placement.resources={trainer_node:1}",
        f"trainer.total_training_steps={RUN_STEPS}",
    )  # fmt: skip
    proc = run_joined(cmd, tmp_path, cluster["address"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    out = proc.stdout
    assert f"joined the Ray cluster at {cluster['address']}: 3 node(s)" in out

    servers = re.findall(r"rollout server 0: http://(\S+):\d+ on node (\S+) \((\w+)\)", out)
    assert len(servers) == 1, out[-3000:]
    host, ip, node_id = servers[0]
    assert node_id == cluster["rollout"]
    assert host == ip != "127.0.0.1"  # more than one node: listening on, and reached at, the node's IP
    assert re.findall(r"training worker 0: on node \S+ \((\w+)\)", out) == [cluster["trainer"]]

    final = ledger(tmp_path)
    assert balanced(final["counts"])
    assert final["counts"]["trained"] == RUN_STEPS * 4

    state = cluster_state(cluster["address"])
    assert state["alive"] == 3  # the cluster the run joined is still running
    assert state["free"].get("CPU") == state["total"]["CPU"]  # and the run released all it held
    assert state["free"].get("rollout_node") == 2


def test_a_request_the_cluster_cannot_hold_fails_before_any_server_starts(cluster, task, tmp_path):
    logs = tmp_path / "server_logs"
    cmd = command(
        task, tmp_path,
        "rollout_servers.placement.resources={gpu_box:1}",
        f"rollout_servers.log_dir={logs}",
    )  # fmt: skip
    proc = run_joined(cmd, tmp_path, cluster["address"], timeout=180)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "the Ray cluster cannot hold the rollout servers" in proc.stderr
    assert "no node has the resource 'gpu_box'" in proc.stderr
    assert "rollout_servers.placement" in proc.stderr  # the key to change
    assert "rollout server 0:" not in proc.stdout and not logs.exists()  # no server host ever started


def test_a_training_worker_on_a_node_with_unpatched_verl_fails_naming_the_node(cluster, task, tmp_path):
    cmd = command(task, tmp_path, "trainer.placement.resources={unpatched_verl:1}")
    proc = run_joined(cmd, tmp_path, cluster["address"], timeout=300)
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"(node id {cluster['unpatched']})" in proc.stderr
    assert "is not patched" in proc.stderr and "python -m rllm_fully_async.patches apply" in proc.stderr
    assert cluster_state(cluster["address"])["alive"] == 3
