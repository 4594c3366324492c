"""The TokenHub native wire format (POST /v1/chat): decode into a ChatRequest and Policy, encode the result."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from aiohttp import web
from pydantic import Field, ValidationError

from pipeline.context import Policy, RequestContext
from pipeline.edge.openai import OpenAIStreamSink
from pipeline.edge.wire import MessageIn, PolicyIn, Strict, plain_messages, plain_object, policy_from, to_messages
from pipeline.errors import TokenHubError, invalid_request
from pipeline.input_limits import check_message_count
from pipeline.modes import ROUTING_MODES
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
    "plain_chat",
    "validated_chat",
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
    if (plain := plain_chat(raw, max_messages)) is not None:
        return plain
    return validated_chat(raw, max_messages)


def validated_chat(raw: bytes, max_messages: int) -> tuple[ChatRequest, Policy]:
    """Any body, validated by the models (ChatBody): the definition of what the endpoint accepts."""
    try:
        body = ChatBody.model_validate_json(raw)
    except ValidationError as exc:
        raise invalid_request(exc) from None
    request = chat_request(body.request, max_messages=max_messages)
    request.output_format = _format(body.output_format)
    return request, policy_from(body.policy)


# The body most clients send: a request of text messages with at most these fields, and a policy.
_OTHER_BODY_FIELDS = frozenset(ChatBody.model_fields) - {"request", "policy"}
_OTHER_REQUEST_FIELDS = frozenset(RequestIn.model_fields) - {"messages", "model_hint", "parameters", "stream"}


def plain_chat(raw: bytes, max_messages: int) -> tuple[ChatRequest, Policy] | None:
    """The request and policy of a plain body, decoded without the pydantic models; None for any other
    body, which `decode_chat` then validates with them. Like the OpenAI codec's `plain_request`, it accepts
    only what ChatBody accepts, strictly typed, and builds the same (the differential test in
    tests/test_native_codec.py): the models stay the definition, and a request skips their cold cost."""
    if (body := plain_object(raw, _OTHER_BODY_FIELDS)) is None:
        return None
    req = body.get("request")
    if type(req) is not dict or not _OTHER_REQUEST_FIELDS.isdisjoint(req):
        return None
    hint, stream, parameters = req.get("model_hint", ""), req.get("stream", False), req.get("parameters")
    if type(hint) is not str or type(stream) is not bool or (parameters is not None and type(parameters) is not dict):
        return None
    if (messages := plain_messages(req.get("messages"), max_messages)) is None:
        return None
    if (policy := _plain_policy(body.get("policy"))) is None:
        return None
    return ChatRequest(messages, hint.strip(), parameters=parameters or {}, stream=stream), policy


def _plain_policy(value: Any) -> Policy | None:
    """PolicyIn's checks by hand: a known mode or none, and each bound in its range and strictly typed."""
    if value is None:
        return Policy()
    if type(value) is not dict:
        return None
    mode, budget = value.get("mode"), value.get("max_budget_usd", 0.0)
    latency, weight = value.get("max_latency_ms", 0), value.get("min_weight", 0)
    if mode is not None and (type(mode) is not str or mode not in ROUTING_MODES):
        return None
    if type(budget) not in (int, float) or not 0 <= budget <= 100:
        return None
    if type(latency) is not int or not 0 <= latency <= 300_000 or type(weight) is not int or not 0 <= weight <= 10:
        return None
    return Policy(mode or "", float(budget), latency, weight)


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
