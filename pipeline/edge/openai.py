"""OpenAI-compatible wire format: POST /v1/chat/completions (and the chunk stream /v1/chat also uses)."""

from __future__ import annotations

import time
from typing import Annotated, Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapters.anthropic_format import anthropic_to_openai_completion, normalize_tool_call_ids, openai_tool_call_id
from pipeline.context import Candidate, Policy, RequestContext
from pipeline.edge.codec import SseWriter
from pipeline.edge.wire import MessageIn, PolicyIn, Strict, plain_messages, plain_object, policy_from, to_messages
from pipeline.errors import InvalidRequest, TokenHubError, invalid_request
from pipeline.input_limits import check_message_count
from pipeline.modes import model_hint
from pipeline.types import ChatRequest, StreamDelta

__all__ = [
    "FORWARDED",
    "CompletionsBody",
    "OpenAICodec",
    "OpenAIErrorBody",
    "OpenAIStreamSink",
    "StreamOptions",
    "completion_body",
    "openai_error",
    "plain_request",
    "validated_request",
]

# Values of `model` that mean "TokenHub chooses".

# Forwarded to the provider as given (the adapter maps or drops what its provider does not support).
FORWARDED = (
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "n",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "user",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "reasoning_effort",
)

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class StreamOptions(Strict):
    include_usage: bool = False


class CompletionsBody(Strict):
    model: str = ""
    messages: list[MessageIn]
    stream: bool = False
    stream_options: StreamOptions | None = None
    tokenhub: PolicyIn | None = None  # TokenHub's routing policy, in the body instead of directives
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    stop: str | list[str] | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    seed: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    reasoning_effort: str | None = None


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str
    request_id: str


class OpenAIErrorBody(BaseModel):
    """What `openai_error` returns."""

    model_config = ConfigDict(extra="forbid")
    error: OpenAIErrorDetail


class OpenAICodec:
    endpoint = "chat_completions"
    scope = "chat"
    strict_model = True
    summary = "OpenAI-compatible chat completion (the openai SDKs' format); stream: true for SSE"
    body_model = CompletionsBody
    error_model = OpenAIErrorBody
    streams = True

    def decode(self, raw: bytes, *, max_messages: int) -> tuple[ChatRequest, Policy]:
        check_message_count(raw, max_messages, ("messages",))
        if (plain := plain_request(raw, max_messages)) is not None:
            return plain, Policy()
        return validated_request(raw, max_messages)

    def encode(self, ctx: RequestContext) -> bytes:
        return orjson.dumps(completion_body(ctx))

    def error_body(self, error: TokenHubError, request_id: str) -> dict[str, Any]:
        return openai_error(error, request_id)

    def stream_sink(self, request: web.Request, ctx: RequestContext) -> OpenAIStreamSink:
        return OpenAIStreamSink(request, ctx.request_id, include_usage=ctx.request.stream_usage)


def validated_request(raw: bytes, max_messages: int) -> tuple[ChatRequest, Policy]:
    """Any body, validated by the models (CompletionsBody): the definition of what the endpoint accepts."""
    try:
        body = CompletionsBody.model_validate_json(raw)
    except ValidationError as exc:
        raise invalid_request(exc) from None
    if body.stream and (body.n or 1) > 1:
        raise InvalidRequest("n > 1 cannot be streamed; send stream=false or n=1", field="n")
    messages = to_messages(body.messages, max_messages=max_messages, field="messages")
    given = body.model_fields_set  # the usual body names two or three of FORWARDED: no getattr for the rest
    parameters = {name: value for name in FORWARDED if name in given and (value := getattr(body, name)) is not None}
    request = ChatRequest(
        messages=messages,
        model_hint=model_hint(body.model),
        parameters=parameters,
        stream=body.stream,
    )
    if body.stream_options and body.stream_options.include_usage:
        request.stream_usage = True
    return request, policy_from(body.tokenhub)


# The body most clients send: text messages of a role and a content, and at most these fields of CompletionsBody.
_PLAIN_FIELDS = frozenset({"model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens"})
_OTHER_FIELDS = frozenset(CompletionsBody.model_fields) - _PLAIN_FIELDS


def plain_request(raw: bytes, max_messages: int) -> ChatRequest | None:
    """The request of a plain body, decoded without the pydantic models; None for any other body, which
    `decode` then validates with them. It accepts only what CompletionsBody accepts (strictly typed: no
    coercion to make) and builds the same request, so the models stay the definition (the differential test
    in tests/test_openai_codec.py). Worth it on the first token: validating with pydantic-core costs ~6 µs warm
    but ~80 when a request finds its code cold after the server idled, this ~2 and ~14 (docs/benchmark.md)."""
    if (body := plain_object(raw, _OTHER_FIELDS)) is None:
        return None
    model, stream = body.get("model", ""), body.get("stream", False)
    if type(model) is not str or type(stream) is not bool:
        return None
    if (messages := plain_messages(body.get("messages"), max_messages)) is None:
        return None
    parameters = {}
    for name in ("max_tokens", "max_completion_tokens"):  # FORWARDED's order
        value = body.get(name)
        if value is not None:
            if type(value) is not int or value < 1:
                return None
            parameters[name] = value
    usage = False
    if (options := body.get("stream_options")) is not None:
        if type(options) is not dict:  # include_usage is StreamOptions' one field
            return None
        usage = options.get("include_usage", False)
        if type(usage) is not bool:
            return None
    request = ChatRequest(messages, model_hint(model), parameters=parameters, stream=stream)
    request.stream_usage = usage
    return request


