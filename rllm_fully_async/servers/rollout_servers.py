# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Start, watch and stop the rollout servers of a run: SGLang on GPUs, the embedded CPU engine elsewhere.

Each server is a child process owned by a small Ray actor (:class:`ServerHost`) in the run's own placement
group, one bundle per server, placed as ``rollout_servers.placement`` says
(:mod:`rllm_fully_async.cluster.placement`). A server listens on, and is reached at, the loopback when the
cluster has one node and its node's IP otherwise, unless ``rollout_servers.host`` pins the address. An
SGLang bundle holds ``tp_size`` GPUs, so a tensor-parallel group stays on one node and Ray hands the actor
(and through ``CUDA_VISIBLE_DEVICES`` the server) exactly those GPUs.
The actor writes the server's log, and the server dies with the actor (parent-death signal), so a crashed
driver does not leave servers holding GPUs.

Both kinds share one lifecycle, :class:`RolloutServers`: launch, wait for ``/health`` with a deadline,
detect a server whose process exited, restart it on its old port (bounded), stop everything. The only
difference between the kinds is the command line (:func:`build_sglang_args`, :func:`build_cpu_engine_args`)
and the resources of a bundle.
"""

from __future__ import annotations

import ctypes
import http.client
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rllm_fully_async.cluster.addresses import LOOPBACK, http_url, server_addresses, strip_brackets
from rllm_fully_async.cluster.placement import Placement, PlacementRequest, cluster_nodes, reserve
from rllm_fully_async.config_schema import ROLLOUT_ENGINES, section_with_defaults
from rllm_fully_async.servers.ports import free_port, port_clash

SERVER_KINDS = tuple(ROLLOUT_ENGINES.values())
# The rollout_servers defaults of config/fully_async_base.yaml, for specs built in code.
_DEFAULTS = section_with_defaults("rollout_servers", None)
CPU_ENGINE_DTYPES = ("auto", "float32", "bfloat16", "float16")
INITIAL_WEIGHT_VERSION = 0

# Flags the launcher sets from the spec; extra_args must not set them again.
_MANAGED_FLAGS = {
    "--model-path": "model_path",
    "--model": "model_path",
    "--host": "host",
    "--port": "(chosen by the launcher)",
    "--tp-size": "tp_size",
    "--tp": "tp_size",
    "--tensor-parallel-size": "tp_size",
    "--mem-fraction-static": "gpu_memory_utilization",
    "--dtype": "dtype",
    "--context-length": "context_length",
    "--weight-version": "(versions start at 0 and are set by the weight sync)",
    "--num-threads": "num_threads",
    "--trust-remote-code": "trust_remote_code",
    "--api-key": "rollout_servers.api_key",
}


class RolloutServerError(RuntimeError):
    """A rollout server failed to start or died too often."""


@dataclass
class RolloutServerSpec:
    """What to launch: ``num_servers`` servers of one ``kind``, each on ``tp_size`` GPUs (SGLang) or CPU."""

    kind: str
    model_path: str
    num_servers: int = 1
    tp_size: int = 1
    gpu_memory_utilization: float = 0.8
    dtype: str = "auto"
    context_length: int | None = None
    trust_remote_code: bool = False
    num_threads: int | None = None
    num_cpus_per_server: float = _DEFAULTS["num_cpus_per_server"]
    host: str | None = _DEFAULTS["host"]
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    startup_timeout_s: float = _DEFAULTS["startup_timeout_s"]
    max_restarts: int = _DEFAULTS["max_restarts"]
    log_dir: str | None = None
    placement: Placement = field(
        default_factory=lambda: Placement.from_config(None, "rollout_servers.placement")
    )
    # SGLang's --api-key: every endpoint but /health then needs "Authorization: Bearer <key>".
    api_key: str | None = None

    def __post_init__(self) -> None:
        self.extra_args = [str(a) for a in self.extra_args]
        self.env = {str(k): str(v) for k, v in self.env.items()}
        self.host = None if self.host is None else strip_brackets(str(self.host))
        if self.kind not in SERVER_KINDS:
            raise ValueError(f"kind={self.kind!r} must be one of {SERVER_KINDS}")
        if not self.model_path:
            raise ValueError("model_path is required: a Hugging Face checkpoint directory or hub id")
        for name in ("num_servers", "tp_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be an integer >= 1")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization={self.gpu_memory_utilization} must be in (0, 1]")
        if self.num_cpus_per_server <= 0:
            raise ValueError(
                f"num_cpus_per_server={self.num_cpus_per_server} must be > 0 (Ray CPUs reserved per server; "
                "fractions such as 0.5 are fine)"
            )
        if self.max_restarts < 0 or self.startup_timeout_s <= 0:
            raise ValueError("max_restarts must be >= 0 and startup_timeout_s > 0")
        if self.kind == "cpu":
            if self.tp_size != 1:
                raise ValueError(f"tp_size={self.tp_size}: the CPU engine has no tensor parallelism; use 1")
            if self.dtype not in CPU_ENGINE_DTYPES:
                raise ValueError(f"dtype={self.dtype!r}: the CPU engine takes one of {CPU_ENGINE_DTYPES}")
            if self.trust_remote_code:
                raise ValueError("trust_remote_code: the CPU engine loads standard transformers models only")
        for arg in self.extra_args:
            flag = arg.split("=", 1)[0]
            if flag in _MANAGED_FLAGS:
                raise ValueError(
                    f"extra_args sets {flag}, which the launcher manages; set {_MANAGED_FLAGS[flag]} instead"
                )

    def placement_request(self) -> PlacementRequest:
        return PlacementRequest(
            "rollout servers",
            self.num_servers,
            self.bundle,
            self.placement,
            fix="lower rollout_servers.num_servers / num_cpus_per_server (on GPUs also "
            "rollout.tensor_model_parallel_size) or change rollout_servers.placement",
        )

    @property
    def bundle(self) -> dict[str, float]:
        """Ray resources reserved for one server (custom resources of its placement come on top)."""
        gpus = {"GPU": float(self.tp_size)} if self.kind == "sglang" else {}
        return {"CPU": float(self.num_cpus_per_server), **gpus}


def build_sglang_args(spec: RolloutServerSpec, port: int, host: str = LOOPBACK) -> list[str]:
    """``python -m sglang.launch_server`` for one server of ``spec`` (flag names of SGLang 0.5.6).

    Weight updates need nothing extra (``/update_weights_from_distributed`` is always served);
    ``--enable-memory-saver`` stays off because rollout servers keep their GPUs for the whole run.
    """
    args = [sys.executable, "-m", "sglang.launch_server"]
    args += ["--model-path", spec.model_path, "--host", host, "--port", str(port)]
    args += ["--tp-size", str(spec.tp_size), "--mem-fraction-static", str(spec.gpu_memory_utilization)]
    args += ["--dtype", spec.dtype, "--weight-version", str(INITIAL_WEIGHT_VERSION), "--skip-server-warmup"]
    if spec.context_length:
        args += ["--context-length", str(spec.context_length)]
    if spec.trust_remote_code:
        args.append("--trust-remote-code")
    if spec.api_key:
        args += ["--api-key", spec.api_key]
    return args + spec.extra_args


def build_cpu_engine_args(spec: RolloutServerSpec, port: int, host: str = LOOPBACK) -> list[str]:
    """``python -m rllm_fully_async.cpu_engine`` for one server of ``spec``, listening on ``host``."""
    args = [sys.executable, "-m", "rllm_fully_async.cpu_engine"]
    args += ["--model-path", spec.model_path, "--host", host, "--port", str(port)]
    args += ["--dtype", spec.dtype, "--weight-version", str(INITIAL_WEIGHT_VERSION)]
    if spec.num_threads:
        args += ["--num-threads", str(spec.num_threads)]
    if spec.context_length:
        args += ["--context-length", str(spec.context_length)]
    if spec.api_key:
        args += ["--api-key", spec.api_key]
    return args + spec.extra_args


def build_server_args(spec: RolloutServerSpec, port: int, host: str = LOOPBACK) -> list[str]:
    build = build_sglang_args if spec.kind == "sglang" else build_cpu_engine_args
    return build(spec, port, host)


def is_healthy(url: str, timeout_s: float = 5.0) -> bool:
    """``GET /health`` answers 200 (SGLang: the server generated a token or is busy generating)."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout_s) as response:
            return response.status == 200
    except (OSError, http.client.HTTPException):
        return False


