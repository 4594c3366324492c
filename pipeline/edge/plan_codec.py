"""POST /v1/plan's wire format: the native request plus an `orchestration` object; the envelope lists steps."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import Field, ValidationError

from pipeline.context import PlanSpec, Policy, RequestContext
from pipeline.edge.native import RequestIn, chat_request
from pipeline.edge.wire import PolicyIn, Strict, policy_from
from pipeline.errors import InvalidRequest, invalid_request
from pipeline.input_limits import check_message_count
from pipeline.output_schema import check_schema
from pipeline.types import ChatRequest
from stages.plan_modes import envelope

__all__ = ["OrchestrationIn", "PlanBody", "decode_plan", "plan_envelope"]


class OrchestrationIn(Strict):
    mode: Literal["", "planning", "adversarial", "vote", "refine"] = ""
    iterations: Annotated[int, Field(ge=0, le=10)] = 0
    primary_min_weight: Annotated[int, Field(ge=0, le=10)] = 0
    review_min_weight: Annotated[int, Field(ge=0, le=10)] = 0
    primary_model_id: str = ""
    review_model_id: str = ""
    return_plan_only: bool = False
    output_schema: str | dict[str, Any] | None = None  # JSON text (the spec's form) or the object itself


class PlanBody(Strict):
    request: RequestIn
    orchestration: OrchestrationIn | None = None
    policy: PolicyIn | None = None  # budget and latency for the whole plan
    output_format: dict[str, Any] | None = None
    capabilities: Any = None
    # Start the plan and answer 202 with its id at once (durable orchestration: needs Temporal).
    run_async: bool = Field(False, alias="async")


def decode_plan(raw: bytes, *, max_messages: int) -> tuple[ChatRequest, Policy, PlanSpec, bool]:
    """The request, its policy, the orchestration, and whether the client asked for an asynchronous plan."""
    check_message_count(raw, max_messages, ("request", "messages"))
    try:
        body = PlanBody.model_validate_json(raw)
    except ValidationError as exc:
        raise invalid_request(exc) from None
    request = chat_request(body.request, max_messages=max_messages)
    o = body.orchestration or OrchestrationIn()
    plan = PlanSpec(
        mode=o.mode,
        iterations=o.iterations,
        primary_min_weight=o.primary_min_weight,
        review_min_weight=o.review_min_weight,
        primary_model_id=o.primary_model_id.strip(),
        review_model_id=o.review_model_id.strip(),
        return_plan_only=o.return_plan_only,
        output_schema=_schema(o.output_schema),
    )
    return request, policy_from(body.policy), plan, body.run_async


def _schema(value: str | dict[str, Any] | None) -> Any:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except ValueError:
            raise InvalidRequest(
                "invalid output_schema: must be valid JSON", field="orchestration.output_schema"
            ) from None
    return check_schema(value, "orchestration.output_schema")


def plan_envelope(ctx: RequestContext) -> dict[str, Any]:
    """The /v1/chat envelope, with the composite as `response`, plus every step and the total cost."""
    return envelope(ctx.plan_outcome, ctx.plan_steps, ctx.routing_reason)