def openai_error(error: TokenHubError, request_id: str) -> dict[str, Any]:
    """OpenAI's error shape (the SDKs read error.message and error.type), plus the request id."""
    return {
        "error": {
            "message": error.message,
            "type": _ERROR_TYPES.get(error.status, "server_error"),
            "param": error.field,
            "code": error.type,
            "request_id": request_id,
        }
    }


def completion_body(ctx: RequestContext) -> dict[str, Any]:
    """The provider's answer as a chat.completion whose `model` is the model that actually answered."""
    result, served = ctx.result, ctx.served_by
    assert result is not None and served is not None
    completion_id = f"chatcmpl-{ctx.request_id}"
    if result.format == "anthropic":
        return anthropic_to_openai_completion(result.body, model=served.model.id, completion_id=completion_id)
    body = dict(result.body)
    body["id"] = completion_id
    body["object"] = "chat.completion"
    body["model"] = served.model.id
    body.setdefault("created", int(time.time()))
    choices = body.get("choices")
    body["choices"] = normalize_tool_call_ids(choices) if isinstance(choices, list) else []
    return body


class OpenAIStreamSink:
    """Normalized deltas as `chat.completion.chunk` events, ended by `data: [DONE]`; a failure after the
    stream opened ends it with `data: {"error": ...}` and no [DONE] (the openai SDKs raise APIError)."""

    def __init__(self, request: web.Request, request_id: str, *, include_usage: bool) -> None:
        self._writer = SseWriter(request)
        self._request_id = request_id
        self._include_usage = include_usage
        self._prefix = b""
        self._role = b""  # the opening role chunk: sent with the first delta, so the first token is one write
        self._opening_for = ""  # the model id the prefix and role chunk name

    @property
    def response(self) -> web.StreamResponse:
        return self._writer.response

    @property
    def opened(self) -> bool:
        return self._writer.opened

    def expect(self, ctx: RequestContext, candidate: Candidate) -> None:
        self._render_opening(candidate.model.id)
        self._writer.expect(ctx, candidate)

    async def open(self, ctx: RequestContext) -> None:
        served = ctx.served_by
        assert served is not None
        if self._opening_for != served.model.id:
            self._render_opening(served.model.id)
        await self._writer.start(ctx)

    def _render_opening(self, model_id: str) -> None:
        head = orjson.dumps(
            {
                "id": f"chatcmpl-{self._request_id}",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model_id,
            }
        )
        self._prefix = b"data: " + head[:-1] + b',"choices":['  # every chunk shares this head
        self._role = self._chunk({"role": "assistant", "content": ""}, None)
        self._opening_for = model_id

    async def send(self, delta: StreamDelta) -> None:
        body: dict[str, Any] = {}
        if delta.content:
            body["content"] = delta.content
        if delta.reasoning:
            body["reasoning_content"] = delta.reasoning
        if delta.tool_calls:
            body["tool_calls"] = [_with_openai_id(call) for call in delta.tool_calls]
        if body or delta.finish_reason:
            await self._writer.write(self._unsent() + self._chunk(body, delta.finish_reason))

    async def finish(self, ctx: RequestContext) -> None:
        tail = b""
        usage = ctx.result.usage if ctx.result else None
        if self._include_usage and usage is not None:
            numbers = {
                "prompt_tokens": usage.input_tokens,
                "completion_tokens": usage.output_tokens,
                "total_tokens": usage.input_tokens + usage.output_tokens,
            }
            tail = self._prefix + b'],"usage":' + orjson.dumps(numbers) + b"}\n\n"
        await self._writer.end(self._unsent() + tail + b"data: [DONE]\n\n")

    async def fail(self, error: TokenHubError) -> None:
        body = openai_error(error, self._request_id)
        await self._writer.end(self._unsent() + b"data: " + orjson.dumps(body) + b"\n\n", complete=False)

    def _unsent(self) -> bytes:
        role, self._role = self._role, b""
        return role

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None) -> bytes:
        choice = orjson.dumps({"index": 0, "delta": delta, "finish_reason": finish_reason})
        return self._prefix + choice + b"]}\n\n"


def _with_openai_id(call: Any) -> Any:
    """A streamed tool call's first delta carries its id: make it OpenAI-style (continuations carry none)."""
    if isinstance(call, dict) and "id" in call:
        return {**call, "id": openai_tool_call_id(call["id"], call.get("index", 0))}
    return call
