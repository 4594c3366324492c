"""The normalized (OpenAI-vocabulary) ChatRequest as an Anthropic Messages API payload.

Anthropic is stricter than OpenAI about conversation shape, so the mapping also repairs what it would reject:
system text lives in a top-level field; turns must alternate and start with the user; every tool_use must be
answered by a tool_result in the next user turn, and a tool_result must answer a tool_use; text blocks must
not be empty; unknown top-level fields are errors. Everything without an Anthropic counterpart is dropped,
never forwarded to fail.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from adapters.anthropic_format import parse_tool_arguments
from pipeline.types import ChatRequest, MediaPart, Message

__all__ = ["DEFAULT_MAX_TOKENS", "PLACEHOLDER_USER_TURN", "build_messages", "build_payload", "map_parameters"]

DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; providers.md §4 default
# Sent as the first turn when a conversation does not start with the user (Anthropic requires it): one
# character, so it costs a token and steers nothing.
PLACEHOLDER_USER_TURN = "."
_INTERRUPTED = "interrupted: no result was provided for this tool call"
_SYSTEM_ROLES = frozenset({"system", "developer"})  # OpenAI's newer models call the system role "developer"
_TOOL_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")  # Anthropic tool ids must match ^[a-zA-Z0-9_-]+$
_MAX_USER_ID = 256  # Anthropic rejects a longer metadata.user_id


def build_payload(model_id: str, request: ChatRequest) -> dict[str, Any]:
    system, messages = build_messages(request.messages)
    payload: dict[str, Any] = {"model": model_id, "messages": messages}
    params = map_parameters(request.parameters)
    if system:
        payload["system"] = system
    payload.update(params)
    return payload


# ---- messages --------------------------------------------------------------------------------------------


def build_messages(messages: Iterable[Message]) -> tuple[str, list[dict[str, Any]]]:
    """(system text, Anthropic messages). System messages are joined with "\\n"; the rest become turns of
    content blocks, merged when consecutive turns share a role, then repaired (see the module doc)."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = message.role
        if role in _SYSTEM_ROLES:
            if message.content:
                system.append(message.content)
            continue
        if role == "assistant":
            _append(turns, "assistant", _assistant_blocks(message, len(turns)))
        elif role == "tool":
            _append(turns, "user", [_tool_result(_tool_id(message.tool_call_id, "missing"), message.content)])
        elif message.parts:  # a user turn holding media: blocks in the client's order
            _append(turns, "user", [block for part in message.parts for block in _part_blocks(part)])
        else:  # user, and any role Anthropic does not know (OpenAI's legacy "function") as user text
            _append(turns, "user", _text_blocks(message.content))
    _pair_tool_results(turns)
    _finish(turns)
    return "\n".join(system), [_compact(turn) for turn in turns]


def _append(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": blocks})


def _text_blocks(text: str) -> list[dict[str, Any]]:
    # Anthropic rejects empty (and whitespace-only) text blocks.
    return [{"type": "text", "text": text}] if text and not text.isspace() else []


def _part_blocks(part: str | MediaPart) -> list[dict[str, Any]]:
    """A text piece, an image or a PDF as Anthropic blocks (base64 or URL source). Audio has no Anthropic
    form: routing never sends it here (this type's `inputs` lack audio)."""
    if isinstance(part, str):
        return _text_blocks(part)
    if part.url:
        source: dict[str, Any] = {"type": "url", "url": part.url}
    else:
        source = {"type": "base64", "media_type": part.media_type, "data": part.data}
    block: dict[str, Any] = {"type": part.kind, "source": source}
    if part.kind == "document" and (part.title or part.filename):
        block["title"] = part.title or part.filename
    return [block]


def _tool_id(raw: Any, fallback: str) -> str:
    return _TOOL_ID_UNSAFE.sub("_", raw) if isinstance(raw, str) and raw else fallback


def _tool_result(tool_use_id: str, content: str, *, is_error: bool = False) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_use_id}
    if content:
        block["content"] = content
    if is_error:
        block["is_error"] = True
    return block


def _assistant_blocks(message: Message, turn: int) -> list[dict[str, Any]]:
    blocks = _text_blocks(message.content)
    calls = message.tool_calls
    for position, call in enumerate(calls if isinstance(calls, list) else ()):
        if not isinstance(call, dict):
            continue
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        name = function.get("name")
        if not isinstance(name, str) or not name:
            continue  # a tool call without a name cannot be expressed
        blocks.append(
            {
                "type": "tool_use",
                "id": _tool_id(call.get("id"), f"call_{turn}_{position}"),
                "name": name,
                "input": parse_tool_arguments(function.get("arguments")),
            }
        )
    return blocks


def _pair_tool_results(turns: list[dict[str, Any]]) -> None:
    """Every tool_use gets a tool_result in the next user turn (a synthetic error result when the client sent
    none: the call was interrupted); a tool_result answering no tool_use of the previous turn becomes text.
    Within a user turn, tool results come first, as Anthropic requires."""
    pending: list[str] = []  # tool_use ids of the previous assistant turn, in call order
    for turn in turns:
        blocks = turn["content"]
        if turn["role"] == "assistant":
            pending = [b["id"] for b in blocks if b["type"] == "tool_use"]
            continue
        answers: dict[str, dict[str, Any]] = {}
        rest: list[dict[str, Any]] = []
        for block in blocks:
            if block["type"] != "tool_result":
                rest.append(block)
            elif block["tool_use_id"] in pending and block["tool_use_id"] not in answers:
                answers[block["tool_use_id"]] = block
            else:  # answers nothing (or answers twice)
                rest.append(_orphan_as_text(block))
        results = [answers.get(i) or _tool_result(i, _INTERRUPTED, is_error=True) for i in pending]
        turn["content"] = results + rest
        pending = []


