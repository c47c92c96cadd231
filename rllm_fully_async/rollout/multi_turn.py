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

from rllm_fully_async.rollout.client import GenerationOutput
from rllm_fully_async.rollout.rollout_fn import RewardFn, score_response
from rllm_fully_async.rollout.tools import TOOL_CALL_END, Tool, find_tool_call, parse_tool_call, run_tool_call
from rllm_fully_async.rollout.trajectory import Sample, SampleProgress

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


def _fresh_state() -> dict[str, Any]:
    return {
        "response_ids": [],
        "response_logprobs": [],
        "response_mask": [],
        "token_versions": [],
        "tool_calls": [],
        "turns": 0,
        "num_aborts": 0,
        "finish_reason": "length",
        "final_turn": [],
        "pending_call": None,  # the body of a call whose tool has not returned yet
    }


def _append(
    state: dict[str, Any], ids: list[int], logprobs: list[float], versions: list[int], generated: bool
):
    state["response_ids"] += ids
    state["response_logprobs"] += logprobs
    state["response_mask"] += [int(generated)] * len(ids)
    state["token_versions"] += versions


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
    progress: SampleProgress | None = None,
    **_: Any,
) -> Sample:
    """One multi-turn conversation with ``tools``, scored like :func:`single_turn_chat`.

    The reward function gets the whole decoded response as ``solution_str`` and, in ``extra_info``,
    ``tool_calls`` (name, arguments, output of each call, in order), ``num_turns`` and ``final_response``
    (the last turn's text); the first two also go to ``Sample.extra``.

    Everything so far lives in ``progress`` (finished turns and tool results in ``state``, the turn being
    generated in ``generation``), updated between awaits, so a copy taken while the servers are paused
    can be continued after a restart: a tool that had not returned is called again then, one that had
    is not.
    """
    if max_turns < 1:
        raise ValueError(f"max_turns must be >= 1, got {max_turns}")
    progress = progress if progress is not None else SampleProgress()
    if not progress.state:
        progress.state = _fresh_state()
    state = progress.state
    prompt_ids = tool_prompt_ids(tokenizer, prompt, tools)
    params = _stop_params(tokenizer, sampling_params)
    budget = int(sampling_params["max_new_tokens"])
    ids = state["response_ids"]
    while True:
        if state["pending_call"] is not None:
            call = parse_tool_call(state["pending_call"], tools)
            output = await run_tool_call(call, tools)
            state["tool_calls"].append({"name": call.name, "arguments": call.arguments, "output": output})
            last = state["final_turn"]
            ended_with_eos = bool(last) and last[-1] == tokenizer.eos_token_id
            appended = tool_turn_ids(tokenizer, prompt, output, ended_with_eos)[: budget - len(ids)]
            _append(state, appended, [0.0] * len(appended), [NOT_GENERATED] * len(appended), generated=False)
            state["pending_call"] = None
            if len(ids) >= budget:
                state["finish_reason"] = "length"
        if state["turns"] >= max_turns or len(ids) >= budget or state["finish_reason"] != "length":
            break
        if progress.generation is None:
            progress.generation = GenerationOutput(prompt_ids + ids, [], [], [], finish_reason="length")
        out = await client.generate(
            prompt_ids + ids,
            {**params, "max_new_tokens": budget - len(ids)},
            partial_rollout=partial_rollout,
            out=progress.generation,
        )
        turn_ids, turn_logprobs, turn_versions = list(out.token_ids), list(out.logprobs), _versions(out)
        cut = _cut_after_call(tokenizer, turn_ids)
        if cut is not None:
            turn_ids, turn_logprobs, turn_versions = turn_ids[:cut], turn_logprobs[:cut], turn_versions[:cut]
        # from here to the next await, the turn moves from the generation into the state
        progress.generation = None
        state["turns"] += 1
        state["num_aborts"] += out.num_aborts
        state["final_turn"] = turn_ids
        _append(state, turn_ids, turn_logprobs, turn_versions, generated=True)
        if cut is None:
            state["finish_reason"] = out.finish_reason  # an answer, or the budget ran out
            break
        state["finish_reason"] = "length" if len(ids) >= budget else "stop"
        if state["turns"] < max_turns and len(ids) < budget:  # a call with no turn left to read it is not run
            state["pending_call"] = find_tool_call(tokenizer.decode(turn_ids, skip_special_tokens=False))[0]
            state["finish_reason"] = "length"  # not finished: the conversation goes on
    final_response = tokenizer.decode(state["final_turn"], skip_special_tokens=True)
    info = {
        **(extra_info or {}),
        "tool_calls": state["tool_calls"],
        "num_turns": state["turns"],
        "final_response": final_response,
    }
    solution = tokenizer.decode(ids, skip_special_tokens=True)
    score, extra = await score_response(reward_fn, data_source, solution, reward_model, info)
    generated = [v for v in state["token_versions"] if v != NOT_GENERATED]
    return Sample(
        prompt_ids=prompt_ids,
        response_ids=list(ids),
        response_logprobs=list(state["response_logprobs"]),
        reward=score,
        finish_reason=state["finish_reason"],
        min_version=min(generated, default=-1),
        max_version=max(generated, default=-1),
        num_aborts=state["num_aborts"],
        response_mask=list(state["response_mask"]),
        token_versions=list(state["token_versions"]),
        extra={**extra, "tool_calls": state["tool_calls"], "num_turns": state["turns"]},
    )


def make_tool_rollout(tools: Sequence[Tool], max_turns: int = 4) -> Callable[..., Any]:
    """A rollout function for ``async_training.rollout_fn``: :func:`multi_turn_tool_chat` with ``tools``."""
    tools = list(tools)
    if len({t.name for t in tools}) != len(tools):
        raise ValueError(f"tool names must be unique, got {[t.name for t in tools]}")

    async def tool_rollout(client: Any, tokenizer: Any, **kwargs: Any) -> Sample:
        return await multi_turn_tool_chat(client, tokenizer, tools=tools, max_turns=max_turns, **kwargs)

    return tool_rollout
