"""Log-line sink: the one structured `request` line per request, through the injected writer."""

from __future__ import annotations

from pipeline.context import RequestContext
from pipeline.logging import RequestLines
from pipeline.types import RequestRecord

__all__ = ["LogLineSink"]


class LogLineSink:
    name = "log_line"

    def __init__(self, lines: RequestLines) -> None:
        self._lines = lines

    def __call__(self, record: RequestRecord, ctx: RequestContext) -> None:
        lines = self._lines
        if not lines.enabled:  # info lines are off: build nothing
            return
        r = record
        lines.write(
            "request",
            {
                "request_id": r.request_id,
                "client_request_id": r.client_request_id or None,
                "alias_from": r.alias_from or None,
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
