# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""An embedded CPU generation server that speaks SGLang 0.5.6's native HTTP API.

``python -m rllm_fully_async.cpu_engine --model-path DIR`` serves a Hugging Face causal LM with
continuous batching (see ``scheduler``) behind the same endpoints, request fields and
response shapes as SGLang's ``http_server.py``, so the rollout client, the parameter sync and
``sglang-router`` cannot tell it from SGLang. It lets the fully-async loop run for real on
machines without a GPU. Request bodies live in ``schemas``, the command line in ``cli``; the run's
launcher (``servers.rollout_servers``) starts it like SGLang, and ``CpuEngineProcess`` there starts one
locally.

Response shapes and behaviour follow SGLang 0.5.6: ``managers/io_struct.py`` (request dataclasses
and their defaults), ``sampling/sampling_params.py`` (sampling keys and their checks),
``managers/tokenizer_manager.py`` (``meta_info``, pause/abort, length checks),
``managers/schedule_batch.py`` (finish reasons and the order stop conditions are checked in),
``managers/detokenizer_manager.py`` (stop trimming of ``text``) and ``entrypoints/http_server.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import logging
import os
import random
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from rllm_fully_async.cpu_engine.attention import ATTN_IMPLEMENTATION
from rllm_fully_async.cpu_engine.checkpoint import read_checkpoint
from rllm_fully_async.cpu_engine.scheduler import (
    BatchEngine,
    GenerationRequest,
    SamplingOptions,
    Scheduler,
    new_rid,
)
from rllm_fully_async.cpu_engine.schemas import (
    AbortReq,
    DestroyWeightsUpdateGroupReqInput,
    GenerateReqInput,
    InitWeightsUpdateGroupReqInput,
    PauseGenerationReqInput,
    UpdateWeightFromDiskReqInput,
    UpdateWeightsFromDistributedReqInput,
    UpdateWeightsFromTensorReqInput,
    UpdateWeightVersionReqInput,
    parse_sampling_params,
)
from rllm_fully_async.sync.tensor_payload import PayloadError, deserialize_named_tensors
from rllm_fully_async.sync.weight_update_group import (
    broadcast_tensor,
    destroy_weight_update_group,
    init_weight_update_group,
)

logger = logging.getLogger("rllm_fully_async.cpu_engine")

SGLANG_API_VERSION = "0.5.6"
HEALTH_CHECK_TIMEOUT_S = float(os.environ.get("SGLANG_HEALTH_CHECK_TIMEOUT", 20))
HEALTH_ENDPOINT_GENERATES = os.environ.get("SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION", "true").lower() in (
    "1",
    "true",
)


def check_group_layout(rank_offset: int, world_size: int) -> str | None:
    """What is wrong with a weight-update group in which this server takes rank ``rank_offset``.

    The sender of the weights is rank 0; a server that took rank 0 (alone, or with a client as rank 1)
    would "receive" its own uninitialised memory as new weights, or push its weights to a stranger."""
    if world_size < 2:
        return f"world_size={world_size}: the group needs the trainer (rank 0) and this server"
    if not 1 <= rank_offset < world_size:
        return (
            f"rank_offset={rank_offset}: this server's rank must be in [1, world_size={world_size}); rank 0 "
            "is the trainer that sends the weights"
        )
    return None


