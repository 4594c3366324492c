"""Anthropic-compatible wire format: POST /v1/messages, decoded into the normalized (OpenAI-vocabulary)
ChatRequest, so any provider can answer; answers, errors and streams go back in Anthropic's shapes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapters.anthropic_format import openai_to_anthropic_message, stop_reason_for
from pipeline.context import Candidate, Policy, RequestContext
from pipeline.edge.codec import SseWriter
from pipeline.edge.wire import PolicyIn, Strict, plain_object, policy_from
from pipeline.errors import InvalidRequest, TokenHubError, invalid_request
from pipeline.input_limits import check_message_count
from pipeline.media import document_part, image_part
from pipeline.modes import model_hint
from pipeline.types import ChatRequest, MediaPart, Message, StreamDelta

__all__ = [
    "AnthropicCodec",
    "AnthropicErrorBody",
    "AnthropicStreamSink",
    "anthropic_error",
    "decode_messages",
    "plain_messages_request",
    "validated_messages",
]

# Anthropic's error type for each status (what its SDKs and clients switch on).
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
# Request blocks TokenHub cannot carry to every provider: refused rather than silently dropped.
_UNSUPPORTED_BLOCKS = {
    "image": "image blocks are accepted in user turns only (not in system text or tool results)",
    "document": "document blocks are accepted in user turns only (not in system text or tool results)",
    "search_result": "search_result blocks are not supported",
}
_MEDIA_BLOCKS = frozenset({"image", "document"})
# Replayed reasoning: it needs the provider's signature and means nothing to another provider.
_DROPPED_BLOCKS = frozenset({"thinking", "redacted_thinking"})


class MessageIn(Strict):
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class ToolIn(Strict):
    name: Annotated[str, Field(min_length=1, max_length=128)]
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None  # "custom" or absent; server tools (web_search_..., bash_...) are refused


class ToolChoiceIn(Strict):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class MetadataIn(Strict):
    user_id: str | None = None


class MessagesBody(Strict):
    model: str = ""
    messages: list[MessageIn]
    max_tokens: Annotated[int, Field(ge=1)] | None = None  # Anthropic requires it; TokenHub's adapters default it
    system: str | list[dict[str, Any]] | None = None
    stop_sequences: list[str] | None = None
    temperature: Annotated[float, Field(ge=0, le=1)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=1)] | None = None
    tools: list[ToolIn] | None = None
    tool_choice: ToolChoiceIn | None = None
    metadata: MetadataIn | None = None
    thinking: dict[str, Any] | None = None
    stream: bool = False
    tokenhub: PolicyIn | None = None  # TokenHub's routing policy, in the body instead of directives


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicErrorBody(BaseModel):
    """What `anthropic_error` returns."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["error"]
    error: AnthropicErrorDetail
    request_id: str


class AnthropicCodec:
    endpoint = "messages"
    scope = "chat"
    strict_model = True  # an unknown model is a 404 not_found_error, as Anthropic answers
    summary = "Anthropic-compatible messages (the anthropic SDKs' format); stream: true for SSE"
    body_model = MessagesBody
    error_model = AnthropicErrorBody
    streams = True

    def decode(self, raw: bytes, *, max_messages: int) -> tuple[ChatRequest, Policy]:
        return decode_messages(raw, max_messages=max_messages)

    def encode(self, ctx: RequestContext) -> bytes:
        return orjson.dumps(message_body(ctx))

    def error_body(self, error: TokenHubError, request_id: str) -> dict[str, Any]:
        return anthropic_error(error, request_id)

    def stream_sink(self, request: web.Request, ctx: RequestContext) -> AnthropicStreamSink:
        return AnthropicStreamSink(request, ctx.request_id)


# ---- decode ----------------------------------------------------------------------------------------------


def decode_messages(raw: bytes, *, max_messages: int) -> tuple[ChatRequest, Policy]:
    check_message_count(raw, max_messages, ("messages",))
    if (plain := plain_messages_request(raw, max_messages)) is not None:
        return plain, Policy()
    return validated_messages(raw, max_messages)


