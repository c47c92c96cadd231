# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""An embedded CPU generation server that speaks SGLang 0.5.6's native HTTP API.

``python -m rllm_fully_async.cpu_engine --model-path DIR`` serves a Hugging Face causal LM with
continuous batching (see ``cpu_engine_scheduler``) behind the same endpoints, request fields and
response shapes as SGLang's ``http_server.py``, so the rollout client, the parameter sync and
``sglang-router`` cannot tell it from SGLang. It lets the fully-async loop run for real on
machines without a GPU. ``CpuEngineProcess`` starts and stops one as a subprocess.

Request and response shapes follow SGLang 0.5.6: ``managers/io_struct.py`` (request dataclasses
and their defaults), ``sampling/sampling_params.py`` (sampling keys and their checks),
``managers/tokenizer_manager.py`` (``meta_info``, pause/abort, length checks),
``managers/schedule_batch.py`` (finish reasons and the order stop conditions are checked in),
``managers/detokenizer_manager.py`` (stop trimming of ``text``) and ``entrypoints/http_server.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import json
import logging
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from rllm_fully_async.cpu_engine.scheduler import (
    BatchEngine,
    GenerationRequest,
    SamplingOptions,
    Scheduler,
    new_rid,
)
from rllm_fully_async.sync.tensor_payload import deserialize_named_tensors
from rllm_fully_async.sync.weight_update_group import (
    broadcast_tensor,
    destroy_weight_update_group,
    init_weight_update_group,
)

logger = logging.getLogger("rllm_fully_async.cpu_engine")

SGLANG_API_VERSION = "0.5.6"
READY_LINE_PREFIX = "CPU_ENGINE_READY "
HEALTH_CHECK_TIMEOUT_S = float(os.environ.get("SGLANG_HEALTH_CHECK_TIMEOUT", 20))
HEALTH_ENDPOINT_GENERATES = os.environ.get("SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION", "true").lower() in (
    "1",
    "true",
)


# ------------------------------------------------------------------------------------------------
# Request bodies: the fields of SGLang's io_struct dataclasses (unknown fields are ignored, as there)


class GenerateReqInput(BaseModel):
    text: list[str] | str | None = None
    input_ids: list[list[int]] | list[int] | None = None
    input_embeds: Any = None
    image_data: Any = None
    video_data: Any = None
    audio_data: Any = None
    sampling_params: list[dict] | dict | None = None
    return_logprob: list[bool] | bool | None = None
    logprob_start_len: list[int] | int | None = None
    top_logprobs_num: list[int] | int | None = None
    token_ids_logprob: Any = None
    return_text_in_logprobs: bool = False
    stream: bool = False
    return_hidden_states: list[bool] | bool = False
    lora_path: Any = None
    custom_logit_processor: Any = None
    rid: list[str] | str | None = None


class AbortReq(BaseModel):
    rid: str | None = ""
    abort_all: bool = False


class PauseGenerationReqInput(BaseModel):
    mode: str = "abort"


class UpdateWeightFromDiskReqInput(BaseModel):
    model_path: str
    load_format: str | None = None
    abort_all_requests: bool = False
    weight_version: str | None = None
    flush_cache: bool = True


class InitWeightsUpdateGroupReqInput(BaseModel):
    master_address: str
    master_port: int
    rank_offset: int
    world_size: int
    group_name: str = "weight_update_group"
    backend: str = "nccl"


class DestroyWeightsUpdateGroupReqInput(BaseModel):
    group_name: str = "weight_update_group"


class UpdateWeightsFromDistributedReqInput(BaseModel):
    names: list[str]
    dtypes: list[str]
    shapes: list[list[int]]
    group_name: str = "weight_update_group"
    flush_cache: bool = True
    abort_all_requests: bool = False
    weight_version: str | None = None
    load_format: str | None = None


class UpdateWeightsFromTensorReqInput(BaseModel):
    serialized_named_tensors: list[str | bytes]
    load_format: str | None = None
    flush_cache: bool = True
    abort_all_requests: bool = False
    weight_version: str | None = None


class UpdateWeightVersionReqInput(BaseModel):
    new_version: str
    abort_all_requests: bool = True


# ------------------------------------------------------------------------------------------------
# sampling_params


