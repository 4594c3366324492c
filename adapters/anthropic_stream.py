"""Anthropic's Messages event stream read as normalized deltas (providers.md §8, the OpenAI-chunk table)."""

from __future__ import annotations

from typing import Any

import orjson

from adapters.anthropic_format import finish_reason_for, openai_tool_call_id
from adapters.errors import ProviderError, excerpt
from adapters.failures import FailureRules
from adapters.sse import SseEvent
from adapters.stream import malformed
from adapters.usage import token_count
from pipeline.types import ErrorClass, StreamDelta, Usage

__all__ = ["FAILURES", "AnthropicEventParser", "stream_error_class"]

_NOTHING: list[StreamDelta] = []
# Anthropic's words for a failure, in an HTTP answer and in an in-stream error event alike. 529 is its
# "overloaded": like a 429 it says "not now, try elsewhere", so it is rate_limited (health backs off,
# escalate moves on). The phrases say the input does not fit: another model with a larger window may take it.
FAILURES = FailureRules(
    overflow_phrases=("prompt is too long", "prompt_too_long", "exceed context limit"),
    rate_limited_statuses=frozenset({429, 529}),
)


def stream_error_class(error_type: str, message: str) -> ErrorClass:
    """An in-stream `error` event's class: overloaded / rate limit as for HTTP 529 / 429, a prompt too long as a
    context overflow; anything else (api_error, ...) is transient, like a 5xx."""
    if error_type in ("overloaded_error", "rate_limit_error"):
        return ErrorClass.RATE_LIMITED
    if FAILURES.overflows(message):
        return ErrorClass.CONTEXT_OVERFLOW
    return ErrorClass.TRANSIENT


def _block_index(payload: dict[str, Any], data: str) -> int | None:
    """A content block's index: an integer (or absent); anything else is garbage, not a dictionary key."""
    index = payload.get("index")
    if index is None or (isinstance(index, int) and not isinstance(index, bool)):
        return index
    raise malformed("content block index is not an integer", data)


