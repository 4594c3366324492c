"""Pure conversions between Anthropic Messages bodies and OpenAI chat.completion bodies, for the edges.

No I/O and nothing of ours but plain dicts (and the token counter): an edge calls these when the provider
that answered speaks a different wire format than the client.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from adapters.usage import token_count

__all__ = [
    "FINISH_TO_STOP",
    "STOP_TO_FINISH",
    "anthropic_to_openai_completion",
    "finish_reason_for",
    "normalize_tool_call_ids",
    "openai_to_anthropic_message",
    "openai_tool_call_id",
    "parse_tool_arguments",
    "stop_reason_for",
]

# Anthropic stop_reason -> OpenAI finish_reason. pause_turn (a server tool paused the turn) has no OpenAI
# counterpart: the turn did end, so "stop"; the context-window stop is a length stop.
STOP_TO_FINISH: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
FINISH_TO_STOP: dict[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",  # OpenAI's legacy name
    "content_filter": "refusal",
}


def finish_reason_for(stop_reason: Any, has_tool_calls: bool = False) -> str:
    """OpenAI finish_reason for an Anthropic stop_reason; unknown or missing -> by whether tools were called."""
    mapped = STOP_TO_FINISH.get(stop_reason) if isinstance(stop_reason, str) else None
    return mapped or ("tool_calls" if has_tool_calls else "stop")


def stop_reason_for(finish_reason: Any, has_tool_use: bool = False) -> str:
    """Anthropic stop_reason for an OpenAI finish_reason; unknown or missing -> by whether tools were used."""
    mapped = FINISH_TO_STOP.get(finish_reason) if isinstance(finish_reason, str) else None
    return mapped or ("tool_use" if has_tool_use else "end_turn")


def openai_tool_call_id(raw: Any, index: int) -> str:
    """providers.md §10: `tooluse_X` -> `call_X`, other non-`call_` ids get a `call_` prefix, empty -> `call_<index>`.
    Anthropic's own `toolu_...` ids therefore become `call_toolu_...`: still recognisable, and an id the
    client sends back works with either provider."""
    if not isinstance(raw, str) or not raw:
        return f"call_{index}"
    if raw.startswith("call_"):
        return raw
    if raw.startswith("tooluse_"):
        return "call_" + raw[len("tooluse_") :]
    return "call_" + raw


def normalize_tool_call_ids(choices: Any) -> Any:
    """Apply the id hygiene to every `message.tool_calls` / `delta.tool_calls` entry of OpenAI-shaped choices,
    in place (the body was parsed for this response only). Returns `choices` for chaining; garbage is left alone.
    A streamed continuation delta (no `id` key at all) is not given one."""
    if not isinstance(choices, list):
        return choices
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        for key in ("message", "delta"):
            part = choice.get(key)
            calls = part.get("tool_calls") if isinstance(part, dict) else None
            if not isinstance(calls, list):
                continue
            for position, call in enumerate(calls):
                if isinstance(call, dict) and (key == "message" or "id" in call):
                    call["id"] = openai_tool_call_id(call.get("id"), position)
    return choices


def parse_tool_arguments(arguments: Any) -> dict[str, Any]:
    """An OpenAI `function.arguments` JSON string as the object Anthropic's `input` must be.

    Empty -> {}. Text that is not a JSON object (a model's truncated call, a client's garbage) is kept under
    `raw_arguments` rather than dropped, so neither the request nor the information is lost."""
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    if isinstance(arguments, str):
        try:
            parsed = orjson.loads(arguments)
        except ValueError:
            return {"raw_arguments": arguments}
        return parsed if isinstance(parsed, dict) else {"raw_arguments": arguments}
    return {"raw_arguments": arguments}


def anthropic_to_openai_completion(
    body: dict[str, Any], *, model: str, completion_id: str, created: int | None = None
) -> dict[str, Any]:
    """An Anthropic Messages response as an OpenAI chat.completion (api.md, choices construction (2)).

    Text blocks are concatenated (content null when there is none); tool_use blocks become tool_calls with
    the input as a JSON string; thinking text is exposed as `reasoning_content` (the field OpenAI-compatible
    reasoning servers use). finish_reason follows stop_reason, which is more precise than the original's
    "tool_calls if any tool call else stop" (a max_tokens stop is reported as `length`)."""
    texts: list[str] = []
    thinking: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    content = body.get("content")
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            thinking.append(block["thinking"])
        elif kind == "tool_use":
            arguments = block.get("input")
            tool_calls.append(
                {
                    "id": openai_tool_call_id(block.get("id"), len(tool_calls)),
                    "type": "function",
                    "function": {
                        "name": block.get("name") if isinstance(block.get("name"), str) else "",
                        "arguments": orjson.dumps(arguments).decode() if arguments is not None else "{}",
                    },
                }
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    if tool_calls:
        message["tool_calls"] = tool_calls
    completion: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish_reason_for(body.get("stop_reason"), bool(tool_calls)),
            }
        ],
    }
    usage = body.get("usage")
    if isinstance(usage, dict):
        prompt, completion_tokens = token_count(usage.get("input_tokens")), token_count(usage.get("output_tokens"))
        completion["usage"] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
        }
    return completion


def _first_choice(body: dict[str, Any]) -> dict[str, Any]:
    choices = body.get("choices")
    if not isinstance(choices, list):
        return {}
    candidates = [c for c in choices if isinstance(c, dict)]
    return next((c for c in candidates if c.get("index", 0) == 0), candidates[0] if candidates else {})


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: only text parts carry text
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def openai_to_anthropic_message(body: dict[str, Any], *, model: str, message_id: str) -> dict[str, Any]:
    """An OpenAI chat.completion as an Anthropic Messages response (choice 0 only: Anthropic has no `n`).

    Content (or, when there is none, the refusal text) becomes one text block; tool_calls become tool_use
    blocks with the arguments parsed into `input`. Reasoning text is not returned: an Anthropic thinking
    block needs a provider signature, and a client that sends an unsigned one back would be rejected."""
    choice = _first_choice(body)
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    blocks: list[dict[str, Any]] = []
    text = _text_of(message.get("content")) or _text_of(message.get("refusal"))
    if text:
        blocks.append({"type": "text", "text": text})
    calls = message.get("tool_calls")
    tool_uses = 0
    for position, call in enumerate(calls if isinstance(calls, list) else ()):
        if not isinstance(call, dict):
            continue
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        call_id = call.get("id")
        blocks.append(
            {
                "type": "tool_use",
                "id": call_id if isinstance(call_id, str) and call_id else f"call_{position}",
                "name": function.get("name") if isinstance(function.get("name"), str) else "",
                "input": parse_tool_arguments(function.get("arguments")),
            }
        )
        tool_uses += 1
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": blocks,
        "stop_reason": stop_reason_for(choice.get("finish_reason"), tool_uses > 0),
        "stop_sequence": None,
        "usage": {
            "input_tokens": token_count(usage.get("prompt_tokens")) or token_count(usage.get("input_tokens")),
            "output_tokens": token_count(usage.get("completion_tokens")) or token_count(usage.get("output_tokens")),
        },
    }
