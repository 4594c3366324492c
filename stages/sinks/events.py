"""Events sink: `route_success` / `route_error` on the SSE event bus (/admin/v1/events)."""

from __future__ import annotations

from pipeline.context import RequestContext
from pipeline.events import EventBus
from pipeline.types import RequestRecord

__all__ = ["EventsSink"]


class EventsSink:
    name = "events"

    def __init__(self, events: EventBus) -> None:
        self._events = events

    def __call__(self, record: RequestRecord, ctx: RequestContext) -> None:
        events = self._events
        if not events.active:  # nobody listening: no event is built
            return
        r = record
        common = {
            "request_id": r.request_id,
            "model_id": r.model_id,
            "provider_id": r.provider_id,
            "mode": r.mode,
            "api_key_name": ctx.api_key.name if ctx.api_key else "",
            "latency_ms": r.latency_ms,
        }
        if r.status < 400:
            events.publish(
                "route_success",
                **common,
                cost_usd=r.cost_usd,
                input_tokens=r.input_tokens,
                output_tokens=r.output_tokens,
                total_tokens=r.input_tokens + r.output_tokens,
                reason=r.resolve_reason(),
            )
        else:
            events.publish(
                "route_error", **common, status=r.status, error_class=r.error_class, error_msg=r.error_message
            )