class AnthropicEventParser:
    """One per stream. Tool-use blocks become OpenAI tool-call deltas indexed by tool ordinal (Anthropic's block
    index also counts text and thinking blocks); ping, content_block_stop, signatures and unknown events carry
    nothing for the client."""

    __slots__ = ("_no_arguments", "_tools", "done", "finished")

    def __init__(self) -> None:
        self.done = False
        self.finished = False
        self._tools: dict[Any, int] = {}  # content block index -> tool ordinal
        self._no_arguments: set[int] = set()  # tool ordinals that have not received argument text yet

    def feed(self, event: SseEvent) -> list[StreamDelta]:
        data = event.data
        try:
            payload = orjson.loads(data)
        except ValueError:
            raise malformed("not JSON", data) from None
        if not isinstance(payload, dict):
            raise malformed("not a JSON object", data)
        kind = payload.get("type") or event.event
        if kind == "content_block_delta":  # by far the most frequent: checked first
            return self._block_delta(payload, data)
        if kind == "message_start":
            message = payload.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            tokens_in = token_count(usage.get("input_tokens")) if isinstance(usage, dict) else 0
            # message_start's output_tokens is a placeholder; the real count comes with message_delta.
            return [StreamDelta(usage=Usage(tokens_in, 0))] if tokens_in else _NOTHING
        if kind == "content_block_start":
            return self._block_start(payload, data)
        if kind == "content_block_stop":
            return self._block_stop(payload, data)
        if kind == "message_delta":
            return self._message_delta(payload)
        if kind == "message_stop":
            self.done = True
            if self.finished:
                return _NOTHING
            self.finished = True  # a stop without a stop_reason still ends the answer: say so
            return [StreamDelta(finish_reason="stop")]
        if kind == "error":
            raise self._error(payload)
        return _NOTHING  # ping, and event types newer than this parser

    def _block_start(self, payload: dict[str, Any], data: str) -> list[StreamDelta]:
        block = payload.get("content_block")
        if not isinstance(block, dict):
            raise malformed("content_block_start without a content block", data)
        kind = block.get("type")
        if kind == "tool_use":
            ordinal = self._tools[_block_index(payload, data)] = len(self._tools)
            tool_input = block.get("input")
            # The input normally streams as input_json_delta; a start carrying it whole is relayed whole.
            arguments = orjson.dumps(tool_input).decode() if isinstance(tool_input, dict) and tool_input else ""
            if not arguments:
                self._no_arguments.add(ordinal)
            call = {
                "index": ordinal,
                "id": openai_tool_call_id(block.get("id"), ordinal),
                "type": "function",
                "function": {"name": block.get("name") or "", "arguments": arguments},
            }
            return [StreamDelta(tool_calls=[call])]
        if kind == "text" and isinstance(block.get("text"), str) and block["text"]:
            return [StreamDelta(content=block["text"])]
        if kind == "thinking" and isinstance(block.get("thinking"), str) and block["thinking"]:
            return [StreamDelta(reasoning=block["thinking"])]
        return _NOTHING

    def _block_delta(self, payload: dict[str, Any], data: str) -> list[StreamDelta]:
        delta = payload.get("delta")
        if not isinstance(delta, dict):
            raise malformed("content_block_delta without a delta", data)
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text")
            return [StreamDelta(content=text)] if isinstance(text, str) and text else _NOTHING
        if kind == "input_json_delta":
            ordinal = self._tools.get(_block_index(payload, data))
            if ordinal is None:
                raise malformed("input_json_delta for a block that is not a tool_use", data)
            partial = delta.get("partial_json")
            if not isinstance(partial, str) or not partial:
                return _NOTHING
            self._no_arguments.discard(ordinal)
            return [StreamDelta(tool_calls=[{"index": ordinal, "function": {"arguments": partial}}])]
        if kind == "thinking_delta":
            thinking = delta.get("thinking")
            return [StreamDelta(reasoning=thinking)] if isinstance(thinking, str) and thinking else _NOTHING
        return _NOTHING  # signature_delta, citations_delta

    def _block_stop(self, payload: dict[str, Any], data: str) -> list[StreamDelta]:
        ordinal = self._tools.get(_block_index(payload, data))
        if ordinal is None or ordinal not in self._no_arguments:
            return _NOTHING
        # A tool called without arguments streams no input_json_delta; OpenAI clients parse the arguments
        # string as JSON, and "" is not JSON.
        self._no_arguments.discard(ordinal)
        return [StreamDelta(tool_calls=[{"index": ordinal, "function": {"arguments": "{}"}}])]

    def _message_delta(self, payload: dict[str, Any]) -> list[StreamDelta]:
        delta = payload.get("delta")
        stop_reason = delta.get("stop_reason") if isinstance(delta, dict) else None
        usage = payload.get("usage")
        tokens = None
        if isinstance(usage, dict):
            # Final counts; input_tokens is present only in newer API versions (0 = keep message_start's).
            tokens_in, tokens_out = token_count(usage.get("input_tokens")), token_count(usage.get("output_tokens"))
            tokens = Usage(tokens_in, tokens_out) if tokens_in or tokens_out else None
        finish = finish_reason_for(stop_reason, bool(self._tools)) if stop_reason else None
        if finish:
            self.finished = True
        if finish is None and tokens is None:
            return _NOTHING
        return [StreamDelta(finish_reason=finish, usage=tokens)]

    @staticmethod
    def _error(payload: dict[str, Any]) -> ProviderError:
        error = payload.get("error")
        error = error if isinstance(error, dict) else {}
        error_type = str(error.get("type") or "error")
        message = str(error.get("message") or "")
        return ProviderError(
            stream_error_class(error_type, message),
            f"anthropic stream error: {error_type}: {excerpt(message)}",
        )
