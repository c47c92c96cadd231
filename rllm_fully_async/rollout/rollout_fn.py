# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The default rollout function (single-turn chat + verifiable reward) and loaders for user functions.

A rollout function is ``async def fn(client, tokenizer, **datum, sampling_params, reward_fn,
partial_rollout) -> Sample``; the executor calls it once per sample with the dataset row spread as
keyword arguments (``prompt`` always holds the row's ``data.prompt_key`` column). Functions should
accept ``**kwargs`` so that new row columns do not break them. A function that takes ``progress`` (a
``SampleProgress``) also gets one to record into; a checkpoint saves it and a resumed run hands it back
to be continued (``single_turn_chat`` and the multi-turn rollout do).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from rllm_fully_async.rollout.reward_guard import InvalidReward, call_reward, check_reward, function_name
from rllm_fully_async.rollout.trajectory import Sample, SampleProgress

RewardFn = Callable[..., Any]
RolloutFn = Callable[..., Any]


def chat_prompt_ids(tokenizer: Any, messages: list[dict], **template_kwargs: Any) -> list[int]:
    """Token ids of ``messages`` rendered with the tokenizer's chat template plus the generation prompt;
    ``template_kwargs`` go to ``apply_chat_template`` (e.g. ``enable_thinking``)."""
    rendered = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, **template_kwargs
    )
    return tokenizer.encode(rendered, add_special_tokens=False)


async def single_turn_chat(
    client: Any,
    tokenizer: Any,
    *,
    prompt: list[dict],
    data_source: str,
    reward_model: Mapping[str, Any] | None,
    sampling_params: dict,
    reward_fn: RewardFn,
    extra_info: Mapping[str, Any] | None = None,
    partial_rollout: bool = True,
    progress: SampleProgress | None = None,
    **_: Any,
) -> Sample:
    """Generate one response to the chat ``prompt`` and score it against ``reward_model.ground_truth``.

    The response is generated into ``progress.generation`` (continued if it already holds tokens: a
    generation saved with a checkpoint).

    ``reward_fn`` follows verl's ``compute_score`` convention; it may return a float or a dict with a
    ``score`` key (the other keys go to ``Sample.extra``), and may be async (a synchronous one runs in a
    thread, so that one which hangs holds only its own sample). A score that is not a finite number
    raises :class:`~rllm_fully_async.rollout.reward_guard.InvalidReward`.
    """
    prompt_ids, out = await generate_reply(
        client, tokenizer, prompt, sampling_params, partial_rollout, progress
    )
    solution = tokenizer.decode(out.token_ids, skip_special_tokens=True)
    score, extra = await score_response(reward_fn, data_source, solution, reward_model, extra_info)
    return Sample(
        prompt_ids=prompt_ids,
        response_ids=list(out.token_ids),
        response_logprobs=list(out.logprobs),
        reward=score,
        finish_reason=out.finish_reason,
        min_version=out.min_version,
        max_version=out.max_version,
        num_aborts=out.num_aborts,
        extra=extra,
    )


async def generate_reply(
    client: Any,
    tokenizer: Any,
    prompt: list[dict],
    sampling_params: dict,
    partial_rollout: bool,
    progress: SampleProgress | None,
) -> tuple[list[int], Any]:
    """The chat ``prompt``'s token ids and one generated reply (a ``client.GenerationOutput``), generated
    into ``progress.generation`` so that a checkpoint saves it and a resumed run continues it."""
    from rllm_fully_async.rollout.client import GenerationOutput  # the client imports this module

    prompt_ids = chat_prompt_ids(tokenizer, prompt)
    if progress is not None and progress.generation is None:
        progress.generation = GenerationOutput(prompt_ids, [], [], [], finish_reason="length")
    out = await client.generate(
        prompt_ids,
        sampling_params,
        partial_rollout=partial_rollout,
        out=progress.generation if progress is not None else None,
    )
    return prompt_ids, out


async def score_response(
    reward_fn: RewardFn,
    data_source: str,
    solution: str,
    reward_model: Mapping[str, Any] | None,
    extra_info: Mapping[str, Any] | None,
) -> tuple[float, dict[str, Any]]:
    """The checked reward of ``solution`` and the reward function's other outputs (for ``Sample.extra``).

    A synchronous reward function runs in a thread, so one that hangs holds only its own sample.
    """
    ground_truth = (reward_model or {}).get("ground_truth")
    score = await call_reward(
        reward_fn,
        data_source=data_source,
        solution_str=solution,
        ground_truth=ground_truth,
        extra_info=extra_info,
    )
    extra: dict[str, Any] = {}
    source = f"reward function {function_name(reward_fn)!r}"
    if isinstance(score, Mapping):
        if "score" not in score:
            raise InvalidReward(f"{source} returned a dict without a 'score' key: {sorted(score)}")
        extra = {k: v for k, v in score.items() if k != "score"}
        score = score["score"]
    return check_reward(score, source), extra


def _load_file_module(path: str, key: str) -> Any:
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{key}: file {path!r} does not exist")
    name = f"rllm_fully_async_user_{abs(hash(os.path.abspath(path)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{key}: cannot load {path!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _get_function(module: Any, name: str, where: str, key: str) -> Callable:
    fn = getattr(module, name, None)
    if not callable(fn):
        found = sorted(n for n, v in vars(module).items() if inspect.isfunction(v) and not n.startswith("_"))
        raise AttributeError(f"{key}: {where} has no function {name!r}; functions defined there: {found}")
    return fn


def load_reward_fn(custom_reward_function: Mapping[str, Any] | None) -> RewardFn:
    """verl's ``default_compute_score``, or ``custom_reward_function.path``'s function ``name``.

    ``custom_reward_function.reward_kwargs`` are passed to the custom function on every call, as verl does.
    """
    cfg = dict(custom_reward_function or {})
    path = cfg.get("path")
    if not path:
        from verl.utils.reward_score import default_compute_score

        return default_compute_score
    name = cfg.get("name") or "compute_score"
    module = _load_file_module(str(path), "custom_reward_function.path")
    fn = _get_function(module, name, repr(path), "custom_reward_function.name")
    reward_kwargs = dict(cfg.get("reward_kwargs") or {})
    return partial(fn, **reward_kwargs) if reward_kwargs else fn


def load_function(spec: str | Callable, key: str) -> Callable:
    """The function named by ``spec`` (config key ``key``): ``"package.module:function"`` or
    ``"/path/file.py:function"``; a callable is returned as is."""
    if callable(spec):
        return spec
    target, sep, name = str(spec).rpartition(":")
    if not sep or not target or not name:
        raise ValueError(f"{key}={spec!r}: expected 'package.module:function' or '/path/to/file.py:function'")
    if target.endswith(".py") or os.sep in target:
        module = _load_file_module(target, key)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise ImportError(f"{key}={spec!r}: cannot import {target!r}: {e}") from e
    return _get_function(module, name, repr(target), key)


def load_rollout_fn(spec: str | RolloutFn | None) -> RolloutFn:
    """The rollout function named by ``spec``: ``"package.module:function"`` or ``"/path/file.py:function"``.

    ``None`` gives :func:`single_turn_chat`; a callable is returned as is. The function must be async.
    """
    if spec is None:
        return single_turn_chat
    fn = load_function(spec, "async_training.rollout_fn")
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(
            f"async_training.rollout_fn: {getattr(fn, '__name__', fn)!r} must be an async function "
            "(async def fn(client, tokenizer, **datum) -> Sample)"
        )
    return fn
