"""Metrics sink: the per-request Prometheus series (in memory; scraped at /metrics)."""

from __future__ import annotations

from pipeline.context import RequestContext
from pipeline.metrics import Metrics
from pipeline.types import RequestRecord

__all__ = ["MetricsSink", "upstream_ms"]


class MetricsSink:
    name = "metrics"

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def __call__(self, record: RequestRecord, ctx: RequestContext) -> None:
        self._metrics.observe_request(record, upstream_ms(ctx))


def upstream_ms(ctx: RequestContext) -> float | None:
    """Time spent in provider calls, or None when it is not fully known: no call was made, a failed attempt
    (whose time dispatch does not record) is part of the total, or calls overlapped (a hedge)."""
    attempts = ctx.attempts
    if not attempts:
        return None
    total = 0.0
    for attempt in attempts:
        if attempt.error_class or attempt.hedged_out:
            return None
        total += attempt.latency_ms
    return total