_LAUNCH_MARK = "=== launching on port "
_LIBC = ctypes.CDLL(None) if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: the kernel kills it when its parent dies."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class ServerHost:
    """Owns one server process on the node (and GPUs) Ray placed this actor on."""

    def __init__(
        self, spec: RolloutServerSpec, index: int, single_node: bool = True, die_with_parent: bool = True
    ) -> None:
        import ray

        self._spec = spec
        self._index = index
        self._listen, self._reach = server_addresses(spec.host, ray.util.get_node_ip_address(), single_node)
        # The kernel's parent-death signal fires when the launching *thread* exits, so only a host whose
        # launches come from one long-lived thread (the Ray actor's) may use it.
        self._die_with_parent = die_with_parent
        self._proc: subprocess.Popen | None = None
        log_dir = Path(spec.log_dir or tempfile.mkdtemp(prefix="rollout_servers_"))
        log_dir.mkdir(parents=True, exist_ok=True)
        self._log_path = log_dir / f"{spec.kind}_server_{index}.log"

    def launch(self, port: int | None = None) -> str:
        """Start the server on ``port`` (None: a free one) and return its URL without waiting for health."""
        self.stop()
        port = port or free_port(self._listen)
        with open(self._log_path, "ab") as log:
            log.write(f"\n{_LAUNCH_MARK}{port} ===\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                build_server_args(self._spec, port, self._listen),
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self._spec.env},
                start_new_session=True,  # its own process group: stop() reaches SGLang's children too
                preexec_fn=_die_with_parent if self._die_with_parent else None,
            )
        return http_url(self._reach, port)

    def node(self) -> dict[str, str]:
        """Where this server runs: Ray's ``node_id`` and the node's ``ip``."""
        import ray

        return {"node_id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address()}

    def exit_code(self) -> int | None:
        """None while the server process runs."""
        return None if self._proc is None else self._proc.poll()

    def lost_its_port(self) -> bool:
        """Whether the server exited because its port was taken before it could bind it."""
        if self.exit_code() is None or not self._log_path.exists():
            return False
        return port_clash(self._log_path.read_text(errors="replace").rsplit(_LAUNCH_MARK, 1)[-1])

    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def log_tail(self, max_chars: int = 4000) -> str:
        if not self._log_path.exists():
            return ""
        return self._log_path.read_text(errors="replace")[-max_chars:]

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the server's process group, then SIGKILL whatever is left of it after ``grace_s``."""
        if self._proc is None:
            return
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self._proc.pid, sig)  # the group outlives its leader if children remain
            except ProcessLookupError:
                break
            try:
                self._proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                pass
        self._proc = None


