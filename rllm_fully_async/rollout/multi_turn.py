# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Multi-turn rollout with tools: the model speaks, calls a tool, reads its output, and goes on.

One sample is one conversation: the model generates until it closes a ``<tool_call>`` (see ``tools``),
the tool runs, its output is appended as a tool message rendered by the chat template, and generation
continues from there, until the model answers without calling a tool, the turn limit, or the length
budget (``max_new_tokens`` covers the whole response, tool output included).

Trajectories are token-exact: the training response is the generated token ids and the tool tokens
appended between turns, in order, never a re-tokenisation of decoded text, and each turn is generated
from exactly those tokens. Generated tokens carry their behaviour log-probs and weight versions and
``response_mask`` 1; tool tokens carry mask 0, log-prob 0 and version -1. A weight sync that pauses the
servers while a tool runs neither loses nor repeats the call: the tool runs in this coroutine, outside
any request, and the next turn waits for the servers to resume. Staleness counts the oldest generated
token, as for a single-turn partial rollout.

Use it with ``async_training.rollout_fn`` pointing at a rollout built by :func:`make_tool_rollout`::

    # my_tools.py
    from rllm_fully_async.rollout.multi_turn import make_tool_rollout
    from rllm_fully_async.rollout.tools import Tool

    def search(query: str) -> str: ...

    rollout = make_tool_rollout([Tool("search", search, "Search the web", {...json schema...})], max_turns=4)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rllm_fully_async.rollout.rollout_fn import RewardFn, score_response
from rllm_fully_async.rollout.tools import TOOL_CALL_END, Tool, find_tool_call, parse_tool_call, run_tool_call
from rllm_fully_async.rollout.trajectory import Sample

# Stands in for an assistant turn's text when rendering the template around it (no template alters it).
_PLACEHOLDER = "\x00ASSISTANT-TURN\x00"
NOT_GENERATED = -1


def template_takes_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders tool schemas (it refers to ``tools``)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    return isinstance(template, str) and "tools" in template


def tool_prompt_ids(tokenizer: Any, messages: list[dict], tools: Sequence[Tool]) -> list[int]:
    """The chat prompt, with the tools' schemas where the template takes them."""
    kwargs = {"tools": [t.schema for t in tools]} if tools and template_takes_tools(tokenizer) else {}
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    return tokenizer.encode(rendered, add_special_tokens=False)


def tool_turn_ids(tokenizer: Any, messages: list[dict], output: str, turn_ended_with_eos: bool) -> list[int]:
    """Tokens the chat template puts between an assistant turn that called a tool and the next turn:
    the end of that turn, the tool message with ``output``, and the next generation prompt.

    Rendered around a placeholder turn, so only template text and the tool's output are tokenised; the
    end-of-turn token is left out when the model generated it itself.
    """
    conversation = [
        *messages,
        {"role": "assistant", "content": _PLACEHOLDER},
        {"role": "tool", "content": output},
    ]
    rendered = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    tail = rendered[rendered.index(_PLACEHOLDER) + len(_PLACEHOLDER) :]
    eos = tokenizer.eos_token or ""
    if turn_ended_with_eos and eos and tail.startswith(eos):
        tail = tail[len(eos) :]
    return tokenizer.encode(tail, add_special_tokens=False)


def _stop_params(tokenizer: Any, sampling_params: dict) -> dict:
    """Generation stops when a tool call is closed: on its end tag's token where it is one token."""
    params = dict(sampling_params)
    end_ids = tokenizer.encode(TOOL_CALL_END, add_special_tokens=False)
    if len(end_ids) == 1:
        params["stop_token_ids"] = sorted({*(params.get("stop_token_ids") or []), end_ids[0]})
    else:
        stop = params.get("stop") or []
        params["stop"] = sorted({*([stop] if isinstance(stop, str) else stop), TOOL_CALL_END})
    return params


def _cut_after_call(tokenizer: Any, token_ids: list[int]) -> int | None:
    """How many of ``token_ids`` it takes to close the first tool call; None without a complete call.

    Tokens generated past the call (an engine that missed the stop, one straddling an abort) are
    dropped: the tool's output must follow the call directly. Closing is monotone in the prefix length,
    so a binary search finds the shortest prefix in a few decodes.
    """

    def closed(k: int) -> bool:
        return find_tool_call(tokenizer.decode(token_ids[:k], skip_special_tokens=False)) is not None

    if not closed(len(token_ids)):
        return None
    lo, hi = 1, len(token_ids)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if closed(mid) else (mid + 1, hi)
    return lo