_UNSUPPORTED_SAMPLING_DEFAULTS = {
    # SGLang sampling keys this engine does not implement; accepted only at their neutral value.
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
    "repetition_penalty": 1.0,
    "json_schema": None,
    "regex": None,
    "ebnf": None,
    "structural_tag": None,
    "stop_regex": None,
    "logit_bias": None,
}
_IGNORED_SAMPLING_KEYS = {"n", "spaces_between_special_tokens", "custom_params", "stream_interval"}
_SAMPLING_KEYS = (
    set(SamplingOptions.__dataclass_fields__) | set(_UNSUPPORTED_SAMPLING_DEFAULTS) | _IGNORED_SAMPLING_KEYS
)


def _get(params: dict, key: str, kinds: tuple[type, ...], default: Any) -> Any:
    value = params.get(key, default)
    if value is None:
        return default
    numeric = kinds in ((int,), (int, float))
    if isinstance(value, bool) and numeric or not isinstance(value, kinds):
        names = " or ".join(kind.__name__ for kind in kinds)
        raise ValueError(f"sampling_params[{key!r}] must be {names}, got {value!r}")
    return value


def parse_sampling_params(
    params: dict, seed_offset: int = 0, unlimited_max_new_tokens: int = 128
) -> SamplingOptions:
    """Validate one ``sampling_params`` dict with SGLang's defaults and range checks.

    An explicit ``"max_new_tokens": null`` means "until the context is full", as in SGLang.
    """
    if not isinstance(params, dict):
        raise ValueError(f"sampling_params must be a JSON object, got {params!r}")
    unknown = sorted(set(params) - _SAMPLING_KEYS)
    if unknown:
        raise ValueError(
            f"unknown sampling_params key(s) {unknown}; supported keys: {sorted(_SAMPLING_KEYS)}"
        )
    for key, neutral in _UNSUPPORTED_SAMPLING_DEFAULTS.items():
        if params.get(key, neutral) != neutral:
            raise ValueError(
                f"sampling_params[{key!r}] is not supported by the CPU engine; leave it at {neutral!r}"
            )
    stop = params.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise ValueError(
            f"sampling_params['stop'] must be a string or a list of non-empty strings, got {stop!r}"
        )
    stop_token_ids = params.get("stop_token_ids") or []
    if not isinstance(stop_token_ids, list) or not all(type(t) is int for t in stop_token_ids):
        raise ValueError(f"sampling_params['stop_token_ids'] must be a list of ints, got {stop_token_ids!r}")
    seed = _get(params, "sampling_seed", (int,), None)
    options = SamplingOptions(
        max_new_tokens=_get(
            params, "max_new_tokens", (int,), unlimited_max_new_tokens if "max_new_tokens" in params else 128
        ),
        temperature=float(_get(params, "temperature", (int, float), 1.0)),
        top_p=float(_get(params, "top_p", (int, float), 1.0)),
        top_k=_get(params, "top_k", (int,), -1),
        min_p=float(_get(params, "min_p", (int, float), 0.0)),
        min_new_tokens=_get(params, "min_new_tokens", (int,), 0),
        stop=stop,
        stop_token_ids=set(stop_token_ids),
        ignore_eos=_get(params, "ignore_eos", (bool,), False),
        skip_special_tokens=_get(params, "skip_special_tokens", (bool,), True),
        no_stop_trim=_get(params, "no_stop_trim", (bool,), False),
        sampling_seed=None if seed is None else seed + seed_offset,
    )
    if options.temperature < 0:
        raise ValueError(f"sampling_params['temperature'] must be non-negative, got {options.temperature}")
    if not 0.0 < options.top_p <= 1.0:
        raise ValueError(f"sampling_params['top_p'] must be in (0, 1], got {options.top_p}")
    if not 0.0 <= options.min_p <= 1.0:
        raise ValueError(f"sampling_params['min_p'] must be in [0, 1], got {options.min_p}")
    if options.top_k < 1 and options.top_k != -1:
        raise ValueError(f"sampling_params['top_k'] must be -1 (disable) or at least 1, got {options.top_k}")
    if options.max_new_tokens < 0:
        raise ValueError(
            f"sampling_params['max_new_tokens'] must be at least 0, got {options.max_new_tokens}"
        )
    if not 0 <= options.min_new_tokens <= options.max_new_tokens:
        raise ValueError(
            f"sampling_params['min_new_tokens'] must be in [0, max_new_tokens({options.max_new_tokens})], "
            f"got {options.min_new_tokens}"
        )
    return options


# ------------------------------------------------------------------------------------------------
# The server


