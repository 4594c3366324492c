"""record: the outermost stage. Times the whole chain and emits exactly one record per request.

The record goes to Prometheus (in memory), one structured log line, and the record queue. Nothing here
awaits storage: the queue is drained into DuckDB in batches by the record writer.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import structlog

from pipeline.context import RequestContext
from pipeline.errors import InternalError, RequestCancelled, TokenHubError
from pipeline.logging import REQUEST_LINES
from pipeline.stage import Next, StageOptions, StageSpec
from pipeline.types import RequestRecord
from stages.key_accounting import account
from stages.learning import learn

if TYPE_CHECKING:
    from pipeline.events import EventBus
    from pipeline.services import Services

log = structlog.get_logger("tokenhub.request")


class RecordOptions(StageOptions):
    pass


class Record:
    def __init__(self, services: Services, options: RecordOptions) -> None:
        self._services = services

    async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
        await recorded(self._services, ctx, call_next)


async def recorded(services: Services, ctx: RequestContext, call_next: Next) -> None:
    """Run `call_next(ctx)` and emit its one record whatever happens. Also runs each /v1/plan step, so a
    step is timed and recorded exactly like a request."""
    try:
        await call_next(ctx)
    except TokenHubError as exc:
        ctx.error = exc
        raise
    except asyncio.CancelledError:
        ctx.error = RequestCancelled("request cancelled before it completed")
        raise
    except Exception as exc:
        log.exception("unhandled_error", request_id=ctx.request_id)
        ctx.error = InternalError("internal error; see the server log for this request id")
        raise ctx.error from exc
    finally:
        emit_record(services, ctx)


def emit_record(services: Services, ctx: RequestContext) -> RequestRecord:
    """Build the request's one record and fan it out. Also used by the edge for requests rejected while
    decoding, before any pipeline runs."""
    latency_ms = (time.perf_counter() - ctx.started_at) * 1000
    # A stream that broke after its first token still names the model that served it (and what it cost).
    served = ctx.served_by.model if ctx.served_by else None
    usage = ctx.result.usage if ctx.result and served else None
    decision = ctx.decision
    error = ctx.error
    record = RequestRecord(
        timestamp=time.time(),
        request_id=ctx.request_id,
        tenant_id=ctx.tenant_id,
        api_key_id=ctx.api_key.id if ctx.api_key else "",
        endpoint=ctx.endpoint,
        mode=decision.mode if decision else ctx.policy.mode,
        model_id=served.id if served else "",
        provider_id=served.provider_id if served else "",
        status=error.status if error else 200,
        error_class=_error_class(error),
        error_message=error.message if error else "",
        input_tokens=usage.input_tokens if usage else 0,
        output_tokens=usage.output_tokens if usage else 0,
        cost_usd=ctx.cost_usd if served else 0.0,
        latency_ms=round(latency_ms, 3),
        escalations=max(0, len(ctx.attempts) - 1),
        routing_reason=ctx.routing_reason or (decision.reason if decision else ""),
        ttft_ms=round(ctx.ttft_ms, 3),
        parent_request_id=ctx.parent_request_id,
        client_request_id=ctx.client_request_id,
    )
    learn(services.bandit, services.recent_requests, ctx, record)
    _observe(services, record, _upstream_ms(ctx), ctx.api_key.name if ctx.api_key else "")
    services.records.submit(record)
    account(services, record, ctx.api_key)  # per-key spend, token-rate settlement, vault activity
    return record


def _upstream_ms(ctx: RequestContext) -> float | None:
    """Time spent in provider calls, or None when it is not fully known: no call was made, or a failed
    attempt (whose time dispatch does not record) is part of the total."""
    attempts = ctx.attempts
    if not attempts:
        return None
    total = 0.0
    for attempt in attempts:
        if attempt.error_class:
            return None
        total += attempt.latency_ms
    return total


def _error_class(error: TokenHubError | None) -> str:
    if error is None:
        return ""
    return str(getattr(error, "error_class", "") or error.type)


def _observe(services: Services, r: RequestRecord, upstream_ms: float | None, api_key_name: str) -> None:
    services.metrics.observe_request(r, upstream_ms)
    events = services.events
    if events.active:  # nobody listening: no event is built
        _publish(events, r, api_key_name)
    REQUEST_LINES.write(
        "request",
        {
            "request_id": r.request_id,
            "client_request_id": r.client_request_id or None,
            "tenant": r.tenant_id,
            "api_key_id": r.api_key_id,
            "endpoint": r.endpoint,
            "mode": r.mode,
            "model": r.model_id,
            "provider": r.provider_id,
            "status": r.status,
            "error_class": r.error_class or None,
            "latency_ms": r.latency_ms,
            "cost_usd": r.cost_usd,
            "input_tokens": r.input_tokens,
            "output_tokens": r.output_tokens,
            "escalations": r.escalations,
        },
    )


def _publish(events: EventBus, r: RequestRecord, api_key_name: str) -> None:
    common = {
        "request_id": r.request_id,
        "model_id": r.model_id,
        "provider_id": r.provider_id,
        "mode": r.mode,
        "api_key_name": api_key_name,
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
            reason=r.routing_reason,
        )
    else:
        events.publish("route_error", **common, status=r.status, error_class=r.error_class, error_msg=r.error_message)


SPEC = StageSpec(
    name="record",
    factory=Record,
    options=RecordOptions,
    summary="Outermost: times the chain; one record per request to metrics, the log and the DuckDB request log.",
    required=True,
)
