# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Tools a multi-turn rollout can call, and the tool-call format the model writes.

The format is the Hermes / Qwen2.5 convention that Hugging Face chat templates use: the model writes

    <tool_call>
    {"name": "calculator", "arguments": {"expression": "3+4"}}
    </tool_call>

and the tool's output goes back as a ``{"role": "tool", "content": ...}`` message, which the chat
template renders (Qwen2.5: ``<|im_start|>user\\n<tool_response>\\n...\\n</tool_response><|im_end|>``).
Where the tokenizer's chat template knows about tools (it takes ``tools=``), the tools' JSON schemas
are given to it, so the model sees them in the prompt as it did in its own training.

Plain tag format, for models without a tool-calling template (the toy model): the same tags with a
body that is not JSON, ``<tool_call>3+4</tool_call>``, call the first tool with the body as its one
string argument. Anything else between the tags that is not a valid call is answered with an error
message as the tool output, so the model can learn from it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rllm_fully_async.rollout.offload import call

TOOL_CALL_START = "<tool_call>"
TOOL_CALL_END = "</tool_call>"
_CALL = re.compile(re.escape(TOOL_CALL_START) + r"(.*?)" + re.escape(TOOL_CALL_END), re.S)


@dataclass
class Tool:
    """A function the model may call: ``fn(**arguments)`` returns the output text (str() of anything else).

    ``fn`` may be async (awaited on the executor's loop) or synchronous (run in a worker thread, so a slow
    one never stalls other generations). ``parameters`` is the JSON schema of its arguments.
    """

    name: str
    fn: Callable[..., Any]
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})

    @property
    def schema(self) -> dict[str, Any]:
        """The OpenAI function schema that ``apply_chat_template(tools=...)`` takes."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    @property
    def plain_argument(self) -> str | None:
        """The argument a plain-format call's body goes to: the schema's first property."""
        return next(iter(self.parameters.get("properties") or {}), None)


@dataclass
class ToolCall:
    """One parsed call; ``error`` set when the text between the tags is not a valid call."""

    name: str
    arguments: dict[str, Any]
    error: str | None = None


def find_tool_call(text: str) -> tuple[str, int] | None:
    """The body of the first complete ``<tool_call>...</tool_call>`` in ``text`` and where the block ends."""
    match = _CALL.search(text)
    return (match.group(1), match.end()) if match else None


def parse_tool_call(body: str, tools: Sequence[Tool]) -> ToolCall:
    """A call from the text between the tags: Hermes JSON, or a plain body for the first tool."""
    stripped = body.strip()
    by_name = {t.name: t for t in tools}
    if stripped.startswith("{"):
        try:
            obj = json.loads(stripped)
        except ValueError as e:
            return ToolCall("", {}, f"the tool call is not valid JSON: {e}")
        if not isinstance(obj, dict):
            return ToolCall("", {}, 'the tool call must be a JSON object {"name": ..., "arguments": {...}}')
        name, arguments = obj.get("name"), obj.get("arguments", {})
        if isinstance(arguments, str):  # some models write the arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return ToolCall(str(name), {}, "the tool call's arguments are not a JSON object")
        if name not in by_name:
            return ToolCall(str(name), {}, f"unknown tool {name!r}; tools: {sorted(by_name)}")
        if not isinstance(arguments, dict):
            return ToolCall(name, {}, "the tool call's arguments are not a JSON object")
        return ToolCall(name, arguments)
    if not tools:
        return ToolCall("", {}, "no tools are available")
    tool = tools[0]
    if tool.plain_argument is None:
        return ToolCall(tool.name, {}, f"tool {tool.name!r} takes no argument; call it with JSON")
    return ToolCall(tool.name, {tool.plain_argument: stripped})


async def run_tool_call(tool_call: ToolCall, tools: Sequence[Tool]) -> str:
    """The tool's output text; a failed call (bad format, the tool raised) answers with the error."""
    if tool_call.error is not None:
        return f"error: {tool_call.error}"
    tool = next(t for t in tools if t.name == tool_call.name)
    try:
        output = await call(tool.fn, **tool_call.arguments)
    except Exception as e:  # the model sees the failure, as it would from a real tool server
        return f"error: {type(e).__name__}: {e}"
    return (
        output
        if isinstance(output, str)
        else json.dumps(output)
        if isinstance(output, dict | list)
        else str(output)
    )