class RolloutServers:
    """The rollout servers of one run, each hosted by a :class:`ServerHost` Ray actor in one placement group.

    Needs ``ray.init()`` first. ``start`` blocks until every server answers ``/health``. ``check`` lists
    servers whose process exited (or whose actor died); ``restart_dead`` brings them back on their old URLs,
    at most ``max_restarts`` times per server. ``stop`` (or leaving the ``with`` block) ends everything.
    """

    def __init__(self, spec: RolloutServerSpec) -> None:
        self.spec = spec
        self._urls: list[str] = []
        self._hosts: list[Any] = []
        self._restarts = [0] * spec.num_servers
        self._placement_group: Any = None
        self._single_node = True

    @property
    def urls(self) -> list[str]:
        return list(self._urls)

    def start(self, timeout_s: float | None = None) -> list[str]:
        """Reserve resources, launch every server, wait until all are healthy; returns their URLs."""
        import ray

        if not ray.is_initialized():
            raise RolloutServerError("RolloutServers.start() needs Ray: call ray.init() first")
        if self._hosts:
            raise RolloutServerError("rollout servers already started")
        timeout_s = timeout_s or self.spec.startup_timeout_s
        deadline = time.monotonic() + timeout_s
        try:
            self._placement_group = reserve(self.spec.placement_request())
            self._single_node = len(cluster_nodes()) == 1
            self._hosts = [self._new_host(i) for i in range(self.spec.num_servers)]
            self._urls = ray.get([h.launch.remote() for h in self._hosts], timeout=_remaining(deadline))
            self._wait_healthy(range(self.spec.num_servers), deadline, timeout_s, fresh_port=True)
        except BaseException:
            self.stop()
            raise
        return self.urls

    def nodes(self) -> list[dict[str, str]]:
        """Where each server runs: ``{"node_id", "ip"}`` of its node."""
        import ray

        return ray.get([h.node.remote() for h in self._hosts], timeout=30)

    def pids(self) -> list[int | None]:
        """Process id of each server (on its node), None where the host actor is gone."""
        import ray

        pids: list[int | None] = []
        for host in self._hosts:
            try:
                pids.append(ray.get(host.pid.remote(), timeout=30))
            except ray.exceptions.RayActorError:
                pids.append(None)
        return pids

    def check(self) -> list[str]:
        """URLs of servers whose process exited or whose host actor died."""
        return [self._urls[i] for i in range(len(self._hosts)) if self._death(i) is not None]

    def restart_dead(self, timeout_s: float | None = None) -> list[str]:
        """Restart every dead server on its old URL and wait for its health; returns the restarted URLs.

        Raises :class:`RolloutServerError` when a server has used up ``max_restarts``.
        """
        timeout_s = timeout_s or self.spec.startup_timeout_s
        deadline = time.monotonic() + timeout_s
        dead = {i: reason for i in range(len(self._hosts)) if (reason := self._death(i)) is not None}
        for i, reason in dead.items():
            self._relaunch(i, reason, same_port=True, deadline=deadline)
        self._wait_healthy(dead, deadline, timeout_s, fresh_port=False)
        return [self._urls[i] for i in dead]

    def stop(self) -> None:
        """Stop every server, end the host actors, release the placement group. Safe to call twice."""
        import ray

        stops = []
        for host in self._hosts:
            try:
                stops.append(host.stop.remote())
            except Exception:  # the actor is already gone
                pass
        if stops:
            ray.wait(stops, num_returns=len(stops), timeout=30)
        for host in self._hosts:
            ray.kill(host)
        self._hosts = []
        if self._placement_group is not None:
            ray.util.remove_placement_group(self._placement_group)
            self._placement_group = None

    def log_tail(self, index: int, max_chars: int = 4000) -> str:
        """The end of server ``index``'s log (stdout and stderr)."""
        import ray

        try:
            return ray.get(self._hosts[index].log_tail.remote(max_chars), timeout=30)
        except Exception as e:  # the actor (and with it the log's node) may be gone
            return f"<log unavailable: {e}>"

    def __enter__(self) -> RolloutServers:
        if not self._hosts:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ internals

    def _new_host(self, index: int) -> Any:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return (
            ray.remote(ServerHost)
            .options(
                num_cpus=self.spec.num_cpus_per_server,
                num_gpus=self.spec.tp_size if self.spec.kind == "sglang" else 0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self._placement_group, placement_group_bundle_index=index
                ),
            )
            .remote(self.spec, index, self._single_node)
        )

    def _death(self, index: int) -> str | None:
        """Why server ``index`` is dead, or None while its process runs."""
        import ray

        try:
            code = ray.get(self._hosts[index].exit_code.remote(), timeout=30)
        except ray.exceptions.RayActorError as e:
            return f"its host actor died ({type(e).__name__})"
        return None if code is None else f"exited with code {code}"

    def _lost_its_port(self, index: int) -> bool:
        import ray

        try:
            return bool(ray.get(self._hosts[index].lost_its_port.remote(), timeout=30))
        except ray.exceptions.RayActorError:
            return False

    def _relaunch(
        self, index: int, reason: str, *, same_port: bool, deadline: float, charge: bool = True
    ) -> None:
        """Launch server ``index`` again; ``charge``: count it against ``max_restarts``."""
        import ray

        self._restarts[index] += charge
        if self._restarts[index] > self.spec.max_restarts:
            raise RolloutServerError(
                f"rollout server {index} ({self._urls[index]}) {reason} and has used all "
                f"max_restarts={self.spec.max_restarts}; log tail:\n{self.log_tail(index)}"
            )
        port = int(self._urls[index].rsplit(":", 1)[1]) if same_port else None
        try:
            url = ray.get(self._hosts[index].launch.remote(port), timeout=_remaining(deadline))
        except ray.exceptions.RayActorError:
            self._hosts[index] = self._new_host(index)
            url = ray.get(self._hosts[index].launch.remote(port), timeout=_remaining(deadline))
        self._urls[index] = url

    def _wait_healthy(self, indices: Any, deadline: float, timeout_s: float, *, fresh_port: bool) -> None:
        """Poll ``/health`` until every server in ``indices`` answers; relaunch one whose process exits."""
        pending = set(indices)
        while pending:
            for i in sorted(pending):
                reason = self._death(i)
                if reason is not None:
                    # A fresh port that something else took before the server bound it is no fault of the
                    # server: try another port, within the startup deadline, without using up a restart.
                    clash = fresh_port and self._lost_its_port(i)
                    reason = f"{reason} while starting" + (" (its port was taken)" if clash else "")
                    self._relaunch(i, reason, same_port=not fresh_port, deadline=deadline, charge=not clash)
                elif is_healthy(self._urls[i]):
                    pending.discard(i)
            if pending and time.monotonic() > deadline:
                tails = "\n".join(
                    f"--- server {i} ({self._urls[i]}):\n{self.log_tail(i)}" for i in sorted(pending)
                )
                raise RolloutServerError(
                    f"rollout servers {sorted(pending)} not healthy within {timeout_s:.0f} s "
                    f"(startup_timeout_s); log tails:\n{tails}"
                )
            if pending:
                time.sleep(0.5)