def _versions(out: Any) -> list[int]:
    return [chunk.version for chunk in out.chunks for _ in chunk.token_ids]


async def multi_turn_tool_chat(
    client: Any,
    tokenizer: Any,
    *,
    prompt: list[dict],
    data_source: str,
    reward_model: Mapping[str, Any] | None,
    sampling_params: dict,
    reward_fn: RewardFn,
    tools: Sequence[Tool],
    max_turns: int = 4,
    extra_info: Mapping[str, Any] | None = None,
    partial_rollout: bool = True,
    **_: Any,
) -> Sample:
    """One multi-turn conversation with ``tools``, scored like :func:`single_turn_chat`.

    The reward function gets the whole decoded response as ``solution_str`` and, in ``extra_info``,
    ``tool_calls`` (name, arguments, output of each call, in order), ``num_turns`` and ``final_response``
    (the last turn's text); the first two also go to ``Sample.extra``.
    """
    if max_turns < 1:
        raise ValueError(f"max_turns must be >= 1, got {max_turns}")
    prompt_ids = tool_prompt_ids(tokenizer, prompt, tools)
    params = _stop_params(tokenizer, sampling_params)
    budget = int(sampling_params["max_new_tokens"])
    ids: list[int] = []
    logprobs: list[float] = []
    mask: list[int] = []
    versions: list[int] = []
    tool_calls: list[dict[str, Any]] = []
    num_aborts = turns = 0
    turn_ids: list[int] = []
    finish_reason = "length"
    while turns < max_turns and len(ids) < budget:
        out = await client.generate(
            prompt_ids + ids, {**params, "max_new_tokens": budget - len(ids)}, partial_rollout=partial_rollout
        )
        turns += 1
        num_aborts += out.num_aborts
        turn_ids, turn_logprobs, turn_versions = list(out.token_ids), list(out.logprobs), _versions(out)
        cut = _cut_after_call(tokenizer, turn_ids)
        if cut is not None:
            turn_ids, turn_logprobs, turn_versions = turn_ids[:cut], turn_logprobs[:cut], turn_versions[:cut]
        ids += turn_ids
        logprobs += turn_logprobs
        mask += [1] * len(turn_ids)
        versions += turn_versions
        finish_reason = "stop" if cut is not None else out.finish_reason
        if cut is None or turns >= max_turns or len(ids) >= budget:
            break  # an answer, the turn limit, or the budget: a call with no turn left to read it is not run
        body, _end = find_tool_call(tokenizer.decode(turn_ids, skip_special_tokens=False))
        call = parse_tool_call(body, tools)
        output = await run_tool_call(call, tools)
        tool_calls.append({"name": call.name, "arguments": call.arguments, "output": output})
        ended_with_eos = bool(turn_ids) and turn_ids[-1] == tokenizer.eos_token_id
        appended = tool_turn_ids(tokenizer, prompt, output, ended_with_eos)[: budget - len(ids)]
        ids += appended
        logprobs += [0.0] * len(appended)
        mask += [0] * len(appended)
        versions += [NOT_GENERATED] * len(appended)
        if len(ids) >= budget:
            finish_reason = "length"
    solution = tokenizer.decode(ids, skip_special_tokens=True)
    final_response = tokenizer.decode(turn_ids, skip_special_tokens=True)
    info = {
        **(extra_info or {}),
        "tool_calls": tool_calls,
        "num_turns": turns,
        "final_response": final_response,
    }
    score, extra = await score_response(reward_fn, data_source, solution, reward_model, info)
    generated = [v for v in versions if v != NOT_GENERATED]
    return Sample(
        prompt_ids=prompt_ids,
        response_ids=ids,
        response_logprobs=logprobs,
        reward=score,
        finish_reason=finish_reason,
        min_version=min(generated, default=-1),
        max_version=max(generated, default=-1),
        num_aborts=num_aborts,
        response_mask=mask,
        token_versions=versions,
        extra={**extra, "tool_calls": tool_calls, "num_turns": turns},
    )


def make_tool_rollout(tools: Sequence[Tool], max_turns: int = 4) -> Callable[..., Any]:
    """A rollout function for ``async_training.rollout_fn``: :func:`multi_turn_tool_chat` with ``tools``."""
    tools = list(tools)
    if len({t.name for t in tools}) != len(tools):
        raise ValueError(f"tool names must be unique, got {[t.name for t in tools]}")

    async def tool_rollout(client: Any, tokenizer: Any, **kwargs: Any) -> Sample:
        return await multi_turn_tool_chat(client, tokenizer, tools=tools, max_turns=max_turns, **kwargs)

    return tool_rollout
