"""The TokenHub native wire format (POST /v1/chat): decode into a ChatRequest and Policy, encode the result."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.context import Policy, RequestContext
from pipeline.errors import InvalidRequest
from pipeline.settings import ROUTING_MODES
from pipeline.types import ChatRequest, Message

Mode = Literal["cheap", "normal", "high_confidence", "planning", "adversarial", "vote", "refine"]
assert set(Mode.__args__) == set(ROUTING_MODES)  # type: ignore[attr-defined]


class _Strict(BaseModel):
    # Wrong types are errors ("5" is not a number); unknown fields are ignored, as the original does.
    model_config = ConfigDict(strict=True, extra="ignore")


class ContentPart(_Strict):
    type: str
    text: str | None = None


class MessageIn(_Strict):
    role: Annotated[str, Field(min_length=1, max_length=64)]
    content: Any = None
    tool_calls: list[Any] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _content(cls, value: Any) -> str | list[ContentPart] | None:
        # Checked by hand so the error names the field, not pydantic's union branches.
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list):
            return [ContentPart.model_validate(part) for part in value]
        raise ValueError("must be a string, a list of content parts, or null")


class RequestIn(_Strict):
    id: str = ""
    messages: list[MessageIn]
    model_hint: str = ""
    estimated_input_tokens: Annotated[int, Field(ge=0)] = 0
    meta: dict[str, Any] | None = None
    output_schema: Any = None
    parameters: dict[str, Any] | None = None
    stream: bool = False


class PolicyIn(_Strict):
    mode: Mode | None = None
    max_budget_usd: Annotated[float, Field(ge=0, le=100)] = 0.0
    max_latency_ms: Annotated[int, Field(ge=0, le=300_000)] = 0
    min_weight: Annotated[int, Field(ge=0, le=10)] = 0


class ChatBody(_Strict):
    request: RequestIn
    policy: PolicyIn | None = None
    output_format: dict[str, Any] | None = None
    capabilities: Any = None


def decode_chat(raw: bytes, *, max_messages: int) -> tuple[ChatRequest, Policy]:
    try:
        body = ChatBody.model_validate_json(raw)
    except ValidationError as exc:
        raise _invalid(exc) from None
    req = body.request
    if not req.messages:
        raise InvalidRequest("messages must be a non-empty list", field="request.messages")
    if len(req.messages) > max_messages:
        raise InvalidRequest(f"too many messages: {len(req.messages)} > {max_messages}", field="request.messages")
    if req.stream:
        raise InvalidRequest(
            "streaming is not available on this server version; send stream=false", field="request.stream"
        )
    messages = [
        Message(m.role, _text(m.content), m.tool_calls, m.tool_call_id or None, m.name or None) for m in req.messages
    ]
    request = ChatRequest(
        messages=messages,
        model_hint=req.model_hint.strip(),
        estimated_input_tokens=req.estimated_input_tokens,
        parameters=dict(req.parameters or {}),
        output_schema=req.output_schema,
    )
    p = body.policy
    policy = Policy(p.mode or "", p.max_budget_usd, p.max_latency_ms, p.min_weight) if p else Policy()
    return request, policy


def _text(content: str | list[ContentPart] | None) -> str:
    """Array content keeps only text parts, concatenated (the original's normalisation)."""
    if isinstance(content, str):
        return content
    if not content:
        return ""
    return "".join(part.text or "" for part in content if part.type == "text")


def _invalid(exc: ValidationError) -> InvalidRequest:
    err = exc.errors(include_url=False)[0]
    if err["type"] == "json_invalid":
        return InvalidRequest(f"malformed JSON: {err['ctx'].get('error', 'invalid')}", field="body")
    if err["type"] == "model_type" and not err["loc"]:
        return InvalidRequest("the body must be a JSON object", field="body")
    field = ".".join(str(part) for part in err["loc"]) or "body"
    return InvalidRequest(f"{field}: {err['msg']}", field=field)


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