class CpuEngineServer:
    """The model, the scheduler and SGLang's endpoints on a FastAPI app."""

    def __init__(self, args: argparse.Namespace):
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        self.args = args
        self.model_path = args.model_path
        self.tokenizer = AutoTokenizer.from_pretrained(args.model_path)
        config = AutoConfig.from_pretrained(args.model_path)
        model = AutoModelForCausalLM.from_pretrained(
            args.model_path,
            dtype=getattr(torch, args.dtype) if args.dtype != "auto" else "auto",
            attn_implementation="sdpa",
        ).eval()
        self.context_len = args.context_length or getattr(config, "max_position_embeddings", None) or 2048
        self.vocab_size = config.vocab_size
        eos_ids = self._as_id_set(getattr(config, "eos_token_id", None))
        try:
            eos_ids |= self._as_id_set(GenerationConfig.from_pretrained(args.model_path).eos_token_id)
        except OSError:
            pass  # no generation_config.json
        if self.tokenizer.eos_token_id is not None:
            eos_ids.add(self.tokenizer.eos_token_id)
        pad_id = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else min(eos_ids, default=0)
        )
        self.engine = BatchEngine(model, self.tokenizer, eos_ids, pad_id)
        self.scheduler = Scheduler(self.engine, args.max_batch_size, args.max_prefill_tokens)
        self.scheduler.weight_version = args.weight_version
        self.weight_groups: dict[str, dist.ProcessGroup] = {}
        self._seed_rng = random.Random(args.random_seed)
        self.port = args.port  # the bound port once main() has bound the socket
        self.app = self._build_app()

    @staticmethod
    def _as_id_set(ids: int | list[int] | None) -> set[int]:
        if ids is None:
            return set()
        return {ids} if isinstance(ids, int) else set(ids)

    # ---------------------------------------------------------------- /generate

    def build_requests(self, obj: GenerateReqInput) -> tuple[list[GenerationRequest], bool]:
        """Expand a (possibly batched, possibly ``n > 1``) request into sequences, as SGLang normalises it."""
        if obj.stream:
            raise ValueError("stream=true is not supported by the CPU engine; send stream=false")
        for name in (
            "input_embeds",
            "image_data",
            "video_data",
            "audio_data",
            "lora_path",
            "custom_logit_processor",
        ):
            if getattr(obj, name) is not None:
                raise ValueError(f"{name} is not supported by the CPU engine")
        if obj.token_ids_logprob:
            raise ValueError("token_ids_logprob is not supported by the CPU engine")
        if obj.return_hidden_states:
            raise ValueError(
                "The server is not configured to return the hidden states. "
                "Please set `--enable-return-hidden-states` to enable this feature."
            )
        if (obj.text is None) == (obj.input_ids is None):
            raise ValueError("Either text or input_ids should be provided (exactly one of them).")
        if obj.text is not None:
            is_single = isinstance(obj.text, str)
            prompts = [self.tokenizer(text)["input_ids"] for text in ([obj.text] if is_single else obj.text)]
        else:
            if len(obj.input_ids) == 0:
                raise ValueError("input_ids cannot be empty.")
            is_single = isinstance(obj.input_ids[0], int)
            prompts = [obj.input_ids] if is_single else obj.input_ids
        batch = len(prompts)
        params = obj.sampling_params if obj.sampling_params is not None else {}
        params_list = [params] * batch if isinstance(params, dict) else params
        if len(params_list) != batch:
            raise ValueError(f"sampling_params has {len(params_list)} entries for a batch of {batch} prompts")
        n = params_list[0].get("n", 1) if params_list and isinstance(params_list[0], dict) else 1
        if any(isinstance(p, dict) and p.get("n", 1) != n for p in params_list):
            raise ValueError("The parallel_sample_num should be the same for all samples in sample params.")
        if type(n) is not int or n < 1:
            raise ValueError(f"sampling_params['n'] must be a positive int, got {n!r}")
        if n > 1:
            is_single = False
        rids = self._rids(obj.rid, batch, n, is_single)
        return_logprob = self._per_item(obj.return_logprob, False, batch, "return_logprob")
        start_len = self._per_item(obj.logprob_start_len, -1, batch, "logprob_start_len")
        top_num = self._per_item(obj.top_logprobs_num, 0, batch, "top_logprobs_num")

        reqs = []
        for i, prompt in enumerate(prompts):
            self._validate_prompt(prompt, params_list[i], start_len[i])
            for j in range(n):
                sampling = parse_sampling_params(params_list[i], j, self.context_len - len(prompt) - 1)
                if sampling.sampling_seed is None:
                    sampling.sampling_seed = self._seed_rng.randrange(2**62)
                generator = torch.Generator().manual_seed(sampling.sampling_seed)
                reqs.append(
                    GenerationRequest(
                        rid=rids[i * n + j],
                        input_ids=list(prompt),
                        sampling=sampling,
                        return_logprob=return_logprob[i],
                        logprob_start_len=start_len[i],
                        top_logprobs_num=top_num[i],
                        return_text_in_logprobs=obj.return_text_in_logprobs,
                        generator=generator,
                        stop_str_max_tokens=max(
                            (len(self.tokenizer.encode(s, add_special_tokens=False)) for s in sampling.stop),
                            default=0,
                        ),
                    )
                )
        return reqs, is_single

    @staticmethod
    def _rids(rid: list[str] | str | None, batch: int, n: int, is_single: bool) -> list[str]:
        if n > 1:  # SGLang gives every parallel sample a fresh rid
            return [new_rid() for _ in range(batch * n)]
        if rid is None:
            return [new_rid() for _ in range(batch)]
        if isinstance(rid, str):
            return [rid] if is_single else [f"{rid}_{i}" for i in range(batch)]
        if len(rid) != batch:
            raise ValueError("The specified rids length mismatch with the batch_size for batch processing.")
        return rid

    @staticmethod
    def _per_item(value: Any, default: Any, batch: int, name: str) -> list[Any]:
        if value is None:
            return [default] * batch
        if not isinstance(value, list):
            return [value] * batch
        if len(value) != batch:
            raise ValueError(f"{name} has {len(value)} entries for a batch of {batch} prompts")
        return value

    def _validate_prompt(self, prompt: list[int], params: dict, logprob_start_len: int) -> None:
        """SGLang's context-length checks (tokenizer_manager._validate_one_request), plus token-id range."""
        if not prompt:
            raise ValueError("input_ids cannot be empty.")
        bad = [t for t in prompt if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(
                f"input_ids contains token id(s) {bad[:5]} outside the vocabulary [0, {self.vocab_size})"
            )
        if len(prompt) >= self.context_len:
            raise ValueError(
                f"The input ({len(prompt)} tokens) is longer than the model's context length "
                f"({self.context_len} tokens)."
            )
        max_new_tokens = params.get("max_new_tokens") if isinstance(params, dict) else None
        if isinstance(max_new_tokens, int) and max_new_tokens + len(prompt) >= self.context_len:
            raise ValueError(
                f"Requested token count exceeds the model's maximum context length of {self.context_len} "
                f"tokens. You requested a total of {max_new_tokens + len(prompt)} tokens: "
                f"{len(prompt)} tokens from the input messages and {max_new_tokens} tokens for the "
                "completion. Please reduce the number of tokens in the input messages or the completion "
                "to fit within the limit."
            )
        if logprob_start_len != -1 and not 0 <= logprob_start_len < len(prompt):
            raise ValueError(
                f"logprob_start_len={logprob_start_len} is higher than the number of input tokens "
                f"{len(prompt)}. Please use a smaller logprob_start_len."
            )

    def format_output(self, req: GenerationRequest) -> dict[str, Any]:
        """One SGLang /generate result: ``text``, ``output_ids`` and ``meta_info``."""
        meta: dict[str, Any] = {
            "id": req.rid,
            "finish_reason": req.finish_reason,
            "prompt_tokens": len(req.input_ids),
            "weight_version": req.weight_version,
            "total_retractions": req.retractions,
        }
        if req.return_logprob:
            with_text = req.return_text_in_logprobs
            meta["input_token_logprobs"] = self._logprob_triples(
                req.input_logprobs or [None], req.input_ids[req.first_logprob_position :], with_text
            )
            meta["output_token_logprobs"] = self._logprob_triples(
                req.output_logprobs, req.output_ids, with_text
            )
            if req.top_logprobs_num > 0:
                meta["input_top_logprobs"] = [
                    None if top is None else self._logprob_triples(*zip(*top, strict=True), with_text)
                    for top in (req.input_top_logprobs or [None])
                ]
                meta["output_top_logprobs"] = [
                    self._logprob_triples(*zip(*top, strict=True), with_text)
                    for top in req.output_top_logprobs
                ]
        meta["completion_tokens"] = len(req.output_ids)
        meta["cached_tokens"] = 0
        meta["e2e_latency"] = req.finished_time - req.created_time
        return {"text": self._output_text(req), "output_ids": list(req.output_ids), "meta_info": meta}

    def _logprob_triples(self, logprobs: Sequence, token_ids: Sequence[int], with_text: bool) -> list[list]:
        texts = (
            self.tokenizer.batch_decode([[t] for t in token_ids]) if with_text else [None] * len(token_ids)
        )
        return [[lp, tid, text] for lp, tid, text in zip(logprobs, token_ids, texts, strict=True)]

    def _output_text(self, req: GenerationRequest) -> str:
        """Decode like SGLang's detokenizer: drop a matched stop token, cut at a matched stop string."""
        ids = req.output_ids
        matched = (req.finish_reason or {}).get("matched")
        no_trim = req.sampling.no_stop_trim
        if isinstance(matched, int) and not no_trim and ids:
            ids = ids[:-1]
        text = self.tokenizer.decode(ids, skip_special_tokens=req.sampling.skip_special_tokens)
        if isinstance(matched, str) and not no_trim and matched in text:
            text = text[: text.find(matched)]
        return text

    # ---------------------------------------------------------------- weights

    def _receive_and_load(self, obj: UpdateWeightsFromDistributedReqInput) -> None:
        """Receive each tensor by broadcast from rank 0 of the group, then load them all."""
        group = self.weight_groups[obj.group_name]
        empties = [
            (name, torch.empty(shape, dtype=getattr(torch, dtype)))
            for name, dtype, shape in zip(obj.names, obj.dtypes, obj.shapes, strict=True)
        ]
        if obj.load_format == "flattened_bucket":  # one uint8 buffer holding every tensor's bytes in order
            sizes = [tensor.numel() * tensor.element_size() for _, tensor in empties]
            flat = torch.empty(sum(sizes), dtype=torch.uint8)
            broadcast_tensor(group, flat, src=0)
            offsets = [0]
            for size in sizes:
                offsets.append(offsets[-1] + size)
            received = [
                (name, flat[offsets[i] : offsets[i + 1]].view(tensor.dtype).reshape(tensor.shape))
                for i, (name, tensor) in enumerate(empties)
            ]
        else:
            for _, tensor in empties:
                broadcast_tensor(group, tensor, src=0)
            received = empties
        self.engine.load_weights(received)

    def _check_distributed_update(self, obj: UpdateWeightsFromDistributedReqInput) -> str | None:
        if obj.group_name not in self.weight_groups:
            return (
                f"Group {obj.group_name} not in {list(self.weight_groups)}. "
                "Please call `init_weights_update_group` first."
            )
        if not len(obj.names) == len(obj.dtypes) == len(obj.shapes):
            lengths = (len(obj.names), len(obj.dtypes), len(obj.shapes))
            return f"names, dtypes and shapes must have the same length, got {lengths}"
        bad = [d for d in obj.dtypes if not isinstance(getattr(torch, d, None), torch.dtype)]
        if bad:
            return f"unknown dtype(s) {bad}; use torch dtype names such as 'float32' or 'bfloat16'"
        if obj.load_format not in (None, "flattened_bucket"):
            return f"unsupported load_format {obj.load_format!r}; use null or 'flattened_bucket'"
        return None

    def _set_version_after_update(
        self, success: bool, message: str, weight_version: str | None, paused: bool
    ) -> str:
        # SGLang 0.5.6 applies ``weight_version`` only when the update did not run while paused.
        if success and weight_version is not None and not paused:
            self.scheduler.weight_version = weight_version
            message += f" Weight version updated to {weight_version}."
        return message

    # ---------------------------------------------------------------- app

    def _build_app(self) -> FastAPI:
        server = self
        scheduler = self.scheduler

        @contextlib.asynccontextmanager
        async def lifespan(app: FastAPI):
            scheduler.start()
            yield
            await scheduler.stop()

        app = FastAPI(lifespan=lifespan)

        @app.exception_handler(RequestValidationError)
        async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
            message = f"{exc} {exc.errors()}" if str(exc.errors()) != str(exc) else str(exc)
            return JSONResponse(
                {"object": "error", "message": message, "type": "Bad Request", "param": None, "code": 400},
                status_code=400,
            )

        @app.exception_handler(Exception)
        async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
            logger.exception("unhandled error on %s", request.url.path)
            return JSONResponse({"error": {"message": f"{type(exc).__name__}: {exc}"}}, status_code=500)

        def bad_request(message: str) -> JSONResponse:
            return JSONResponse({"error": {"message": message}}, status_code=400)

        def result(success: bool, message: str, **extra: Any) -> JSONResponse:
            return JSONResponse(
                {"success": success, "message": message, **extra}, status_code=200 if success else 400
            )

        @app.get("/health")
        @app.get("/health_generate")
        async def health(request: Request) -> Response:
            """SGLang's check: 200 once the engine makes progress on a 1-token request (or anything)."""
            if request.url.path == "/health" and not HEALTH_ENDPOINT_GENERATES:
                return Response(status_code=200)
            tic = time.time()
            probe = GenerationRequest(
                rid=f"HEALTH_CHECK_{tic}",
                input_ids=[0],
                sampling=SamplingOptions(max_new_tokens=1, temperature=0.0),
                log_metrics=False,
            )
            task = asyncio.create_task(scheduler.generate([probe]))
            while time.time() < tic + HEALTH_CHECK_TIMEOUT_S:
                await asyncio.wait({task}, timeout=0.05)
                if task.done() or scheduler.last_progress_time > tic:
                    return Response(status_code=200)
            task.cancel()
            scheduler.abort(probe.rid)
            return Response(status_code=503)

        @app.get("/get_model_info")
        @app.get("/model_info")
        async def model_info() -> dict:
            return {
                "model_path": server.model_path,
                "tokenizer_path": server.args.model_path,
                "is_generation": True,
                "preferred_sampling_params": None,
                "weight_version": scheduler.weight_version,
                "has_image_understanding": False,
                "has_audio_understanding": False,
            }

        @app.get("/get_weight_version")
        @app.get("/weight_version")
        async def weight_version() -> dict:
            return {"weight_version": scheduler.weight_version}

        @app.get("/get_server_info")
        @app.get("/server_info")
        async def server_info() -> dict:
            counters = vars(server.engine.counters)
            return {
                "model_path": server.model_path,
                "tokenizer_path": server.args.model_path,
                "host": server.args.host,
                "port": server.port,
                "dtype": server.args.dtype,
                "context_length": server.context_len,
                "max_running_requests": server.args.max_batch_size,
                "max_prefill_tokens": server.args.max_prefill_tokens,
                "random_seed": server.args.random_seed,
                "weight_version": scheduler.weight_version,
                "skip_tokenizer_init": False,
                "tp_size": 1,
                "dp_size": 1,
                "max_total_num_tokens": server.context_len * server.args.max_batch_size,
                "max_req_input_len": server.context_len - 1,
                "internal_states": [{**counters, "num_threads": torch.get_num_threads()}],
                "version": SGLANG_API_VERSION,
                "engine": "rllm_fully_async.cpu_engine",
            }

        @app.get("/get_load")
        async def get_load() -> list:
            waiting = scheduler.num_waiting
            return [
                {
                    "rid": None,
                    "http_worker_ipc": None,
                    "dp_rank": 0,
                    "num_reqs": server.engine.num_running + waiting,
                    "num_waiting_reqs": waiting,
                    "num_tokens": server.engine.num_cached_tokens + scheduler.num_waiting_tokens,
                }
            ]

        @app.api_route("/generate", methods=["POST", "PUT"])
        async def generate(obj: GenerateReqInput):
            try:
                reqs, is_single = server.build_requests(obj)
                finished = await scheduler.generate(reqs)
            except ValueError as exc:
                return bad_request(str(exc))
            outputs = [server.format_output(req) for req in finished]
            return outputs[0] if is_single else outputs

        @app.api_route("/flush_cache", methods=["GET", "POST"])
        async def flush_cache() -> Response:
            # No prefix cache to flush; like SGLang, refuse while requests are running or waiting.
            return Response(
                content="Cache flushed.\nPlease check backend logs for more details. "
                "(When there are running or waiting requests, the operation will not be performed.)\n",
                status_code=200 if scheduler.num_in_flight == 0 else 400,
            )

        @app.post("/abort_request")
        async def abort_request(obj: AbortReq) -> Response:
            scheduler.abort(rid=obj.rid or "", abort_all=obj.abort_all)
            return Response(status_code=200)

        @app.post("/pause_generation")
        async def pause_generation(obj: PauseGenerationReqInput):
            if obj.mode not in ("abort", "retract", "in_place"):
                return bad_request(
                    f"Invalid mode: {obj.mode!r}. Expected one of ['abort', 'retract', 'in_place']."
                )
            await scheduler.pause(obj.mode)
            return {"message": "Generation paused successfully.", "status": "ok"}

        @app.post("/continue_generation")
        async def continue_generation():
            await scheduler.resume()
            return {"message": "Generation continued successfully.", "status": "ok"}

        @app.post("/update_weight_version")
        async def update_weight_version(obj: UpdateWeightVersionReqInput):
            if obj.abort_all_requests:
                scheduler.abort(abort_all=True)
            scheduler.weight_version = obj.new_version
            return result(True, f"Weight version updated to {obj.new_version}", new_version=obj.new_version)

        @app.post("/init_weights_update_group")
        async def init_weights_update_group(obj: InitWeightsUpdateGroupReqInput):
            if not dist.is_backend_available(obj.backend):
                return result(
                    False,
                    f"Failed to initialize custom process group: backend {obj.backend!r} is not available "
                    "in this CPU engine; create the group with backend='gloo' on every rank.",
                )
            try:
                group = await asyncio.to_thread(
                    init_weight_update_group,
                    obj.master_address,
                    obj.master_port,
                    obj.rank_offset,  # tp_rank is 0: one rank per CPU engine
                    obj.world_size,
                    obj.group_name,
                    obj.backend,
                    server.args.weight_update_timeout_s,
                )
            except Exception as exc:
                return result(False, f"Failed to initialize custom process group: {exc}.")
            server.weight_groups[obj.group_name] = group
            return result(True, "Succeeded to initialize custom process group.")

        @app.post("/destroy_weights_update_group")
        async def destroy_weights_update_group(obj: DestroyWeightsUpdateGroupReqInput):
            group = server.weight_groups.pop(obj.group_name, None)
            if group is None:
                return result(False, "The group to be destroyed does not exist.")
            try:
                await asyncio.to_thread(destroy_weight_update_group, group)
            except Exception as exc:
                return result(False, f"Failed to destroy custom process group: {exc}.")
            return result(True, "Succeeded to destroy custom process group.")

        @app.post("/update_weights_from_distributed")
        async def update_weights_from_distributed(obj: UpdateWeightsFromDistributedReqInput):
            problem = server._check_distributed_update(obj)
            if problem is not None:
                return result(False, problem)
            try:
                _, paused = await scheduler.run_weight_update(
                    lambda: server._receive_and_load(obj), obj.abort_all_requests
                )
            except Exception as exc:
                return result(False, f"Failed to update parameter online: {exc}.")
            message = server._set_version_after_update(
                True, "Succeeded to update parameter online.", obj.weight_version, paused
            )
            return result(True, message)

        @app.post("/update_weights_from_tensor")
        async def update_weights_from_tensor(obj: UpdateWeightsFromTensorReqInput):
            def load() -> None:
                entry = obj.serialized_named_tensors[0]  # this engine is tensor-parallel rank 0 of 1
                server.engine.load_weights(deserialize_named_tensors(entry, obj.load_format))

            if not obj.serialized_named_tensors:
                return result(
                    False, "serialized_named_tensors is empty; send one entry per tensor-parallel rank"
                )
            try:
                _, paused = await scheduler.run_weight_update(load, obj.abort_all_requests)
            except Exception as exc:
                return result(False, f"Failed to update weights from tensor: {exc}")
            return result(True, server._set_version_after_update(True, "Success", obj.weight_version, paused))

        @app.post("/update_weights_from_disk")
        async def update_weights_from_disk(obj: UpdateWeightFromDiskReqInput):
            try:
                _, paused = await scheduler.run_weight_update(
                    lambda: server.engine.load_weights(read_checkpoint(obj.model_path)),
                    obj.abort_all_requests,
                )
            except Exception as exc:
                return result(False, f"Failed to update weights: {exc}.", num_paused_requests=0)
            server.model_path = obj.model_path
            message = server._set_version_after_update(
                True, "Succeeded to update model weights.", obj.weight_version, paused
            )
            return result(True, message, num_paused_requests=0)

        @app.api_route("/release_memory_occupation", methods=["GET", "POST"])
        @app.api_route("/resume_memory_occupation", methods=["GET", "POST"])
        async def memory_occupation() -> None:
            return None  # nothing to release on CPU; SGLang answers 200 with a null body

        return app


def read_checkpoint(model_path: str) -> list[tuple[str, torch.Tensor]]:
    """All tensors of a Hugging Face checkpoint directory (safetensors, else PyTorch .bin files)."""
    files = sorted(glob.glob(os.path.join(model_path, "*.safetensors")))
    if files:
        from safetensors.torch import load_file

        return [item for file in files for item in load_file(file).items()]
    files = sorted(glob.glob(os.path.join(model_path, "*.bin")))
    if not files:
        raise FileNotFoundError(f"no *.safetensors or *.bin weight files in {model_path!r}")
    return [
        item for file in files for item in torch.load(file, map_location="cpu", weights_only=True).items()
    ]


# ------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], prog="python -m rllm_fully_async.cpu_engine"
    )
    parser.add_argument("--model-path", required=True, help="Hugging Face checkpoint directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (reported on stdout)")
    parser.add_argument("--max-batch-size", type=int, default=64, help="most sequences decoded together")
    parser.add_argument(
        "--max-prefill-tokens", type=int, default=16384, help="prompt tokens per prefill pass"
    )
    parser.add_argument("--num-threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--context-length", type=int, default=None, help="default: max_position_embeddings")
    parser.add_argument(
        "--weight-version", default="default", help="initial weight version (SGLang: 'default')"
    )
    parser.add_argument(
        "--random-seed", type=int, default=None, help="seeds requests that carry no sampling_seed"
    )
    parser.add_argument("--weight-update-timeout-s", type=float, default=300.0)
    parser.add_argument("--ready-file", default=None, help="write the bound port here once serving")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    if args.max_batch_size < 1:
        parser.error("--max-batch-size must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    server = CpuEngineServer(args)
    # Bind first (port 0 = any free port), then report the port: no race with other servers.
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and accepted
    # sockets copy it. Without it every keep-alive response waits ~40 ms (Nagle against delayed ACK).
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    server.port = sock.getsockname()[1]
    config = uvicorn.Config(server.app, log_level=args.log_level, timeout_keep_alive=30)
    uvicorn_server = uvicorn.Server(config)

    async def serve() -> None:
        serving = asyncio.create_task(uvicorn_server.serve(sockets=[sock]))
        while not uvicorn_server.started and not serving.done():
            await asyncio.sleep(0.01)
        if uvicorn_server.started:
            if args.ready_file:
                Path(args.ready_file).write_text(str(server.port))
            print(f"{READY_LINE_PREFIX}{json.dumps({'host': args.host, 'port': server.port})}", flush=True)
        await serving

    asyncio.run(serve())


# ------------------------------------------------------------------------------------------------
# Launcher


class CpuEngineProcess:
    """Runs ``python -m rllm_fully_async.cpu_engine`` as a subprocess; ``url`` is valid after ``start``."""

    def __init__(
        self,
        model_path: str,
        host: str = "127.0.0.1",
        port: int | None = None,
        num_threads: int | None = None,
        extra_args: list[str] | None = None,
        env: dict | None = None,
    ):
        self.model_path = model_path
        self.host = host
        self.port = port
        self.num_threads = num_threads
        self.extra_args = list(extra_args or [])
        self.env = env
        self.url = ""
        self._proc: subprocess.Popen | None = None
        self._workdir: tempfile.TemporaryDirectory | None = None

    def start(self, timeout_s: float = 60) -> CpuEngineProcess:
        """Start the server and wait until ``/health`` answers 200; raise with its stderr tail otherwise."""
        self._workdir = tempfile.TemporaryDirectory(prefix="cpu_engine_")
        ready_file = Path(self._workdir.name) / "port"
        self._stderr_path = Path(self._workdir.name) / "stderr.log"
        cmd = [sys.executable, "-m", "rllm_fully_async.cpu_engine", "--model-path", str(self.model_path)]
        cmd += ["--host", self.host, "--port", str(self.port or 0), "--ready-file", str(ready_file)]
        if self.num_threads:
            cmd += ["--num-threads", str(self.num_threads)]
        # Idle OpenMP threads must not spin: they would starve the HTTP event loop between steps.
        env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, **(self.env or {})}
        with open(self._stderr_path, "wb") as stderr:
            self._proc = subprocess.Popen(
                cmd + self.extra_args, stdout=subprocess.DEVNULL, stderr=stderr, env=env
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._fail(f"exited with code {self._proc.returncode}")
            if ready_file.exists() and ready_file.read_text():
                host = f"[{self.host}]" if ":" in self.host else self.host
                self.url = f"http://{host}:{int(ready_file.read_text())}"
                if self._healthy():
                    return self
            time.sleep(0.1)
        self._fail(f"did not become healthy within {timeout_s:.0f} s")
        raise AssertionError("unreachable")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    def _fail(self, what: str) -> None:
        tail = self._stderr_path.read_text(errors="replace")[-4000:] if self._stderr_path.exists() else ""
        self.stop()
        raise RuntimeError(f"CPU engine for {self.model_path} {what}; stderr tail:\n{tail}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        self._proc = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> CpuEngineProcess:
        return self.start() if self._proc is None else self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