def validated_messages(raw: bytes, max_messages: int) -> tuple[ChatRequest, Policy]:
    """Any body, validated by the models (MessagesBody): the definition of what the endpoint accepts."""
    try:
        body = MessagesBody.model_validate_json(raw)
    except ValidationError as exc:
        raise invalid_request(exc) from None
    if not body.messages:
        raise InvalidRequest("messages: at least one message is required", field="messages")
    if len(body.messages) > max_messages:
        raise InvalidRequest(f"too many messages: {len(body.messages)} > {max_messages}", field="messages")
    messages: list[Message] = []
    if system := _system_text(body.system):
        messages.append(Message("system", system))
    for index, message in enumerate(body.messages):
        messages.extend(_to_messages(message, f"messages.{index}"))
    request = ChatRequest(
        messages=messages,
        model_hint=model_hint(body.model),
        parameters=_parameters(body),
        stream=body.stream,
    )
    return request, policy_from(body.tokenhub)


# The body most clients send: turns of text, a system prompt as one string, and at most these fields.
_OTHER_FIELDS = frozenset(MessagesBody.model_fields) - {"model", "messages", "max_tokens", "system", "stream"}
_ROLES = frozenset({"user", "assistant"})


def plain_messages_request(raw: bytes, max_messages: int) -> ChatRequest | None:
    """The request of a plain body, decoded without the pydantic models; None for any other body, which
    `decode_messages` then validates with them. As the OpenAI codec's `plain_request`, it accepts only what
    MessagesBody accepts, strictly typed, and builds the same request (the differential test in
    tests/test_messages_endpoint_codec.py), so the models stay the definition."""
    if (body := plain_object(raw, _OTHER_FIELDS)) is None:
        return None
    model, items, stream = body.get("model", ""), body.get("messages"), body.get("stream", False)
    system, max_tokens = body.get("system"), body.get("max_tokens")
    if type(model) is not str or type(stream) is not bool or (system is not None and type(system) is not str):
        return None
    if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 1):
        return None
    if type(items) is not list or not 0 < len(items) <= max_messages:
        return None
    messages = [Message("system", system)] if system else []
    for item in items:  # MessageIn has no other field: the others are ignored, as the model ignores them
        if type(item) is not dict:
            return None
        role, content = item.get("role"), item.get("content")
        if type(role) is not str or role not in _ROLES or type(content) is not str:
            return None
        messages.append(Message(role, content))
    parameters = {} if max_tokens is None else {"max_tokens": max_tokens}
    return ChatRequest(messages, model_hint(model), parameters=parameters, stream=stream)


def _system_text(system: str | list[dict[str, Any]] | None) -> str:
    if system is None or isinstance(system, str):
        return system or ""
    return "\n".join(_text_blocks(system, "system"))


def _text_blocks(blocks: list[dict[str, Any]], field: str) -> list[str]:
    """The texts of a list that may hold only text blocks (system, tool_result content)."""
    texts: list[str] = []
    for index, block in enumerate(blocks):
        kind = block.get("type")
        if kind != "text":
            message = _UNSUPPORTED_BLOCKS.get(str(kind), f"blocks of type {kind!r} are not supported here")
            raise InvalidRequest(message, field=f"{field}.{index}")
        texts.append(_string(block, "text", f"{field}.{index}"))
    return texts


def _string(block: dict[str, Any], key: str, field: str) -> str:
    value = block.get(key)
    if not isinstance(value, str):
        raise InvalidRequest(f"{field}.{key}: must be a string", field=f"{field}.{key}")
    return value


def _to_messages(message: MessageIn, field: str) -> list[Message]:
    """One Anthropic turn as normalized messages: an assistant turn's tool_use blocks become tool_calls; a user
    turn's tool_result blocks become `tool` messages, placed before the turn's text (they answer the calls
    of the previous turn, which OpenAI-style providers require to come right after it)."""
    if isinstance(message.content, str):
        return [Message(message.role, message.content)]
    texts: list[str] = []
    parts: list[str | MediaPart] = []  # texts and media in order, for a turn that holds media
    tool_calls: list[dict[str, Any]] = []
    results: list[Message] = []
    for index, block in enumerate(message.content):
        where = f"{field}.content.{index}"
        kind = block.get("type")
        if kind == "text":
            texts.append(_string(block, "text", where))
            parts.append(texts[-1])
        elif kind in _MEDIA_BLOCKS and message.role == "user":
            parts.append(_media(block, where))
        elif kind == "tool_use" and message.role == "assistant":
            tool_calls.append(_tool_call(block, where))
        elif kind == "tool_result" and message.role == "user":
            results.append(_tool_message(block, where))
        elif kind in _DROPPED_BLOCKS:
            continue
        elif kind in _UNSUPPORTED_BLOCKS:
            raise InvalidRequest(_UNSUPPORTED_BLOCKS[kind], field=where)
        else:
            raise InvalidRequest(f"blocks of type {kind!r} are not supported in {message.role} turns", field=where)
    text = "\n".join(texts)
    if message.role == "assistant":
        return [Message("assistant", text, tool_calls or None)]
    if len(parts) > len(texts):  # media: the parts keep the order of texts and media
        return [*results, Message("user", text, parts=tuple(parts))]
    return [*results, Message("user", text)] if text or not results else results


