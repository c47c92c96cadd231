# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The run's GPU/CPU reservations are checked against the Ray cluster before anything starts.

Ray schedules on declared resources, so a cluster whose nodes declare GPUs (``num_gpus`` in
``ray.init`` / ``ray.cluster_utils.Cluster``) exercises the arithmetic without real GPUs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap

import pytest
from hydra import compose, initialize_config_dir

from rllm_fully_async.config_validation import ConfigError, validate_batch_split, validate_cluster_fit
from rllm_fully_async.paths import config_dir

NODE_8_GPUS = {"CPU": 32.0, "GPU": 8.0}


def load(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        return compose(config_name=name, overrides=["actor_rollout_ref.model.path=/m", *overrides])


@pytest.mark.parametrize("name", ["fully_async_ppo_trainer", "fully_async_ppo_megatron_trainer"])
def test_gpu_defaults_fit_one_8_gpu_node(name):
    cfg = load(name)
    validate_cluster_fit(cfg, [NODE_8_GPUS])
    validate_batch_split(cfg)


def test_trainer_gpus_plus_server_gpus_over_the_node_is_refused_naming_the_keys():
    # 8 trainer GPUs + one server on an 8-GPU node: the old default, which failed after servers started.
    cfg = load("fully_async_ppo_trainer", "trainer.n_gpus_per_node=8", "rollout_servers.num_servers=1")
    with pytest.raises(ConfigError) as err:
        validate_cluster_fit(cfg, [NODE_8_GPUS])
    msg = str(err.value)
    for key in ("trainer.n_gpus_per_node", "rollout_servers.num_servers", "tensor_model_parallel_size"):
        assert key in msg
    assert "GPU: 9" in msg and "GPU: 8" in msg, msg


def test_server_tensor_parallel_size_counts():
    fits = load("fully_async_ppo_trainer", "actor_rollout_ref.rollout.tensor_model_parallel_size=2",
                "rollout_servers.num_servers=2")  # fmt: skip
    validate_cluster_fit(fits, [NODE_8_GPUS])
    over = load("fully_async_ppo_trainer", "actor_rollout_ref.rollout.tensor_model_parallel_size=2")
    with pytest.raises(ConfigError, match="GPU: 12"):
        validate_cluster_fit(over, [NODE_8_GPUS])


def test_servers_given_by_url_reserve_nothing():
    cfg = load("fully_async_ppo_trainer", "trainer.n_gpus_per_node=8", "rollout_servers.urls=[http://h:1]")
    validate_cluster_fit(cfg, [NODE_8_GPUS])


def test_trainer_group_must_fit_on_one_node():
    # 2 nodes x 4 GPUs hold 8 GPUs, but a trainer node's ranks share one node (trainer.placement strict_pack).
    cfg = load("fully_async_ppo_trainer", "trainer.n_gpus_per_node=6", "rollout_servers.num_servers=2")
    with pytest.raises(ConfigError, match=r"strict_pack needs \{CPU: 6, GPU: 6\} on one node"):
        validate_cluster_fit(cfg, [{"CPU": 16.0, "GPU": 4.0}] * 2)
    # Allowed to span nodes, the same trainer fits.
    spread = load(
        "fully_async_ppo_trainer", "trainer.n_gpus_per_node=6", "rollout_servers.num_servers=2",
        "trainer.placement.strategy=pack",
    )  # fmt: skip
    validate_cluster_fit(spread, [{"CPU": 16.0, "GPU": 4.0}] * 2)


def test_cpu_trainer_counts_cpus():
    cfg = load("fully_async_ppo_cpu", "trainer.n_gpus_per_node=4", "rollout_servers.num_servers=2")
    validate_cluster_fit(cfg, [{"CPU": 6.0}])
    with pytest.raises(ConfigError, match="CPU: 6"):
        validate_cluster_fit(cfg, [{"CPU": 5.0}])


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["trainer.n_gpus_per_node=3"], "async_training.required_samples"),  # 32 x 8 = 256 samples over 3
        (["actor_rollout_ref.actor.ppo_mini_batch_size=5", "actor_rollout_ref.rollout.n=3"], "samples=5"),
    ],
)
def test_batch_must_split_over_trainer_ranks(overrides, key):
    cfg = load("fully_async_ppo_trainer", *overrides)
    with pytest.raises(ConfigError, match=key) as err:
        validate_batch_split(cfg)
    assert "trainer.n_gpus_per_node" in str(err.value)


def test_megatron_parallel_grid_must_divide_trainer_ranks():
    tp3 = "actor_rollout_ref.actor.megatron.tensor_model_parallel_size=3"
    cfg = load("fully_async_ppo_megatron_trainer", tp3)
    with pytest.raises(ConfigError, match="tensor_model_parallel_size"):
        validate_batch_split(cfg)


_REAL_RAY = textwrap.dedent(
    """
    import ray
    from hydra import compose, initialize_config_dir
    from ray.cluster_utils import Cluster

    from rllm_fully_async.cluster.placement import cluster_nodes
    from rllm_fully_async.config_validation import ConfigError, validate_cluster_fit
    from rllm_fully_async.paths import config_dir

    def load(*overrides):
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
            return compose("fully_async_ppo_trainer", ["actor_rollout_ref.model.path=/m", *overrides])

    cluster = Cluster()
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=16, num_gpus=8)
        ray.init(address=cluster.address)
        cluster.wait_for_nodes()
        nodes = cluster_nodes()
        assert sorted(n.resources["GPU"] for n in nodes) == [8.0, 8.0], nodes
        validate_cluster_fit(load("trainer.nnodes=2", "trainer.n_gpus_per_node=1"), nodes)
        try:
            validate_cluster_fit(load("trainer.nnodes=2", "trainer.n_gpus_per_node=8"), nodes)
        except ConfigError as err:
            print("REFUSED", err)
    finally:
        ray.shutdown()
        cluster.shutdown()
    """
)


def test_real_ray_cluster_with_declared_gpus():
    """Two nodes declaring 8 GPUs each: per-node resources from Ray; full trainers leave no server GPU."""
    # A Cluster records its address in $RAY_TMPDIR/ray/ray_current_cluster, where every later ray.init()
    # on the machine would find and join it: keep that file in a private, short (socket paths) directory.
    with tempfile.TemporaryDirectory(prefix="rfa", dir="/tmp") as ray_tmp:
        env = {**os.environ, "RAY_DEDUP_LOGS": "0", "RAY_TMPDIR": ray_tmp}
        proc = subprocess.run(
            [sys.executable, "-c", _REAL_RAY], capture_output=True, text=True, timeout=180, env=env
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "REFUSED trainer.n_gpus_per_node" in proc.stdout, proc.stdout[-2000:]
    assert "GPU: 20" in proc.stdout and "GPU: 16" in proc.stdout, proc.stdout[-2000:]


def test_main_refuses_before_any_server_starts(tmp_path):
    """The CPU default asking for more trainer workers than Ray has CPUs exits 2 naming the keys."""
    proc = subprocess.run(
        [
            sys.executable, "-m", "rllm_fully_async.main", "--config-name", "fully_async_ppo_cpu",
            "trainer.n_gpus_per_node=16",
            f"trainer.default_local_dir={tmp_path}/ckpt",
            f"hydra.run.dir={tmp_path}/hydra",
            f"rollout_servers.log_dir={tmp_path}/servers",
        ],
        capture_output=True, text=True, timeout=180, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "configuration error: trainer.n_gpus_per_node" in proc.stderr
    assert "rollout_servers.num_servers" in proc.stderr
    assert not (tmp_path / "servers").exists() or not any((tmp_path / "servers").iterdir())