class ExternalRolloutServers:
    """Servers started outside the run (``rollout_servers.urls``): waited for, never started or stopped."""

    def __init__(self, urls: list[str], startup_timeout_s: float = _DEFAULTS["startup_timeout_s"]) -> None:
        self._urls = [u.rstrip("/") for u in urls]
        self._timeout_s = startup_timeout_s

    @property
    def urls(self) -> list[str]:
        return list(self._urls)

    def start(self, timeout_s: float | None = None) -> list[str]:
        timeout_s = timeout_s or self._timeout_s
        deadline = time.monotonic() + timeout_s
        while (down := [u for u in self._urls if not is_healthy(u)]) and time.monotonic() < deadline:
            time.sleep(1.0)
        if down:
            raise RolloutServerError(
                f"rollout servers {down} did not answer /health within {timeout_s:.0f} s"
            )
        return self.urls

    def check(self) -> list[str]:
        return [u for u in self._urls if not is_healthy(u)]

    def restart_dead(self, timeout_s: float | None = None) -> list[str]:
        dead = self.check()
        if dead:
            raise RolloutServerError(f"rollout servers {dead} are down and were started outside this run")
        return []

    def stop(self) -> None:
        pass

    def __enter__(self) -> ExternalRolloutServers:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class CpuEngineProcess:
    """One CPU engine on this machine without Ray (tests, benchmarks): the run's launcher, used locally.

    Starts it with :class:`ServerHost` and waits for ``/health`` as :class:`RolloutServers` does;
    ``url`` is valid after ``start``.
    """

    def __init__(
        self,
        model_path: str,
        host: str = "127.0.0.1",
        port: int | None = None,
        num_threads: int | None = None,
        extra_args: list[str] | None = None,
        env: dict | None = None,
        api_key: str | None = None,
    ) -> None:
        self._port = port
        self._log_dir: tempfile.TemporaryDirectory | None = None
        self._host: ServerHost | None = None
        self.spec = RolloutServerSpec(
            kind="cpu",
            model_path=str(model_path),
            host=host,
            num_threads=num_threads,
            extra_args=list(extra_args or []),
            api_key=api_key,
            # Idle OpenMP threads must not spin: they would starve the HTTP event loop between steps.
            env={"OMP_WAIT_POLICY": "PASSIVE", **(env or {})},
        )
        self.url = ""

    def start(self, timeout_s: float = 60) -> CpuEngineProcess:
        """Start the server and wait until ``/health`` answers 200; raise with its log tail otherwise."""
        self._log_dir = tempfile.TemporaryDirectory(prefix="cpu_engine_")
        self.spec.log_dir = self._log_dir.name
        self._host = ServerHost(self.spec, 0, die_with_parent=False)
        self.url = self._host.launch(self._port)
        deadline = time.monotonic() + timeout_s
        while not is_healthy(self.url):
            code = self._host.exit_code()
            if code is not None or time.monotonic() > deadline:
                what = (
                    f"exited with code {code}"
                    if code is not None
                    else f"not healthy within {timeout_s:.0f} s"
                )
                tail = self._host.log_tail()
                self.stop()
                raise RolloutServerError(f"CPU engine for {self.spec.model_path} {what}; log tail:\n{tail}")
            time.sleep(0.1)
        return self

    @property
    def pid(self) -> int | None:
        """The engine's process id while it runs."""
        return None if self._host is None else self._host.pid()

    def stop(self) -> None:
        if self._host is not None:
            self._host.stop()
            self._host = None
        if self._log_dir is not None:
            self._log_dir.cleanup()
            self._log_dir = None

    def __enter__(self) -> CpuEngineProcess:
        return self.start() if self._host is None else self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def spec_from_config(cfg: Any) -> RolloutServerSpec:
    """The spec a run's config asks for.

    Reads ``actor_rollout_ref.model.{path, trust_remote_code}``, ``actor_rollout_ref.rollout.{name
    (sglang | cpu_engine), tensor_model_parallel_size, gpu_memory_utilization, dtype, max_model_len}`` and
    ``rollout_servers.{num_servers, startup_timeout_s, extra_args, num_threads}``, plus, when present,
    ``rollout_servers.{num_cpus_per_server, max_restarts, log_dir, host, env, api_key}``.
    """
    rollout = cfg.actor_rollout_ref.rollout
    servers = section_with_defaults("rollout_servers", cfg.rollout_servers)
    if rollout.name not in ROLLOUT_ENGINES:
        raise ValueError(
            f"actor_rollout_ref.rollout.name={rollout.name!r} must be one of {tuple(ROLLOUT_ENGINES)}"
        )
    kind = ROLLOUT_ENGINES[rollout.name]
    optional = {
        key: servers.get(key)
        for key in ("num_cpus_per_server", "max_restarts", "log_dir", "host", "env", "api_key")
        if servers.get(key) is not None
    }
    if isinstance(optional.get("env"), Mapping):
        optional["env"] = dict(optional["env"])
    placement = Placement.from_config(servers["placement"], "rollout_servers.placement")
    return RolloutServerSpec(
        kind=kind,
        model_path=str(cfg.actor_rollout_ref.model.path),
        num_servers=int(servers["num_servers"]),
        tp_size=int(rollout.get("tensor_model_parallel_size") or 1) if kind == "sglang" else 1,
        gpu_memory_utilization=float(rollout.get("gpu_memory_utilization") or 0.8),
        dtype=str(rollout.get("dtype") or "auto") if kind == "sglang" else "auto",
        context_length=rollout.get("max_model_len"),
        trust_remote_code=bool(cfg.actor_rollout_ref.model.get("trust_remote_code", False)),
        num_threads=servers.get("num_threads"),
        extra_args=list(servers.get("extra_args") or []),
        startup_timeout_s=float(servers["startup_timeout_s"]),
        placement=placement,
        **optional,
    )


