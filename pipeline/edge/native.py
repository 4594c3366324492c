"""The TokenHub native wire format (POST /v1/chat): decode into a ChatRequest and Policy, encode the result."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from aiohttp import web
from pydantic import Field, ValidationError

from pipeline.context import Policy, RequestContext
from pipeline.edge.openai import OpenAIStreamSink
from pipeline.edge.wire import MessageIn, PolicyIn, Strict, to_messages
from pipeline.errors import TokenHubError, invalid_request
from pipeline.input_limits import check_message_count
from pipeline.openapi import ErrorBody
from pipeline.output_format import OutputFormat
from pipeline.output_schema import check_schema
from pipeline.types import ChatRequest

__all__ = [
    "ChatBody",
    "NativeCodec",
    "OutputFormatIn",
    "RequestIn",
    "chat_request",
    "decode_chat",
    "encode_chat",
    "policy_from",
]


class RequestIn(Strict):
    id: str = ""
    messages: list[MessageIn]
    model_hint: str = ""
    estimated_input_tokens: Annotated[int, Field(ge=0)] = 0
    meta: dict[str, Any] | None = None
    output_schema: Any = None
    parameters: dict[str, Any] | None = None
    stream: bool = False


class OutputFormatIn(Strict):
    type: Literal["", "json", "markdown", "text", "xml"] = ""
    max_tokens: Annotated[int, Field(ge=0)] = 0
    strip_think: bool = False


class ChatBody(Strict):
    request: RequestIn
    policy: PolicyIn | None = None
    output_format: OutputFormatIn | None = None
    capabilities: Any = None


class NativeCodec:
    endpoint = "chat"
    scope = "chat"
    strict_model = False  # model_hint is a preference: an unknown one is ignored and named in routing_reason
    summary = "TokenHub's native chat: policy in, routing decision and cost out; request.stream for SSE"
    body_model = ChatBody
    error_model = ErrorBody
    streams = True

    def decode(self, raw: bytes, *, max_messages: int) -> tuple[ChatRequest, Policy]:
        return decode_chat(raw, max_messages=max_messages)

    def encode(self, ctx: RequestContext) -> bytes:
        return encode_chat(ctx)

    def error_body(self, error: TokenHubError, request_id: str) -> dict[str, Any]:
        return error.body(request_id)

    def stream_sink(self, request: web.Request, ctx: RequestContext) -> OpenAIStreamSink:
        # The native stream is OpenAI's chunk stream whatever the upstream, with usage at the end.
        return OpenAIStreamSink(request, ctx.request_id, include_usage=True)


def decode_chat(raw: bytes, *, max_messages: int) -> tuple[ChatRequest, Policy]:
    check_message_count(raw, max_messages, ("request", "messages"))
    try:
        body = ChatBody.model_validate_json(raw)
    except ValidationError as exc:
        raise invalid_request(exc) from None
    request = chat_request(body.request, max_messages=max_messages)
    request.output_format = _format(body.output_format)
    return request, policy_from(body.policy)


def chat_request(req: RequestIn, *, max_messages: int) -> ChatRequest:
    """The normalized request of the `request` object /v1/chat and /v1/plan share."""
    return ChatRequest(
        messages=to_messages(req.messages, max_messages=max_messages, field="request.messages"),
        model_hint=req.model_hint.strip(),
        estimated_input_tokens=req.estimated_input_tokens,
        parameters=dict(req.parameters or {}),
        output_schema=None if req.output_schema is None else check_schema(req.output_schema, "request.output_schema"),
        stream=req.stream,
    )


def policy_from(p: PolicyIn | None) -> Policy:
    return Policy(p.mode or "", p.max_budget_usd, p.max_latency_ms, p.min_weight) if p else Policy()


def _format(value: OutputFormatIn | None) -> OutputFormat | None:
    if value is None:
        return None
    fmt = OutputFormat(value.type, value.max_tokens, value.strip_think)
    return fmt if fmt.active else None


def encode_chat(ctx: RequestContext) -> bytes:
    """The envelope as JSON bytes. The provider's body is spliced in as received (it was parsed, so it
    is a valid JSON object) instead of being encoded a second time."""
    result, served = ctx.result, ctx.served_by
    assert result is not None and served is not None
    head = orjson.dumps(
        {
            "negotiated_model": served.model.id,
            "estimated_cost_usd": ctx.cost_usd,
            "routing_reason": ctx.routing_reason or (ctx.decision.reason if ctx.decision else ""),
        }
    )
    # Anything unusual (a BOM, UTF-16, leading whitespace) is re-encoded rather than spliced.
    response = result.raw if result.raw[:1] == b"{" else orjson.dumps(result.body)
    return b"".join((head[:-1], b',"response":', response, b"}"))