def add_api_key_middleware(app: FastAPI, api_key: str) -> None:
    """SGLang 0.5.6's ``--api-key`` check (``sglang.srt.utils.common.add_api_key_middleware``): every path
    but ``/health*`` and ``/metrics`` needs ``Authorization: Bearer <key>``, else 401."""
    expected = ("Bearer " + api_key).encode()

    @app.middleware("http")
    async def authentication(request: Request, call_next):
        if request.method == "OPTIONS" or request.url.path.startswith(("/health", "/metrics")):
            return await call_next(request)
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return JSONResponse({"error": "Unauthorized"}, status_code=401)
        return await call_next(request)


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
            attn_implementation=ATTN_IMPLEMENTATION,
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
        # SGLang's ServerStatus.Starting: /health answers 503 until the HTTP server is up (cli.main clears).
        self.starting = True
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
        stop_ids = params.get("stop_token_ids") if isinstance(params, dict) else None
        bad = [t for t in stop_ids or [] if isinstance(t, int) and not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(
                f"sampling_params['stop_token_ids'] contains id(s) {bad[:5]} outside the vocabulary "
                f"[0, {self.vocab_size})"
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
        """One SGLang /generate result: ``text``, ``output_ids`` and ``meta_info``.

        As SGLang 0.5.6: a request aborted while waiting is answered as by
        ``TokenizerManager._handle_abort_req`` (id, finish_reason, logprobs so far, completion_tokens; no
        weight_version); any other as by ``_handle_batch_output``.
        """
        meta: dict[str, Any] = {"id": req.rid, "finish_reason": req.finish_reason}
        if not req.aborted_in_queue:
            meta |= {
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
        if not req.aborted_in_queue:
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

    def _flush_after_update(self, flush_cache: bool) -> str | None:
        """``flush_cache`` (default true) after a weight update, as SGLang's scheduler does; why it failed.

        SGLang 0.5.6 asserts the flush succeeded, so with requests running (a pause in ``in_place`` mode) its
        scheduler process dies; this engine refuses the request instead, naming the cause.
        """
        if not flush_cache or self.scheduler.flush_cache():
            return None
        return (
            "Cache flush failed after updating weights: requests are running (SGLang 0.5.6 fails an "
            "assertion here and its scheduler dies). Send flush_cache=false while paused in place."
        )

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
        if server.args.api_key:
            add_api_key_middleware(app, server.args.api_key)

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
            """SGLang's check: 503 while starting; 200 once the engine makes progress on a 1-token request (or
            anything), which cannot happen while generation is paused: then 503 after the check's timeout."""
            if server.starting:
                return Response(status_code=503)
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
                "internal_states": [
                    {
                        **counters,
                        "num_threads": torch.get_num_threads(),
                        "requests_at_gate": scheduler.num_at_gate,
                    }
                ],
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
            return Response(
                content="Cache flushed.\nPlease check backend logs for more details. "
                "(When there are running or waiting requests, the operation will not be performed.)\n",
                status_code=200 if scheduler.flush_cache() else 400,
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
            problem = check_group_layout(obj.rank_offset, obj.world_size)
            if problem is not None:
                return result(False, f"Failed to initialize custom process group: {problem}")
            if obj.group_name in server.weight_groups:
                return result(
                    False,
                    f"Failed to initialize custom process group: group {obj.group_name!r} exists; destroy it "
                    "first (/destroy_weights_update_group)",
                )
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
            if (problem := server._flush_after_update(obj.flush_cache)) is not None:
                return result(False, problem)
            message = server._set_version_after_update(
                True, "Succeeded to update parameter online.", obj.weight_version, paused
            )
            return result(True, message)

        @app.post("/update_weights_from_tensor")
        async def update_weights_from_tensor(obj: UpdateWeightsFromTensorReqInput):
            if not obj.serialized_named_tensors:
                return result(
                    False, "serialized_named_tensors is empty; send one entry per tensor-parallel rank"
                )
            # Parsed before anything else happens: a payload that is not safetensors changes nothing.
            entry = obj.serialized_named_tensors[0]  # this engine is tensor-parallel rank 0 of 1
            try:
                named = await asyncio.to_thread(deserialize_named_tensors, entry, obj.load_format)
            except PayloadError as exc:
                return result(False, f"Failed to update weights from tensor: {exc}")
            try:
                _, paused = await scheduler.run_weight_update(
                    lambda: server.engine.load_weights(named), obj.abort_all_requests
                )
            except Exception as exc:
                return result(False, f"Failed to update weights from tensor: {exc}")
            if (problem := server._flush_after_update(obj.flush_cache)) is not None:
                return result(False, problem)
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
            if (problem := server._flush_after_update(obj.flush_cache)) is not None:
                return result(False, problem, num_paused_requests=0)
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