# SGLang 0.5.6's --dtype spellings (ServerArgs.add_cli_args choices) -> torch dtype names
_SGLANG_DTYPES = {"half": "float16", "float16": "float16", "bfloat16": "bfloat16", "float": "float32",
                  "float32": "float32"}  # fmt: skip


def _checkpoint_dtype(model_path: str) -> str | None:
    """The dtype a checkpoint's config names (``torch_dtype``, newer ``dtype``), or None."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    dtype = getattr(config, "torch_dtype", None) or getattr(config, "dtype", None)
    return str(dtype).removeprefix("torch.") if dtype is not None else None


def server_weight_dtype(cfg: Any) -> str | None:
    """The dtype the rollout servers hold weights in: weight sync sends that, not the trainer's fp32.

    SGLang: ``actor_rollout_ref.rollout.dtype``; for ``auto``, SGLang's own rule
    (``configs/model_config._get_and_verify_dtype``): a float32 checkpoint runs in float16 (Gemma:
    bfloat16), any other in its own dtype. The CPU engine runs ``auto``, the checkpoint's dtype. None
    where the checkpoint names none (the trainer's dtype is sent).
    """
    rollout = cfg.actor_rollout_ref.rollout
    model_path = str(cfg.actor_rollout_ref.model.path)
    if ROLLOUT_ENGINES.get(rollout.name) == "cpu":
        return _checkpoint_dtype(model_path)
    dtype = str(rollout.get("dtype") or "auto").lower()
    if dtype != "auto":
        if dtype not in _SGLANG_DTYPES:
            raise ValueError(
                f"actor_rollout_ref.rollout.dtype={dtype!r} is not an SGLang dtype; "
                f"use one of {sorted(_SGLANG_DTYPES)}"
            )
        return _SGLANG_DTYPES[dtype]
    checkpoint = _checkpoint_dtype(model_path) or "float32"
    if checkpoint != "float32":
        return checkpoint
    from transformers import AutoConfig

    return "bfloat16" if AutoConfig.from_pretrained(model_path).model_type.startswith("gemma") else "float16"


def start_rollout_servers(cfg: Any) -> RolloutServers | ExternalRolloutServers:
    """Start (or, with ``rollout_servers.urls``, wait for) the servers a run's config asks for.

    See :func:`spec_from_config` for the keys read. Returns once every server is healthy.
    """
    urls = cfg.rollout_servers.get("urls")
    if urls:
        servers: RolloutServers | ExternalRolloutServers = ExternalRolloutServers(
            [str(u) for u in urls], float(cfg.rollout_servers.startup_timeout_s)
        )
    else:
        servers = RolloutServers(spec_from_config(cfg))
    servers.start()
    return servers


def _remaining(deadline: float) -> float:
    return max(1.0, deadline - time.monotonic())
