"""Request-log sink: the record joins the queue the batched writer drains into DuckDB (never awaited here)."""

from __future__ import annotations

from pipeline.context import RequestContext
from pipeline.types import RequestRecord
from store.record_writer import RecordWriter

__all__ = ["RequestLogSink"]


class RequestLogSink:
    name = "request_log"

    def __init__(self, writer: RecordWriter) -> None:
        self._writer = writer

    def __call__(self, record: RequestRecord, ctx: RequestContext) -> None:
        self._writer.submit(record)
