"""The Recorder: what happens after a request, in one place.

It builds the request's one `RequestRecord` from the context, then hands it to its sinks in order. The sink
list is built once, in the composition root (pipeline/services.py): learning, metrics, events, the log line,
the DuckDB queue, key accounting. Adding a sink touches no stage and no edge module.

A sink is a small synchronous callable. None awaits and none does I/O on the request path (storage sinks only
queue). Order matters where one sink enriches the record: learning sets `attempts` and `reward`, so it runs
before the DuckDB queue. A sink that raises is logged and counted (`on_failure`). The other sinks still run and
the request is unaffected: bookkeeping never fails an answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Protocol

import structlog

from pipeline.context import RequestContext
from pipeline.errors import TokenHubError
from pipeline.types import RequestRecord

__all__ = ["RecordSink", "Recorder", "build_record"]

log = structlog.get_logger("tokenhub.recorder")


class RecordSink(Protocol):
    """One consumer of finished requests. `name` labels its failures in the log and the metric."""

    name: str

    def __call__(self, record: RequestRecord, ctx: RequestContext) -> None: ...


class Recorder:
    def __init__(self, sinks: Iterable[RecordSink], *, on_failure: Callable[[str], None] | None = None) -> None:
        self._sinks: list[RecordSink] = list(sinks)
        self._on_failure = on_failure

    @property
    def sinks(self) -> tuple[RecordSink, ...]:
        return tuple(self._sinks)

    def add(self, sink: RecordSink, *, before: str | None = None) -> None:
        """Add a sink, last or just before the sink named `before` (one that enriches the record must run
        before the DuckDB queue). It sees every request emitted from now on."""
        names = [s.name for s in self._sinks]
        if before is not None and before not in names:
            raise ValueError(f"no sink named {before!r}; sinks: {', '.join(names)}")
        self._sinks.insert(names.index(before) if before is not None else len(names), sink)

    def emit(self, ctx: RequestContext) -> RequestRecord:
        """Record the request once: build its record and run every sink. Never raises for a sink's fault."""
        record = build_record(ctx)
        for sink in self._sinks:
            try:
                sink(record, ctx)
            except Exception:
                log.exception("record_sink_failed", sink=sink.name, request_id=record.request_id)
                if self._on_failure is not None:
                    self._on_failure(sink.name)
        if ctx.error is not None:
            _drop_tracebacks(ctx.error)
        return record


def _drop_tracebacks(error: BaseException) -> None:
    """Once its request is recorded, an error's traceback (and those of the errors it came from) serves no one.
    It keeps every frame it passed through alive, and those frames hold the request's context, which holds the
    error: a reference cycle per failed request, large, and freed only by the collector's full pass, minutes
    apart under load. Without the tracebacks it is freed as soon as the request is done."""
    pending, seen = [error], set()
    while pending:
        exc = pending.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        exc.__traceback__ = None
        pending += [e for e in (exc.__cause__, exc.__context__) if e is not None]


def build_record(ctx: RequestContext) -> RequestRecord:
    """The request-log row for a finished (or rejected) request. A stream that ended early still names the
    model that served it, with the usage and cost the relay charged for what was delivered."""
    latency_ms = ((ctx.ended_at or time.perf_counter()) - ctx.started_at) * 1000
    served = ctx.served_by.model if ctx.served_by else None
    usage = ctx.result.usage if ctx.result and served else None
    decision = ctx.decision
    error = ctx.error
    reason, pending = _routing_reason(ctx)
    return RequestRecord(
        timestamp=time.time(),
        request_id=ctx.request_id,
        client_request_id=ctx.client_request_id,
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
        routing_reason=reason,
        reason_pending=pending,
        ttft_ms=round(ctx.ttft_ms, 3),
        parent_request_id=ctx.parent_request_id,
        alias_from=ctx.alias_from,
    )


def _routing_reason(ctx: RequestContext) -> tuple[str, Callable[[], str] | None]:
    """The record's routing_reason, or what renders it when the record is written: the decision's reason, when
    the stages wrote none and nothing has read it yet (most requests)."""
    decision, note = ctx.decision, ctx.rescue_note
    if not ctx.routing_reason and decision is not None and not note:
        pending = decision.pending_reason()
        if pending is not None:
            return "", pending
    reason = ctx.routing_reason or (decision.reason if decision else "")
    return (f"{reason}; {note}" if note else reason), None


def _error_class(error: TokenHubError | None) -> str:
    if error is None:
        return ""
    return str(getattr(error, "error_class", "") or error.type)
