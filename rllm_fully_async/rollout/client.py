# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Async client for rollout servers that speak SGLang's native HTTP API (SGLang itself or the CPU engine).

Fully-asynchronous training interrupts generation for every weight sync: the servers abort their running
requests (``/pause_generation`` in ``abort`` mode), take new weights, and continue. This client turns that
into *partial rollout*: an aborted request comes back with the tokens generated so far, waits until
:meth:`RolloutClient.resume`, and is re-submitted as prompt + tokens so far with the remaining token budget.
Every returned token is labelled with the weight version that produced it (:class:`Chunk`), which is what
staleness accounting needs.

It also spreads requests over several servers (least in flight first), fails over on connection errors,
timeouts and 5xx answers (the request restarts from its last known prompt + tokens, so a server dying
mid-request costs only that request's unreturned tokens), takes failing servers out of rotation and puts them
back when their ``/health`` passes again. With every server out of rotation (say the only one is being
restarted), a request waits up to ``outage_timeout_s`` for one to come back rather than failing at once.
Every HTTP call has a timeout.

Behind ``sglang-router`` pass the router as ``router_url`` (generation goes through it) and the workers as
``server_urls``: control calls (pause, resume, weight updates, versions, cache flushes) always go to every
worker directly, because the router does not fan them out to its workers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp

from rllm_fully_async.cluster.addresses import rendezvous_host
from rllm_fully_async.rollout.rollout_fn import chat_prompt_ids

logger = logging.getLogger(__name__)

# SGLang's own default when a request does not set max_new_tokens; the client needs the total budget to
# compute what is left after an abort.
DEFAULT_MAX_NEW_TOKENS = 128


class RolloutClientError(RuntimeError):
    """Base class of the client's errors."""


class NoServerAvailableError(RolloutClientError):
    """Every attempt failed: the servers are down, unreachable or timing out."""


class ServerRequestError(RolloutClientError):
    """A server refused a request (4xx, or ``success: false``); retrying elsewhere would not help."""


class ServerProtocolError(RolloutClientError):
    """A server's answer does not follow SGLang's native API."""


@dataclass
class Chunk:
    """Tokens produced under one weight version."""

    version: int
    token_ids: list[int]
    logprobs: list[float]


@dataclass
class GenerationOutput:
    """One finished generation, possibly stitched together from several partial rollouts."""

    prompt_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]
    chunks: list[Chunk]
    finish_reason: str
    num_aborts: int = 0
    num_failovers: int = 0
    text: str | None = None

    @property
    def min_version(self) -> int:
        """Oldest weight version that produced a token (-1 when no token was produced)."""
        return min((c.version for c in self.chunks), default=-1)

    @property
    def max_version(self) -> int:
        """Newest weight version that produced a token (-1 when no token was produced)."""
        return max((c.version for c in self.chunks), default=-1)


@dataclass
class _Server:
    url: str
    up: bool = True
    in_flight: int = 0
    sent: int = 0
    failures: int = 0
    last_error: str = ""


@dataclass
class _Segment:
    """What one /generate call returned."""

    token_ids: list[int]
    logprobs: list[float]
    version: int | None  # None: SGLang sent none (a request aborted while queued or retracted)
    finish_type: str


class _Dispatch:
    """One request between passing the pause gate and having its body written to the socket."""

    def __init__(self, client: RolloutClient) -> None:
        self._client = client
        self._done = False

    def finish(self) -> None:
        if not self._done:
            self._done = True
            self._client._dispatch_finished()


class _RetryableError(Exception):
    """Connection error, timeout or 5xx: the request may succeed on another server."""


def _normalize_url(url: str) -> str:
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(
            f"server url {url!r} must start with http:// or https://, e.g. http://127.0.0.1:30000"
        )
    return url.rstrip("/")