def _media(block: dict[str, Any], field: str) -> MediaPart:
    """An image or document block (base64 or URL source) as a MediaPart."""
    source = block.get("source")
    if not isinstance(source, dict):
        raise InvalidRequest(f"{field}.source: must be an object", field=f"{field}.source")
    kind, where = block["type"], f"{field}.source"
    source_type = source.get("type")
    if source_type == "url":
        url, data, media_type = _string(source, "url", where), "", ""
    elif source_type == "base64":
        url, data, media_type = "", _string(source, "data", where), _string(source, "media_type", where)
    else:
        raise InvalidRequest(f"{kind} source type {source_type!r} is not supported (base64 or url)", field=where)
    if kind == "image":
        return image_part(where, url=url, data=data, media_type=media_type)
    title = block.get("title") if isinstance(block.get("title"), str) else ""
    return document_part(where, url=url, data=data, media_type=media_type, title=title)


def _tool_call(block: dict[str, Any], field: str) -> dict[str, Any]:
    call_input = block.get("input", {})
    if not isinstance(call_input, dict):
        raise InvalidRequest(f"{field}.input: must be an object", field=f"{field}.input")
    return {
        "id": _string(block, "id", field),
        "type": "function",
        "function": {"name": _string(block, "name", field), "arguments": orjson.dumps(call_input).decode()},
    }


def _tool_message(block: dict[str, Any], field: str) -> Message:
    content = block.get("content", "")
    if isinstance(content, list):
        text = "\n".join(_text_blocks(content, f"{field}.content"))
    elif isinstance(content, str):
        text = content
    else:
        raise InvalidRequest(f"{field}.content: must be a string or a list of blocks", field=f"{field}.content")
    if block.get("is_error") is True:
        text = f"Error: {text}"  # OpenAI-style tool messages have no error flag: say it in the text
    return Message("tool", text, tool_call_id=_string(block, "tool_use_id", field))


