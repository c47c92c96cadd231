# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Continuous batching for the embedded CPU engine: one running batch with a shared KV cache.

``BatchEngine`` owns the model and runs only on the model thread. Each ``step`` either prefills the
newly admitted requests (one batched forward pass) and merges them into the running batch, or
decodes one token for every running request (one forward pass for the whole batch). The running
batch is left-padded: its KV cache, a 2-D attention mask and per-row position ids are kept
aligned so that rows of different lengths share every forward pass (the model gets ready 4-D masks,
``cpu_engine.attention``); finished rows are removed by index-select and leading all-padding columns
are trimmed.

``Scheduler`` is the asyncio side: it admits requests (closing the gate while paused or while a
weight update waits, as SGLang's tokenizer manager does), runs ``step`` on the model thread so the
HTTP server stays responsive, handles abort / pause / continue, and serialises weight updates
with generation.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from transformers import DynamicCache

from rllm_fully_async.cpu_engine.attention import decode_mask, prefill_mask

logger = logging.getLogger(__name__)

T = TypeVar("T")

# SGLang returns log-probs of the temperature-scaled distribution unless this is set (sampler.py).
RETURN_ORIGINAL_LOGPROB = os.environ.get("SGLANG_RETURN_ORIGINAL_LOGPROB", "false").lower() in ("1", "true")
_SAMPLING_EPS = 1e-6
_LOGPROB_FLOOR = torch.finfo(torch.float32).min  # SGLang clamps log(0) to this, which JSON can carry


@dataclass
class SamplingOptions:
    """The subset of SGLang's ``SamplingParams`` the CPU engine implements, already validated."""

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    min_new_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: set[int] = field(default_factory=set)
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    no_stop_trim: bool = False
    sampling_seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature < _SAMPLING_EPS or self.top_k == 1


@dataclass(eq=False)
class GenerationRequest:
    """One sequence to generate, and everything produced for it so far."""

    rid: str
    input_ids: list[int]
    sampling: SamplingOptions
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    return_text_in_logprobs: bool = False
    log_metrics: bool = True  # False for health probes, which stay out of the counters (as in SGLang)
    created_time: float = field(default_factory=time.time)
    output_ids: list[int] = field(default_factory=list)
    output_logprobs: list[float] = field(default_factory=list)
    output_top_logprobs: list[list[tuple[float, int]]] = field(default_factory=list)
    input_logprobs: list[float | None] | None = None
    input_top_logprobs: list[list[tuple[float, int]] | None] | None = None
    finish_reason: dict[str, Any] | None = None
    weight_version: str = ""  # the engine's version when the request finished, as SGLang reports it
    finished_time: float = 0.0
    retractions: int = 0
    # Aborted while waiting (never started, or retracted): SGLang answers it from the tokenizer manager's
    # _handle_abort_req, whose meta_info has no weight_version.
    aborted_in_queue: bool = False
    generator: torch.Generator | None = None
    stop_str_max_tokens: int = 0

    @property
    def first_logprob_position(self) -> int:
        """Where input log-probs start; SGLang's ``-1`` means the last prompt token only."""
        return len(self.input_ids) - 1 if self.logprob_start_len == -1 else self.logprob_start_len


def finish_length(length: int) -> dict[str, Any]:
    return {"type": "length", "length": length}


def finish_matched(matched: int | str) -> dict[str, Any]:
    return {"type": "stop", "matched": matched}


def finish_abort(message: str = "Aborted") -> dict[str, Any]:
    return {"type": "abort", "message": message, "status_code": None, "err_type": None}


@dataclass
class EngineCounters:
    """Cumulative work counters, reported by ``/get_server_info`` to show batching at work."""

    forward_passes: int = 0
    prefill_passes: int = 0
    decode_passes: int = 0
    prefill_tokens: int = 0
    generated_tokens: int = 0
    max_running_batch: int = 0
    finished_requests: int = 0
    aborted_requests: int = 0
    cache_flushes: int = 0


class BatchEngine:
    """The model and the running batch. Not thread-safe: every call runs on the model thread."""

    def __init__(self, model: torch.nn.Module, tokenizer, eos_token_ids: set[int], pad_token_id: int):
        self.model = model
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.pad_token_id = pad_token_id
        if not hasattr(DynamicCache(), "layers"):
            raise RuntimeError("the CPU engine needs transformers >= 4.56 (DynamicCache.layers)")
        self.counters = EngineCounters()
        self.rows: list[GenerationRequest] = []
        self._cache: DynamicCache | None = None
        self._attention_mask: torch.Tensor | None = None  # [rows, cached positions], 0 = padding
        self._next_tokens: torch.Tensor | None = None  # [rows], sampled but not yet in the cache
        self._next_positions: torch.Tensor | None = None  # [rows], position id of those tokens

    # ---------------------------------------------------------------- stepping

    @torch.inference_mode()
    def step(
        self, admitted: Sequence[GenerationRequest], aborted_rids: set[str], decode: bool
    ) -> list[GenerationRequest]:
        """Drop aborted rows, then prefill ``admitted`` if any, else decode one token for all rows.

        Returns the requests that finished in this step (their ``finish_reason`` is set).
        """
        finished: list[GenerationRequest] = []
        if aborted_rids:
            for req in self.rows:
                if req.rid in aborted_rids:
                    req.finish_reason = finish_abort()
                    finished.append(req)
            self._keep_rows([i for i, req in enumerate(self.rows) if req.finish_reason is None])
        if admitted:
            finished += self._prefill(list(admitted))
        elif decode and self.rows:
            finished += self._decode()
        for req in finished:
            if not req.log_metrics:
                continue
            if req.finish_reason["type"] == "abort":
                self.counters.aborted_requests += 1
            else:
                self.counters.finished_requests += 1
        return finished

    def retract_all(self) -> list[GenerationRequest]:
        """Release the whole KV cache; the returned requests resume by re-prefilling prompt + output."""
        retracted = self.rows
        for req in retracted:
            req.retractions += 1
        self._keep_rows([])
        return retracted

    def _prefill(self, reqs: list[GenerationRequest]) -> list[GenerationRequest]:
        sequences = [req.input_ids + req.output_ids for req in reqs]
        width = max(len(seq) for seq in sequences)
        input_ids = torch.full((len(reqs), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(reqs), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            input_ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            attention_mask[row, width - len(seq) :] = 1
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        # Keep logits for every position some request wants prompt log-probs for (else just the last).
        keep = max(
            (
                len(seq) - req.first_logprob_position
                for req, seq in zip(reqs, sequences, strict=True)
                if self._wants_input_logprobs(req)
            ),
            default=1,
        )
        cache = DynamicCache()
        logits = self.model(
            input_ids=input_ids,
            attention_mask=prefill_mask(attention_mask),
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=keep,
        ).logits.float()
        self.counters.forward_passes += 1
        self.counters.prefill_passes += 1
        self.counters.prefill_tokens += sum(len(seq) for seq in sequences)

        for row, (req, seq) in enumerate(zip(reqs, sequences, strict=True)):
            if self._wants_input_logprobs(req):
                self._record_input_logprobs(
                    req, logits[row, keep - (len(seq) - req.first_logprob_position) :]
                )
        finished = self._sample_and_append(reqs, logits[:, -1])

        live = [row for row, req in enumerate(reqs) if req.finish_reason is None]
        if live:
            cache.batch_select_indices(torch.tensor(live))
            positions = torch.tensor([len(sequences[row]) for row in live], dtype=torch.long)
            next_tokens = torch.tensor([reqs[row].output_ids[-1] for row in live], dtype=torch.long)
            self._merge(cache, attention_mask[live], next_tokens, positions, [reqs[row] for row in live])
        return finished

    def _decode(self) -> list[GenerationRequest]:
        self._attention_mask = torch.cat(
            [self._attention_mask, torch.ones((len(self.rows), 1), dtype=torch.long)], dim=1
        )
        logits = (
            self.model(
                input_ids=self._next_tokens[:, None],
                attention_mask=decode_mask(self._attention_mask),
                position_ids=self._next_positions[:, None],
                past_key_values=self._cache,
                use_cache=True,
            )
            .logits[:, -1]
            .float()
        )
        self.counters.forward_passes += 1
        self.counters.decode_passes += 1
        finished = self._sample_and_append(self.rows, logits)
        self._next_tokens = torch.tensor([req.output_ids[-1] for req in self.rows], dtype=torch.long)
        self._next_positions = self._next_positions + 1
        self._keep_rows([i for i, req in enumerate(self.rows) if req.finish_reason is None])
        return finished

    # ---------------------------------------------------------------- the batch's tensors

    def _merge(
        self,
        cache: DynamicCache,
        attention_mask: torch.Tensor,
        next_tokens: torch.Tensor,
        positions: torch.Tensor,
        reqs: list[GenerationRequest],
    ) -> None:
        """Append freshly prefilled rows to the running batch, left-padding whichever side is shorter."""
        if not self.rows:
            self._cache, self._attention_mask = cache, attention_mask
            self._next_tokens, self._next_positions, self.rows = next_tokens, positions, reqs
        else:
            width = max(self._attention_mask.shape[1], attention_mask.shape[1])
            for mine, theirs in zip(self._cache.layers, cache.layers, strict=True):
                mine.keys = torch.cat([_left_pad(mine.keys, width, 2), _left_pad(theirs.keys, width, 2)])
                mine.values = torch.cat(
                    [_left_pad(mine.values, width, 2), _left_pad(theirs.values, width, 2)]
                )
            self._attention_mask = torch.cat(
                [_left_pad(self._attention_mask, width, 1), _left_pad(attention_mask, width, 1)]
            )
            self._next_tokens = torch.cat([self._next_tokens, next_tokens])
            self._next_positions = torch.cat([self._next_positions, positions])
            self.rows = self.rows + reqs
        self.counters.max_running_batch = max(self.counters.max_running_batch, len(self.rows))

    def _keep_rows(self, keep: list[int]) -> None:
        """Index-select the surviving rows and trim cache columns that are padding in every row."""
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.rows, self._cache, self._attention_mask = [], None, None
            self._next_tokens = self._next_positions = None
            return
        index = torch.tensor(keep)
        self.rows = [self.rows[i] for i in keep]
        self._cache.batch_select_indices(index)
        self._attention_mask = self._attention_mask[index]
        self._next_tokens = self._next_tokens[index]
        self._next_positions = self._next_positions[index]
        first_used = int(self._attention_mask.any(dim=0).int().argmax())
        if first_used > 0:
            self._attention_mask = self._attention_mask[:, first_used:]
            for layer in self._cache.layers:
                layer.keys = layer.keys[:, :, first_used:]
                layer.values = layer.values[:, :, first_used:]

    # ---------------------------------------------------------------- sampling

    def _sample_and_append(
        self, reqs: list[GenerationRequest], logits: torch.Tensor
    ) -> list[GenerationRequest]:
        """Sample one token per row (per-row temperature/top-k/top-p/min-p/seed), record, check stops."""
        finished = [req for req in reqs if req.sampling.max_new_tokens == 0]  # prefill only
        for req in finished:
            req.finish_reason = finish_length(0)
        rows_to_sample = [row for row, req in enumerate(reqs) if req.sampling.max_new_tokens > 0]
        if not rows_to_sample:
            return finished
        logits = logits[rows_to_sample]
        batch = [reqs[row] for row in rows_to_sample]
        for row, req in enumerate(batch):
            if len(req.output_ids) < req.sampling.min_new_tokens:
                banned = list(req.sampling.stop_token_ids | self.eos_token_ids)
                logits[row, banned] = float("-inf")
        temperatures = torch.tensor(
            [1.0 if req.sampling.greedy else req.sampling.temperature for req in batch]
        ).unsqueeze(1)
        scaled = logits / temperatures
        logprobs = torch.log_softmax(logits if RETURN_ORIGINAL_LOGPROB else scaled, dim=-1).clamp(
            min=_LOGPROB_FLOOR
        )
        tokens = _sample(scaled, batch)
        chosen = logprobs.gather(1, tokens[:, None]).squeeze(1)
        self.counters.generated_tokens += len(batch)
        for row, req in enumerate(batch):
            token = int(tokens[row])
            req.output_ids.append(token)
            if req.return_logprob:
                req.output_logprobs.append(float(chosen[row]))
                if req.top_logprobs_num > 0:
                    req.output_top_logprobs.append(_top_logprobs(logprobs[row], req.top_logprobs_num))
            req.finish_reason = self._check_finished(req)
            if req.finish_reason is not None:
                finished.append(req)
        return finished

    def _check_finished(self, req: GenerationRequest) -> dict[str, Any] | None:
        """SGLang's ``Req.check_finished`` order: length, then stop/eos token, then stop string."""
        sampling = req.sampling
        if len(req.output_ids) >= sampling.max_new_tokens:
            return finish_length(sampling.max_new_tokens)
        token = req.output_ids[-1]
        if not sampling.ignore_eos and (token in sampling.stop_token_ids or token in self.eos_token_ids):
            return finish_matched(token)
        if sampling.stop:
            tail_len = min(req.stop_str_max_tokens + 2, len(req.output_ids))
            tail = self.tokenizer.decode(req.output_ids[-tail_len:])
            for stop in sampling.stop:
                if stop in tail:
                    return finish_matched(stop)
        return None

    @staticmethod
    def _wants_input_logprobs(req: GenerationRequest) -> bool:
        return req.return_logprob and req.input_logprobs is None

    @staticmethod
    def _record_input_logprobs(req: GenerationRequest, logits: torch.Tensor) -> None:
        """Prompt log-probs from ``first_logprob_position`` on, raw (temperature 1) as SGLang's.

        ``logits`` holds one row per prompt position from there to the end; like SGLang the first
        entry is ``None`` and the last position's logits (which sample the first output) are unused.
        """
        start = req.first_logprob_position
        targets = torch.tensor(req.input_ids[start + 1 :], dtype=torch.long)
        logprobs = torch.log_softmax(logits[:-1], dim=-1).clamp(min=_LOGPROB_FLOOR)
        req.input_logprobs = [None] + logprobs.gather(1, targets[:, None]).squeeze(1).tolist()
        if req.top_logprobs_num > 0:
            req.input_top_logprobs = [None] + [_top_logprobs(row, req.top_logprobs_num) for row in logprobs]

    # ---------------------------------------------------------------- weights

    @torch.inference_mode()
    def load_weights(self, named_tensors: Sequence[tuple[str, torch.Tensor]]) -> None:
        """Copy tensors into the model's parameters by name, all-or-nothing.

        Every name, shape and value (finite) is checked before anything is copied, so a bad update leaves
        the old weights intact. ``lm_head.weight`` of a model with tied embeddings is accepted and skipped.
        """
        params = dict(self.model.named_parameters())
        params.update(dict(self.model.named_buffers()))
        tied = getattr(self.model.config, "tie_word_embeddings", False)
        updates = []
        for name, tensor in named_tensors:
            if name not in params:
                if tied and name == "lm_head.weight":
                    continue
                raise ValueError(
                    f"unknown parameter name {name!r} (the model has e.g. {next(iter(params))!r})"
                )
            if tuple(params[name].shape) != tuple(tensor.shape):
                raise ValueError(
                    f"shape mismatch for {name!r}: model has {tuple(params[name].shape)}, "
                    f"update has {tuple(tensor.shape)}"
                )
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"{name!r} holds non-finite values (NaN or inf); the update is refused")
            updates.append((params[name], tensor))
        for param, tensor in updates:
            param.copy_(tensor.to(param.dtype))

    @property
    def num_running(self) -> int:
        return len(self.rows)

    @property
    def num_cached_tokens(self) -> int:
        return 0 if self._attention_mask is None else int(self._attention_mask.sum())


def _left_pad(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _top_logprobs(logprobs: torch.Tensor, k: int) -> list[tuple[float, int]]:
    values, indices = logprobs.topk(min(k, logprobs.shape[-1]))
    return list(zip(values.tolist(), indices.tolist(), strict=True))


def _sample(scaled_logits: torch.Tensor, reqs: list[GenerationRequest]) -> torch.Tensor:
    """Greedy rows take the argmax; the others sample after top-k, top-p and min-p filtering.

    Filtering follows SGLang's torch sampler; the draw itself is an inverse-CDF lookup with one
    uniform number from each request's own generator, so a seeded request is reproducible whatever
    else shares its batch.
    """
    tokens = scaled_logits.argmax(dim=-1)
    sampled_rows = [row for row, req in enumerate(reqs) if not req.sampling.greedy]
    if not sampled_rows:
        return tokens
    probs = torch.softmax(scaled_logits[sampled_rows], dim=-1)
    probs_sorted, order = probs.sort(dim=-1, descending=True)
    vocab = probs.shape[-1]
    top_ks = torch.tensor(
        [reqs[row].sampling.top_k if reqs[row].sampling.top_k > 0 else vocab for row in sampled_rows]
    )
    top_ps = torch.tensor([reqs[row].sampling.top_p for row in sampled_rows])
    min_ps = torch.tensor([reqs[row].sampling.min_p for row in sampled_rows])
    cumulative = probs_sorted.cumsum(dim=-1)
    probs_sorted[torch.arange(vocab)[None, :] >= top_ks[:, None]] = 0.0
    probs_sorted[(cumulative - probs_sorted) > top_ps[:, None]] = 0.0
    probs_sorted[probs_sorted < (probs_sorted[:, :1] * min_ps[:, None])] = 0.0
    cdf = probs_sorted.cumsum(dim=-1)
    uniforms = torch.cat([torch.rand(1, generator=reqs[row].generator) for row in sampled_rows])
    picks = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None], right=True).clamp(max=vocab - 1)
    tokens[sampled_rows] = order.gather(1, picks).squeeze(1)
    return tokens


class Scheduler:
    """Admission, the step loop, abort / pause / continue, and weight updates, on the event loop.

    Mirrors SGLang 0.5.6's tokenizer manager + scheduler semantics:
    * a new request waits at the gate while generation is paused or a weight update is pending;
    * ``abort`` matches ``rid`` as a prefix (if that exact rid is in flight) or aborts everything;
      a waiting request (not yet prefilled, or retracted) returns with "Abort in waiting queue", its
      tokens so far and no weight version; a running one with its tokens so far and "Aborted";
    * ``pause("abort")`` aborts everything in flight and returns once all of it has returned;
      ``pause("in_place")`` freezes the running batch; ``pause("retract")`` also drops its KV cache,
      to be recomputed after ``resume``;
    * a weight update runs at once while paused, otherwise after the in-flight requests drain.
    """

    def __init__(self, engine: BatchEngine, max_batch_size: int, max_prefill_tokens: int):
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.max_prefill_tokens = max_prefill_tokens
        self.paused = False
        # generate() calls held at the gate (paused, or a weight update pending), for /get_server_info
        self.num_at_gate = 0
        self.weight_version = "default"
        self.last_progress_time = time.time()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cpu-engine-model")
        self._waiting: deque[GenerationRequest] = deque()
        self._in_flight: dict[str, tuple[GenerationRequest, asyncio.Future]] = {}
        self._to_abort: set[str] = set()
        self._pending_updates = 0
        self._gate = asyncio.Condition()
        self._idle = asyncio.Event()
        self._idle.set()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task | None = None

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
        self._executor.shutdown(wait=True, cancel_futures=True)

    # ---------------------------------------------------------------- requests

    async def generate(self, reqs: list[GenerationRequest]) -> list[GenerationRequest]:
        """Admit ``reqs`` (after the gate opens) and wait until every one has finished."""
        async with self._gate:
            self.num_at_gate += 1
            try:
                await self._gate.wait_for(lambda: not self.paused and self._pending_updates == 0)
            finally:
                self.num_at_gate -= 1
        loop = asyncio.get_running_loop()
        futures = []
        rids = [req.rid for req in reqs]
        if len(set(rids)) != len(rids):
            repeated = sorted({rid for rid in rids if rids.count(rid) > 1})
            raise ValueError(
                f"rid(s) {repeated[:5]} appear more than once in the batch; use a unique rid per request"
            )
        for req in reqs:
            if req.rid in self._in_flight:
                raise ValueError(f"rid {req.rid!r} is already in flight; use a unique rid per request")
        for req in reqs:
            future = loop.create_future()
            self._in_flight[req.rid] = (req, future)
            self._waiting.append(req)
            futures.append(future)
        self._idle.clear()
        self._wake.set()
        return list(await asyncio.gather(*futures))

    def abort(self, rid: str = "", abort_all: bool = False) -> None:
        if not abort_all and rid not in self._in_flight:
            return
        for req, _ in list(self._in_flight.values()):
            if not (abort_all or req.rid.startswith(rid)):
                continue
            if req in self._waiting:  # not started, or retracted (tokens but no KV cache)
                self._waiting.remove(req)
                req.finish_reason = {"type": "abort", "message": "Abort in waiting queue"}
                req.aborted_in_queue = True
                self._resolve(req)
            else:
                self._to_abort.add(req.rid)
        self._wake.set()

    def flush_cache(self) -> bool:
        """SGLang's ``Scheduler.flush_cache``: only while nothing runs (waiting requests do not count).

        This engine keeps no prefix cache, so a flush is counted and changes nothing else.
        """
        if self.engine.num_running:
            return False
        self.engine.counters.cache_flushes += 1
        return True

    @property
    def num_in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_waiting_tokens(self) -> int:
        return sum(len(req.input_ids) + len(req.output_ids) for req in self._waiting)

    # ---------------------------------------------------------------- pause / continue

    async def pause(self, mode: str) -> None:
        async with self._gate:
            self.paused = True
        if mode == "abort":
            self.abort(abort_all=True)
            await self._wait_until_idle()
        elif mode == "retract":
            retracted = await self._run_on_model_thread(self.engine.retract_all)
            self._waiting.extendleft(reversed(retracted))
        else:  # in_place: return once the step in progress (if any) has finished
            await self._run_on_model_thread(lambda: None)

    async def resume(self) -> None:
        async with self._gate:
            self.paused = False
            self._gate.notify_all()
        self._wake.set()

    # ---------------------------------------------------------------- weights

    async def run_weight_update(self, update: Callable[[], T], abort_all_requests: bool) -> tuple[T, bool]:
        """Run ``update`` on the model thread with no forward pass in progress.

        Returns ``(result, ran_while_paused)``. While paused it runs at once (the paused requests keep
        their KV cache, as in SGLang); otherwise new requests wait and it runs once the in-flight
        ones have finished.
        """
        if abort_all_requests:
            self.abort(abort_all=True)
        if self.paused:
            return await self._run_on_model_thread(update), True
        async with self._gate:
            self._pending_updates += 1
        try:
            await self._wait_until_idle()
            return await self._run_on_model_thread(update), False
        finally:
            async with self._gate:
                self._pending_updates -= 1
                self._gate.notify_all()

    async def _run_on_model_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _wait_until_idle(self) -> None:
        await self._idle.wait()

    # ---------------------------------------------------------------- the step loop

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:
                admitted = [] if self.paused else self._take_admissions()
                aborted, self._to_abort = self._to_abort, set()
                if not admitted and not aborted and (self.paused or self.engine.num_running == 0):
                    break
                try:
                    finished = await self._run_on_model_thread(
                        self.engine.step, admitted, aborted, not self.paused
                    )
                except Exception as exc:  # a model failure must not kill the server: fail those requests
                    logger.exception("generation step failed")
                    finished = self._fail_all(admitted, f"generation step failed: {exc}")
                self.last_progress_time = time.time()
                for req in finished:
                    self._resolve(req)
                await asyncio.sleep(0)

    def _take_admissions(self) -> list[GenerationRequest]:
        admitted: list[GenerationRequest] = []
        budget = self.max_prefill_tokens
        while self._waiting and self.engine.num_running + len(admitted) < self.max_batch_size:
            req = self._waiting[0]
            tokens = len(req.input_ids) + len(req.output_ids)
            if admitted and tokens > budget:
                break
            budget -= tokens
            admitted.append(self._waiting.popleft())
        return admitted

    def _fail_all(self, admitted: list[GenerationRequest], message: str) -> list[GenerationRequest]:
        failed = admitted + self.engine.retract_all()
        for req in failed:
            req.finish_reason = finish_abort(message)
        return failed

    def _resolve(self, req: GenerationRequest) -> None:
        req.weight_version, req.finished_time = self.weight_version, time.time()
        _, future = self._in_flight.pop(req.rid)
        if not future.done():
            future.set_result(req)
        if not self._in_flight:
            self._idle.set()


def new_rid() -> str:
    return uuid.uuid4().hex
