# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Request bodies and sampling parameters of the CPU engine, as SGLang 0.5.6 defines them.

The fields follow ``managers/io_struct.py`` (request dataclasses and their defaults; unknown fields are
ignored, as there) and ``sampling/sampling_params.py`` (sampling keys and their checks).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from rllm_fully_async.cpu_engine.scheduler import SamplingOptions

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