def _parameters(body: MessagesBody) -> dict[str, Any]:
    """Anthropic fields in OpenAI vocabulary (what the adapters expect); each adapter maps them back or drops
    what its provider lacks (top_k and thinking reach Anthropic, not OpenAI)."""
    params: dict[str, Any] = {}
    for name in ("max_tokens", "temperature", "top_p", "top_k", "thinking"):
        if (value := getattr(body, name)) is not None:
            params[name] = value
    if body.stop_sequences:
        params["stop"] = body.stop_sequences
    if body.metadata and body.metadata.user_id:
        params["user"] = body.metadata.user_id
    if body.tools:
        params["tools"] = [_function_tool(tool, f"tools.{i}") for i, tool in enumerate(body.tools)]
    choice = body.tool_choice
    if choice is not None:
        if choice.type == "tool":
            if not choice.name:
                raise InvalidRequest("tool_choice.name: required when type is 'tool'", field="tool_choice.name")
            params["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        else:
            params["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
        if choice.disable_parallel_tool_use:
            params["parallel_tool_calls"] = False
    return params


def _function_tool(tool: ToolIn, field: str) -> dict[str, Any]:
    if tool.type not in (None, "custom"):
        raise InvalidRequest(f"server tools ({tool.type}) are not supported; define a custom tool", field=field)
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema or {"type": "object"}}
    if tool.description is not None:
        function["description"] = tool.description
    return {"type": "function", "function": function}


# ---- encode ----------------------------------------------------------------------------------------------


def message_id(request_id: str) -> str:
    return f"msg_{request_id}"


def message_body(ctx: RequestContext) -> dict[str, Any]:
    """The answer as an Anthropic Message whose `model` is the model that actually answered."""
    result, served = ctx.result, ctx.served_by
    assert result is not None and served is not None
    if result.format != "anthropic":
        return openai_to_anthropic_message(result.body, model=served.model.id, message_id=message_id(ctx.request_id))
    body = {"type": "message", "role": "assistant", **result.body}
    body["id"] = message_id(ctx.request_id)
    body["model"] = served.model.id
    return body


def anthropic_error(error: TokenHubError, request_id: str) -> dict[str, Any]:
    """Anthropic's error shape (its SDKs raise the exception class for the status); 5xx other than 503 is
    `api_error`."""
    kind = _ERROR_TYPES.get(error.status) or ("api_error" if error.status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": error.message}, "request_id": request_id}


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


_TEXT_START = {"type": "text", "text": ""}


class AnthropicStreamSink:
    """Normalized deltas as Anthropic's event sequence: message_start, then content_block_start / _delta /
    _stop per text or tool_use block, message_delta (stop_reason, usage) and message_stop. A failure after the
    stream opened ends it with `event: error` and no message_stop (the anthropic SDKs raise).

    message_start is written with the first token rather than at open, so it can carry the input tokens an
    Anthropic upstream reports just before; otherwise it carries 0 and message_delta has the final counts.
    Reasoning deltas are not relayed: an Anthropic thinking block needs a signature TokenHub cannot make."""

    def __init__(self, request: web.Request, request_id: str) -> None:
        self._writer = SseWriter(request)
        self._request_id = request_id
        self._model = ""
        self._started = False
        self._input_tokens = 0
        self._block = -1  # index of the open content block, -1 = none
        self._block_kind = ""
        self._tool_blocks: dict[int, int] = {}  # tool ordinal -> content block index
        self._finish: str | None = None

    @property
    def response(self) -> web.StreamResponse:
        return self._writer.response

    @property
    def opened(self) -> bool:
        return self._writer.opened

    def expect(self, ctx: RequestContext, candidate: Candidate) -> None:
        self._writer.expect(ctx, candidate)

    async def open(self, ctx: RequestContext) -> None:
        served = ctx.served_by
        assert served is not None
        self._model = served.model.id
        await self._writer.start(ctx)

    async def send(self, delta: StreamDelta) -> None:
        if delta.usage is not None and delta.usage.input_tokens:
            self._input_tokens = delta.usage.input_tokens
        if delta.finish_reason:
            self._finish = delta.finish_reason
        if not (delta.content or delta.tool_calls):
            return
        out = [] if self._started else [self._message_start()]
        if delta.content:
            if self._block_kind != "text":
                out += self._start_block("text", _TEXT_START)
            text_delta = {"type": "text_delta", "text": delta.content}
            out.append(_event("content_block_delta", _block_delta(self._block, text_delta)))
        for call in delta.tool_calls or ():
            if isinstance(call, dict):
                out += self._tool_events(call)
        await self._writer.write(b"".join(out))

    async def finish(self, ctx: RequestContext) -> None:
        usage = ctx.result.usage if ctx.result else None
        out = [] if self._started else [self._message_start()]
        if self._block >= 0:
            out.append(_event("content_block_stop", {"type": "content_block_stop", "index": self._block}))
        counts = {"output_tokens": usage.output_tokens if usage else 0}
        if usage and usage.input_tokens:
            counts["input_tokens"] = usage.input_tokens
        stop_reason = stop_reason_for(self._finish, bool(self._tool_blocks))
        delta = {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None}}
        out.append(_event("message_delta", {**delta, "usage": counts}))
        out.append(_event("message_stop", {"type": "message_stop"}))
        await self._writer.end(b"".join(out))

    async def fail(self, error: TokenHubError) -> None:
        await self._writer.end(_event("error", anthropic_error(error, self._request_id)), complete=False)

    def _message_start(self) -> bytes:
        self._started = True
        message = {
            "id": message_id(self._request_id),
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self._input_tokens, "output_tokens": 0},
        }
        return _event("message_start", {"type": "message_start", "message": message})

    def _start_block(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        out = []
        if self._block >= 0:
            out.append(_event("content_block_stop", {"type": "content_block_stop", "index": self._block}))
        self._block += 1
        self._block_kind = kind
        start = {"type": "content_block_start", "index": self._block, "content_block": block}
        out.append(_event("content_block_start", start))
        return out

    def _tool_events(self, call: dict[str, Any]) -> list[bytes]:
        ordinal = call.get("index", 0)
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        out: list[bytes] = []
        if ordinal not in self._tool_blocks:
            call_id = call.get("id")
            block = {
                "type": "tool_use",
                "id": call_id if isinstance(call_id, str) and call_id else f"call_{ordinal}",
                "name": function.get("name") or "",
                "input": {},
            }
            out += self._start_block("tool_use", block)
            self._tool_blocks[ordinal] = self._block
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            # Interleaved parallel calls keep their own block index (clients accumulate by index).
            json_delta = {"type": "input_json_delta", "partial_json": arguments}
            out.append(_event("content_block_delta", _block_delta(self._tool_blocks[ordinal], json_delta)))
        return out


def _block_delta(index: int, delta: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": delta}