def _orphan_as_text(block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "text", "text": f"[result of tool call {block['tool_use_id']}]: {block.get('content', '')}"}


def _finish(turns: list[dict[str, Any]]) -> None:
    # A final assistant turn is a prefill; Anthropic rejects one ending in whitespace.
    if turns and turns[-1]["role"] == "assistant":
        blocks = turns[-1]["content"]
        if blocks[-1]["type"] == "text":
            text = blocks[-1]["text"].rstrip()
            if text:
                blocks[-1] = {"type": "text", "text": text}
            else:
                blocks.pop()
        if not blocks:
            turns.pop()
    if not turns or turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": [{"type": "text", "text": PLACEHOLDER_USER_TURN}]})


def _compact(turn: dict[str, Any]) -> dict[str, Any]:
    """A turn that is one text block is sent as a plain string (the common case, and the spec's shape)."""
    blocks = turn["content"]
    if len(blocks) == 1 and blocks[0]["type"] == "text":
        return {"role": turn["role"], "content": blocks[0]["text"]}
    return turn


# ---- parameters ------------------------------------------------------------------------------------------


def map_parameters(params: dict[str, Any]) -> dict[str, Any]:
    """OpenAI-vocabulary parameters (and the few Anthropic-vocabulary ones) as Anthropic fields.

    A whitelist: what is not mapped here (seed, n, presence/frequency_penalty, logit_bias, logprobs,
    response_format, stream_options, reasoning_effort, service_tier, ...) is dropped."""
    out: dict[str, Any] = {
        "max_tokens": _positive_int(params.get("max_completion_tokens"))
        or _positive_int(params.get("max_tokens"))
        or DEFAULT_MAX_TOKENS
    }
    out.update(_sampling(params))
    stops = _stop_sequences(params.get("stop"), params.get("stop_sequences"))
    if stops:
        out["stop_sequences"] = stops
    if metadata := _metadata(params.get("metadata"), params.get("user")):
        out["metadata"] = metadata
    if isinstance(params.get("thinking"), dict):
        out["thinking"] = params["thinking"]
    tools = _tools(params.get("tools"))
    if tools:  # Anthropic rejects tool_choice without tools
        out["tools"] = tools
        choice = _tool_choice(params.get("tool_choice"))
        if params.get("parallel_tool_calls") is False and (choice or {}).get("type") != "none":
            choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
        if choice:
            out["tool_choice"] = choice
    return out


def _sampling(params: dict[str, Any]) -> dict[str, Any]:
    thinking = params.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        return {}  # extended thinking rejects a temperature other than 1, top_k, and most top_p values
    out: dict[str, Any] = {}
    temperature = _number(params.get("temperature"))
    if temperature is not None:
        out["temperature"] = min(max(temperature, 0.0), 1.0)  # OpenAI allows 0..2, Anthropic 0..1
    top_p = _number(params.get("top_p"))
    if top_p is not None and temperature is None:
        # Current Claude models reject temperature and top_p together; OpenAI clients often send both.
        out["top_p"] = top_p
    top_k = _positive_int(params.get("top_k"))
    if top_k:
        out["top_k"] = top_k
    return out


def _positive_int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _number(value: Any) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _stop_sequences(*values: Any) -> list[str]:
    stops: list[str] = []
    for value in values:
        for stop in [value] if isinstance(value, str) else value if isinstance(value, list) else ():
            # Anthropic rejects whitespace-only stop sequences (OpenAI clients often send "\n"): dropped.
            if isinstance(stop, str) and stop.strip() and stop not in stops:
                stops.append(stop)
    return stops


def _metadata(metadata: Any, user: Any) -> dict[str, str]:
    # Anthropic's metadata has one field; OpenAI's `metadata` (free-form tags) has no counterpart.
    user_id = metadata.get("user_id") if isinstance(metadata, dict) else None
    if not isinstance(user_id, str) or not user_id:
        user_id = user
    return {"user_id": user_id} if isinstance(user_id, str) and 0 < len(user_id) <= _MAX_USER_ID else {}


def _tools(tools: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for tool in tools if isinstance(tools, list) else ():
        if not isinstance(tool, dict):
            continue
        function = tool.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            schema = function.get("parameters")
            mapped: dict[str, Any] = {
                "name": function["name"],
                "input_schema": schema if isinstance(schema, dict) else {"type": "object", "properties": {}},
            }
            if isinstance(function.get("description"), str):
                mapped["description"] = function["description"]
            out.append(mapped)
        elif "function" not in tool and isinstance(tool.get("name"), str):
            out.append(tool)  # already Anthropic's shape (custom or server tool): passed through
    return out


# "any" is Anthropic's own word for OpenAI's "required".
_CHOICE_STRINGS = {"auto": "auto", "required": "any", "any": "any", "none": "none"}


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if isinstance(choice, str):
        kind = _CHOICE_STRINGS.get(choice)
        return {"type": kind} if kind else None
    if not isinstance(choice, dict):
        return None
    kind = choice.get("type")
    if kind == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        return {"type": "tool", "name": name} if isinstance(name, str) and name else None
    if kind in ("auto", "any", "none") or (kind == "tool" and isinstance(choice.get("name"), str)):
        return dict(choice)  # already Anthropic's shape
    return None