def parse_weight_version(value: Any) -> int:
    """SGLang reports ``weight_version`` as a string; versions here are "0", "1", ...

    ``"default"`` is SGLang's value before any versioned update, i.e. the initial weights (version 0).
    """
    if value == "default":
        return 0
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ServerProtocolError(
            f"weight_version {value!r} is not an integer; start servers with --weight-version 0 and pass "
            "integer versions to update_weight_version / weight updates"
        ) from None


def parse_generate_response(body: Any) -> _Segment:
    """Tokens, logprobs, weight version and finish type of one non-streamed ``/generate`` answer.

    SGLang 0.5.6 stamps ``meta_info.weight_version`` on outputs of the running batch only
    (``TokenizerManager._handle_batch_output``). A request aborted while waiting in the queue, including one
    retracted there after generating, is answered by ``TokenizerManager._handle_abort_req``: 200,
    ``finish_reason`` abort, the tokens and logprobs received so far, ``completion_tokens``, and no
    ``weight_version``. Such a segment has ``version=None``; any other answer without a version is an error.
    """
    if not isinstance(body, dict) or not isinstance(body.get("meta_info"), dict):
        raise ServerProtocolError(f"/generate answer has no meta_info: {str(body)[:300]}")
    meta = body["meta_info"]
    finish = meta.get("finish_reason")
    finish_type = finish.get("type") if isinstance(finish, dict) else finish
    if finish_type not in ("stop", "length", "abort"):
        raise ServerProtocolError(f"/generate answer has unknown finish_reason {finish!r}")
    triples = meta.get("output_token_logprobs")
    if triples is None:
        raise ServerProtocolError(
            "/generate answer has no meta_info.output_token_logprobs (return_logprob=true)"
        )
    try:
        logprobs = [float(t[0]) for t in triples]
        token_ids = [int(t[1]) for t in triples]
    except (TypeError, ValueError, IndexError):
        raise ServerProtocolError(f"malformed output_token_logprobs: {str(triples)[:300]}") from None
    output_ids = body.get("output_ids")
    if output_ids is not None and list(output_ids) != token_ids:
        raise ServerProtocolError(
            f"output_ids ({len(output_ids)} tokens) disagree with output_token_logprobs ({len(token_ids)})"
        )
    if "weight_version" not in meta:
        if finish_type != "abort":
            raise ServerProtocolError(
                f"/generate answer (finish_reason {finish_type}) has no meta_info.weight_version"
            )
        return _Segment(token_ids, logprobs, None, finish_type)
    return _Segment(token_ids, logprobs, parse_weight_version(meta["weight_version"]), finish_type)


def parse_load(body: Any) -> int:
    """Requests running or waiting, from any of the ``/get_load`` shapes SGLang versions return."""
    if isinstance(body, list):
        return sum(parse_load(item) for item in body)
    if isinstance(body, dict):
        if "load" in body:
            return int(body["load"])
        if "num_reqs" in body:
            return int(body["num_reqs"]) + int(body.get("num_waiting_reqs", 0))
    raise ServerProtocolError(f"unrecognised /get_load answer: {str(body)[:300]}")


