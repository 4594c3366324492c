"""A model's `tool_name_map`: tools it knows by other names than the clients use (a fine-tune trained on
`shell` while the client defines `bash`). The map is model-facing name -> client-facing name (the spec's
direction). Each call to the model renames client -> model in what is sent (tool definitions, a forced
tool_choice, assistant tool calls and tool results in the history) and model -> client in what comes back
(tool calls in an answer, in either wire format, and in stream deltas). Names not in the map pass as they are.

Works on the normalized request (OpenAI vocabulary whatever the client's wire format), so /v1/chat,
/v1/chat/completions, /v1/messages and /v1/plan all get it; the request is copied, never changed in place,
so a failover to another model starts from the client's names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from pipeline.types import ChatRequest, ChatResult, Message, StreamDelta

__all__ = ["ToolNames"]


class ToolNames:
    __slots__ = ("to_client", "to_model")

    def __init__(self, pairs: tuple[tuple[str, str], ...]) -> None:
        self.to_client: dict[str, str] = dict(pairs)
        self.to_model: dict[str, str] = {client: model for model, client in pairs}

    # --- what is sent: client -> model ------------------------------------------------------------
    def request(self, request: ChatRequest) -> ChatRequest:
        names = self.to_model
        parameters = dict(request.parameters)
        if isinstance(tools := parameters.get("tools"), list):
            parameters["tools"] = [_renamed_function(tool, names) for tool in tools]
        if isinstance(choice := parameters.get("tool_choice"), dict):
            parameters["tool_choice"] = _renamed_function(choice, names)
        messages = [self._message(m) for m in request.messages]
        return dataclasses.replace(request, parameters=parameters, messages=messages)

    def _message(self, message: Message) -> Message:
        names = self.to_model
        changes: dict[str, Any] = {}
        if isinstance(message.tool_calls, list):
            changes["tool_calls"] = [_renamed_function(call, names) for call in message.tool_calls]
        if message.role in ("tool", "function") and message.name in names:
            changes["name"] = names[message.name]
        return dataclasses.replace(message, **changes) if changes else message

    # --- what comes back: model -> client ---------------------------------------------------------
    def result(self, result: ChatResult) -> ChatResult:
        body = result.body
        if result.format == "anthropic":
            blocks = body.get("content")
            if not isinstance(blocks, list):
                return result
            renamed = [_renamed_block(block, self.to_client) for block in blocks]
            return _with_body(result, {**body, "content": renamed})
        choices = body.get("choices")
        if not isinstance(choices, list):
            return result
        return _with_body(result, {**body, "choices": [self._choice(choice) for choice in choices]})

    def _choice(self, choice: Any) -> Any:
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            return choice
        message = dict(message)
        if isinstance(calls := message.get("tool_calls"), list):
            message["tool_calls"] = [_renamed_function(call, self.to_client) for call in calls]
        if isinstance(legacy := message.get("function_call"), dict):
            message["function_call"] = _renamed(legacy, self.to_client)
        return {**choice, "message": message}

    def delta(self, delta: StreamDelta) -> StreamDelta:
        if not delta.tool_calls:
            return delta
        calls = [_renamed_function(call, self.to_client) for call in delta.tool_calls]
        return dataclasses.replace(delta, tool_calls=calls)


def _renamed_function(item: Any, names: Mapping[str, str]) -> Any:
    """An OpenAI tool, tool_choice or tool call: its `function.name` renamed when the map has it."""
    function = item.get("function") if isinstance(item, dict) else None
    if not isinstance(function, dict) or function.get("name") not in names:
        return item
    return {**item, "function": _renamed(function, names)}


def _renamed(item: dict[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    name = item.get("name")
    return {**item, "name": names[name]} if isinstance(name, str) and name in names else item


def _renamed_block(block: Any, names: Mapping[str, str]) -> Any:
    if isinstance(block, dict) and block.get("type") == "tool_use":
        return _renamed(block, names)
    return block


def _with_body(result: ChatResult, body: dict[str, Any]) -> ChatResult:
    # `raw` is the provider's bytes, now stale: an empty raw makes the edge serialize `body`.
    return dataclasses.replace(result, body=body, raw=b"")