class RolloutClient:
    """Generation with partial rollout, load balancing and failover; pause/resume and weight-update control.

    Use it from one asyncio event loop (the HTTP session and the health checker live on it).
    """

    def __init__(
        self,
        server_urls: list[str],
        *,
        router_url: str | None = None,
        tp_size: int = 1,
        request_timeout_s: float = 600.0,
        control_timeout_s: float = 300.0,
        connect_timeout_s: float = 10.0,
        health_timeout_s: float = 10.0,
        max_attempts: int = 3,
        backoff_s: float = 0.5,
        health_check_interval_s: float = 5.0,
        outage_timeout_s: float = 0.0,
        api_key: str | None = None,
    ) -> None:
        """``api_key``: sent as ``Authorization: Bearer <key>`` on every request, for servers started with
        SGLang's ``--api-key`` (the CPU engine takes the same flag)."""
        if not server_urls:
            raise ValueError("server_urls is empty: pass the URL of at least one rollout server")
        if max_attempts < 1:
            raise ValueError(f"max_attempts={max_attempts} must be >= 1")
        if tp_size < 1:
            raise ValueError(f"tp_size={tp_size} must be >= 1")
        if outage_timeout_s < 0:
            raise ValueError(f"outage_timeout_s={outage_timeout_s} must be >= 0")
        self._servers = [_Server(_normalize_url(u)) for u in server_urls]
        if len({s.url for s in self._servers}) != len(self._servers):
            raise ValueError(f"server_urls has duplicates: {server_urls}")
        self._gen_servers = [_Server(_normalize_url(router_url))] if router_url else self._servers
        self._tp_size = tp_size
        self._request_timeout = aiohttp.ClientTimeout(total=request_timeout_s, sock_connect=connect_timeout_s)
        self._control_timeout = aiohttp.ClientTimeout(total=control_timeout_s, sock_connect=connect_timeout_s)
        self._health_timeout = aiohttp.ClientTimeout(total=health_timeout_s)
        self._control_timeout_s = control_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._health_check_interval_s = health_check_interval_s
        self._outage_timeout_s = outage_timeout_s
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

        self._paused = False
        # The weight version the servers generate under, as far as this client knows: the newest version an
        # answer carried, or the one resume() was given. It labels tokens of answers that carry no version.
        self._version = 0
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._at_gate = 0
        self._awaiting_server = 0
        self._dispatching = 0
        self._all_dispatched = asyncio.Event()
        self._all_dispatched.set()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._round_robin = 0
        self._session: aiohttp.ClientSession | None = None
        self._health_task: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()

    # ------------------------------------------------------------------ generation

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict,
        *,
        partial_rollout: bool = True,
        resume_on_abort: bool = True,
        out: GenerationOutput | None = None,
    ) -> GenerationOutput:
        """Generate one response for ``prompt_ids``.

        ``out``: the generation is recorded into this object as it goes, and one that already holds tokens
        is continued (a generation saved with a checkpoint, resumed): whoever holds it can read the
        tokens so far while the servers are paused.

        ``partial_rollout=True``: after an abort (a pause for weight sync) wait for :meth:`resume`, then
        continue from prompt + tokens so far with the remaining ``max_new_tokens``; chunks record versions.
        ``partial_rollout=False``: after an abort wait, then start over from the prompt, so the output comes
        from exactly one weight version. ``resume_on_abort=False`` returns at the first abort instead
        (``finish_reason == "abort"``). Stop strings that straddle an abort boundary are not detected.
        """
        if sampling_params.get("n", 1) != 1:
            raise ValueError(
                f"sampling_params['n']={sampling_params['n']}: generate() returns one sample; call it n times"
            )
        prompt_ids = [int(t) for t in prompt_ids]
        if not prompt_ids:
            raise ValueError("prompt_ids is empty")
        # The whole response's budget; None leaves it to the server (up to the context length).
        budget = sampling_params.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
        min_new = int(sampling_params.get("min_new_tokens") or 0)
        if out is None:
            out = GenerationOutput(prompt_ids, [], [], [], finish_reason="length")
        elif out.prompt_ids != prompt_ids:
            raise ValueError("generate(out=...): out holds a generation for another prompt")
        idle_aborts = 0
        while True:
            params = dict(sampling_params)
            if budget is not None:
                params["max_new_tokens"] = int(budget) - len(out.token_ids)
                if params["max_new_tokens"] <= 0:
                    out.finish_reason = "length"
                    return out
            if min_new:
                params["min_new_tokens"] = max(0, min_new - len(out.token_ids))
            payload = {
                "input_ids": prompt_ids + out.token_ids,
                "sampling_params": params,
                "return_logprob": True,
                "stream": False,
            }
            segment, failovers = await self._generate_once(payload)
            out.num_failovers += failovers
            self._append(out, segment)
            if segment.finish_type != "abort":
                out.finish_reason = segment.finish_type
                return out
            out.num_aborts += 1
            if not resume_on_abort:
                out.finish_reason = "abort"
                return out
            if not partial_rollout:
                out.token_ids, out.logprobs, out.chunks = [], [], []
            # An abort we did not cause (another controller paused the server) would otherwise be
            # re-submitted in a tight loop; back off while nothing is produced.
            idle_aborts = 0 if segment.token_ids or self._paused else idle_aborts + 1
            if idle_aborts:
                await asyncio.sleep(min(self._backoff_s * 2 ** (idle_aborts - 1), 5.0))

    async def chat(
        self,
        tokenizer: Any,
        messages: list[dict],
        sampling_params: dict,
        *,
        chat_template_kwargs: dict | None = None,
        **generate_kwargs: Any,
    ) -> GenerationOutput:
        """Apply the tokenizer's Hugging Face chat template (generation prompt added), then :meth:`generate`.

        ``text`` of the result is the decoded response without special tokens.
        """
        prompt_ids = chat_prompt_ids(tokenizer, messages, **(chat_template_kwargs or {}))
        out = await self.generate(prompt_ids, sampling_params, **generate_kwargs)
        out.text = tokenizer.decode(out.token_ids, skip_special_tokens=True)
        return out

    @staticmethod
    def _append(out: GenerationOutput, segment: _Segment) -> None:
        if not segment.token_ids:
            return
        out.token_ids += segment.token_ids
        out.logprobs += segment.logprobs
        if out.chunks and out.chunks[-1].version == segment.version:
            out.chunks[-1].token_ids += segment.token_ids
            out.chunks[-1].logprobs += segment.logprobs
        else:
            out.chunks.append(Chunk(segment.version, list(segment.token_ids), list(segment.logprobs)))

    async def _generate_once(self, payload: dict) -> tuple[_Segment, int]:
        """One /generate on the least-loaded server; on failure the next attempt goes elsewhere.

        Returns the parsed answer and how many attempts failed before it.
        """
        errors: list[str] = []
        outage_deadline: float | None = None
        for attempt in range(1, self._max_attempts + 1):
            await self._wait_resumed()
            server = self._pick()
            if server is None and await self._probe_out_servers(self._gen_servers):
                await self._wait_resumed()
                server = self._pick()
            if server is None:
                now = asyncio.get_running_loop().time()
                outage_deadline = outage_deadline or now + self._outage_timeout_s
                server = await self._wait_for_rotation(outage_deadline)
            if server is None:
                errors.append("no server in rotation")
            else:
                # Nothing awaits between passing the gate and _post_generate registering the dispatch, so
                # pause() either waits for this request to be written or this request sees the pause.
                rid = uuid.uuid4().hex
                # Versions change only while paused, and a pause aborts every request, so whatever this
                # request generates comes from the version in force now.
                version = self._version
                try:
                    body = await self._post_generate(server, {**payload, "rid": rid})
                    segment = parse_generate_response(body)
                    if segment.version is None:
                        segment.version = version
                    else:
                        self._version = max(self._version, segment.version)
                    return segment, len(errors)
                except _RetryableError as e:
                    errors.append(f"{server.url}: {e}")
                    self._mark_failed(server, str(e))
                    if isinstance(e.__cause__, asyncio.TimeoutError):
                        self._spawn(self._abort_quietly(server, rid))
            if attempt < self._max_attempts:
                await asyncio.sleep(self._backoff_s * 2 ** (attempt - 1))
        urls = ", ".join(s.url for s in self._gen_servers)
        raise NoServerAvailableError(
            f"/generate failed {self._max_attempts} times on rollout servers [{urls}]: " + "; ".join(errors)
        )

    async def _post_generate(self, server: _Server, payload: dict) -> Any:
        dispatch = _Dispatch(self)
        self._dispatching += 1
        self._all_dispatched.clear()
        server.in_flight += 1
        server.sent += 1
        self._in_flight += 1
        self._idle.clear()
        session = self._ensure_started()
        try:
            async with session.post(
                f"{server.url}/generate",
                json=payload,
                timeout=self._request_timeout,
                trace_request_ctx={"dispatch": dispatch},
            ) as resp:
                dispatch.finish()
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise _RetryableError(f"{type(e).__name__}: {e}") from e
        finally:
            dispatch.finish()
            server.in_flight -= 1
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()
        if status >= 500:
            raise _RetryableError(f"HTTP {status}: {text[:300]}")
        if status >= 400:
            raise ServerRequestError(f"{server.url}/generate answered HTTP {status}: {text[:1000]}")
        server.failures = 0
        return _json(text, f"{server.url}/generate")

    async def _wait_for_rotation(self, deadline: float) -> _Server | None:
        """With every server out of rotation, wait until ``deadline`` for the health checker to put one back.

        Polls local state only: one health checker probes the servers, however many requests wait.
        """
        loop = asyncio.get_running_loop()
        self._awaiting_server += 1
        try:
            while loop.time() < deadline:
                await asyncio.sleep(min(0.2, deadline - loop.time()))
                await self._wait_resumed()
                if (server := self._pick()) is not None:
                    return server
            return None
        finally:
            self._awaiting_server -= 1

    def _pick(self) -> _Server | None:
        """The server in rotation with the fewest requests in flight; ties go round-robin."""
        n = len(self._gen_servers)
        self._round_robin = (self._round_robin + 1) % n
        order = self._gen_servers[self._round_robin :] + self._gen_servers[: self._round_robin]
        candidates = [s for s in order if s.up]
        return min(candidates, key=lambda s: s.in_flight) if candidates else None

    # ------------------------------------------------------------------ pause / resume

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def in_flight(self) -> int:
        """Generation requests currently sent and not yet answered."""
        return self._in_flight

    @property
    def waiting(self) -> dict[str, int]:
        """Requests held back, by reason: ``at_gate`` (paused), ``for_server`` (none in rotation)."""
        return {"at_gate": self._at_gate, "for_server": self._awaiting_server}

    async def pause(self) -> None:
        """Close the gate (no request is sent after this returns) and abort running requests on every server.

        Aborted requests come back with their partial tokens and wait for :meth:`resume`. SGLang answers
        ``/pause_generation`` before the aborted requests have come back: call :meth:`wait_idle` before
        changing weights or versions, or their partial tokens may be stamped with the new version.
        """
        self._paused = True
        self._resumed.clear()
        try:
            # Requests that passed the gate before it closed must be on the wire before the pause goes out.
            await asyncio.wait_for(self._all_dispatched.wait(), self._connect_timeout_s + 5.0)
        except asyncio.TimeoutError:
            logger.warning("%d requests still connecting when pausing the rollout servers", self._dispatching)
        await self._broadcast("/pause_generation", {"mode": "abort"})

    async def resume(self, version: int | None = None) -> None:
        """``/continue_generation`` on every server, then open the gate.

        ``version``: the weight version the servers now hold (after a sync). It labels the tokens of an answer
        that carries no version of its own (a request aborted while queued), should one arrive before any
        answer that does.
        """
        if version is not None:
            self._version = int(version)
        await self._broadcast("/continue_generation", {})
        self._paused = False
        self._resumed.set()

    async def wait_idle(self, timeout_s: float | None = None) -> None:
        """Wait until no generation request is in flight (after a pause: all aborted requests returned)."""
        timeout_s = self._control_timeout_s if timeout_s is None else timeout_s
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except asyncio.TimeoutError:
            busy = {s.url: s.in_flight for s in self._gen_servers if s.in_flight}
            raise TimeoutError(
                f"{self._in_flight} requests still in flight after {timeout_s} s: {busy}"
            ) from None

    async def _wait_resumed(self) -> None:
        if not self._paused:
            return
        self._at_gate += 1
        try:
            while self._paused:
                await self._resumed.wait()
        finally:
            self._at_gate -= 1

    def _dispatch_finished(self) -> None:
        self._dispatching -= 1
        if self._dispatching == 0:
            self._all_dispatched.set()

    # ------------------------------------------------------------------ control plane

    async def flush_cache(self) -> None:
        await self._broadcast("/flush_cache", {})

    async def update_weight_version(self, version: int) -> None:
        """Set the version every server stamps on what it generates from now on."""
        await self._broadcast(
            "/update_weight_version", {"new_version": str(int(version)), "abort_all_requests": False}
        )

    async def init_weights_update_group(
        self, master_address: str, master_port: int, world_size: int, group_name: str, backend: str
    ) -> None:
        """Make every server join the trainer's weight-update group; server i gets ``rank_offset = 1 + i*tp``.

        The servers block until the trainer (rank 0) joins too, so call this concurrently with the trainer.
        """
        expected = 1 + len(self._servers) * self._tp_size
        if world_size != expected:
            raise ValueError(
                f"world_size={world_size}, expected 1 trainer rank + {len(self._servers)} servers x "
                f"tp_size {self._tp_size} = {expected}"
            )
        payloads = [
            {
                "master_address": rendezvous_host(master_address),
                "master_port": int(master_port),
                "rank_offset": 1 + i * self._tp_size,
                "world_size": world_size,
                "group_name": group_name,
                "backend": backend,
            }
            for i in range(len(self._servers))
        ]
        await self._broadcast("/init_weights_update_group", payloads, require_all=True)

    async def update_weights_from_distributed(
        self,
        names: list[str],
        dtypes: list[str],
        shapes: list[list[int]],
        group_name: str,
        version: int | None = None,
        load_format: str | None = None,
        flush_cache: bool = True,
    ) -> None:
        """Every server receives one bucket of tensors broadcast by the trainer (rank 0) over the group.

        Returns once every server has loaded the bucket; run the trainer's broadcast concurrently.
        ``load_format="flattened_bucket"``: the trainer broadcasts one uint8 buffer holding all tensors.
        SGLang ignores ``version`` for an update made while paused: use :meth:`update_weight_version`.
        ``flush_cache`` (SGLang's default: true) flushes the prefix cache, and empties CUDA's cache, after the
        bucket; a sync of many buckets sends false and calls :meth:`flush_cache` once at the end.
        """
        if not len(names) == len(dtypes) == len(shapes):
            raise ValueError(f"names/dtypes/shapes lengths differ: {len(names)}/{len(dtypes)}/{len(shapes)}")
        payload: dict[str, Any] = {
            "names": list(names),
            "dtypes": [str(d).removeprefix("torch.") for d in dtypes],
            "shapes": [list(map(int, s)) for s in shapes],
            "group_name": group_name,
            "flush_cache": bool(flush_cache),
        }
        if version is not None:
            payload["weight_version"] = str(int(version))
        if load_format is not None:
            payload["load_format"] = load_format
        await self._broadcast("/update_weights_from_distributed", payload, require_all=True)

    async def destroy_weights_update_group(self, group_name: str) -> None:
        """Make every reachable server leave the weight-update group ``group_name``."""
        await self._broadcast("/destroy_weights_update_group", {"group_name": group_name})

    def server_status(self) -> list[dict[str, Any]]:
        """Per endpoint (router first, if any): url, in rotation, requests in flight and sent, last error."""
        return [
            {"url": s.url, "up": s.up, "in_flight": s.in_flight, "sent": s.sent, "last_error": s.last_error}
            for s in self._endpoints()
        ]

    def _endpoints(self) -> list[_Server]:
        """Generation endpoints and workers, each once."""
        return list({id(s): s for s in self._gen_servers + self._servers}.values())

    async def _broadcast(
        self, path: str, payload: dict | list[dict], *, require_all: bool = False
    ) -> list[Any]:
        """POST to every worker concurrently.

        A refusal (4xx/5xx or ``success: false``) always raises. An unreachable or timing-out server is taken
        out of rotation; that raises only when ``require_all`` or when no server answered at all.
        """
        session = self._ensure_started()
        payloads = payload if isinstance(payload, list) else [payload] * len(self._servers)

        async def one(server: _Server, body: dict) -> tuple[str, Any]:
            try:
                async with session.post(
                    f"{server.url}{path}", json=body, timeout=self._control_timeout
                ) as resp:
                    text = await resp.text()
                    status = resp.status
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                self._mark_failed(server, f"{path}: {type(e).__name__}: {e}")
                return "unreachable", f"{server.url}{path}: {type(e).__name__}: {e}"
            try:
                answer = _json(text, path) if text.lstrip().startswith(("{", "[")) else text
            except ServerProtocolError:
                answer = text
            if status >= 400 or (isinstance(answer, dict) and answer.get("success") is False):
                return "refused", f"{server.url}{path} answered HTTP {status}: {text[:1000]}"
            return "ok", answer

        results = await asyncio.gather(*(one(s, b) for s, b in zip(self._servers, payloads, strict=True)))
        refused = [detail for kind, detail in results if kind == "refused"]
        unreachable = [detail for kind, detail in results if kind == "unreachable"]
        if refused:
            raise ServerRequestError("; ".join(refused))
        if unreachable and (require_all or len(unreachable) == len(results)):
            raise NoServerAvailableError("; ".join(unreachable))
        for detail in unreachable:
            logger.warning("rollout server skipped: %s", detail)
        return [answer for kind, answer in results if kind == "ok"]

    # ------------------------------------------------------------------ health

    def _mark_failed(self, server: _Server, error: str) -> None:
        server.failures += 1
        server.last_error = error
        if server.up:
            server.up = False
            logger.warning("rollout server %s taken out of rotation: %s", server.url, error)

    async def _probe_out_servers(self, servers: list[_Server]) -> bool:
        """Check ``/health`` of the servers out of rotation; put back those that pass. True if any did."""
        session = self._ensure_started()

        async def one(server: _Server) -> bool:
            try:
                async with session.get(f"{server.url}/health", timeout=self._health_timeout) as resp:
                    healthy = resp.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError):
                healthy = False
            if healthy and not server.up:
                server.up, server.failures = True, 0
                logger.info("rollout server %s is healthy again, back in rotation", server.url)
            return healthy

        out = [s for s in servers if not s.up]
        return any(await asyncio.gather(*(one(s) for s in out))) if out else False

    async def _health_loop(self) -> None:
        # SGLang's /health runs a one-token generation, which waits while generation is paused: skip then.
        while True:
            await asyncio.sleep(self._health_check_interval_s)
            if not self._paused:
                try:
                    await self._probe_out_servers(self._endpoints())
                except Exception:  # the checker must outlive any single failure
                    logger.exception("rollout server health check failed")

    async def _abort_quietly(self, server: _Server, rid: str) -> None:
        """Best effort: free a timed-out request on a server that may still be working on it."""
        try:
            session = self._ensure_started()
            async with session.post(
                f"{server.url}/abort_request", json={"rid": rid}, timeout=self._health_timeout
            ):
                pass
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ session lifecycle

    def _ensure_started(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            trace = aiohttp.TraceConfig()
            trace.on_request_chunk_sent.append(_on_body_sent)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0), trace_configs=[trace], headers=self._headers
            )
        if self._health_task is None or self._health_task.done():
            self._health_task = asyncio.get_running_loop().create_task(self._health_loop())
        return self._session

    async def close(self) -> None:
        """Stop the health checker and close the HTTP session."""
        tasks = [t for t in [self._health_task, *self._background] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._health_task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> RolloutClient:
        self._ensure_started()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _on_body_sent(session: Any, ctx: Any, params: Any) -> None:
    """aiohttp calls this right before it writes a request body; the write follows without yielding."""
    request_ctx = ctx.trace_request_ctx
    if request_ctx and "dispatch" in request_ctx:
        request_ctx["dispatch"].finish()


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise ServerProtocolError(f"{where} answered non-JSON: {text[:300]}") from None
