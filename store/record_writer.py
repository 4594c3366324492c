"""The record sink: an in-process queue drained in batches into DuckDB.

``submit`` never awaits and never blocks the request path. A full queue drops the record and counts it
(bounded memory beats unbounded latency). ``stop`` drains everything accepted before returning.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

from pipeline.types import RequestRecord
from store.analytics import AnalyticsStore

log = structlog.get_logger("tokenhub.record_writer")


class RecordWriter:
    def __init__(
        self,
        analytics: AnalyticsStore,
        *,
        capacity: int,
        batch_size: int = 2000,
        flush_interval: float = 1.0,
        on_drop: Callable[[], None] = lambda: None,
    ) -> None:
        self._analytics = analytics
        self._queue: asyncio.Queue[RequestRecord] = asyncio.Queue(maxsize=capacity)
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._on_drop = on_drop
        self._task: asyncio.Task[None] | None = None
        self._batch: list[RequestRecord] = []  # taken off the queue, not yet handed to DuckDB
        self._inflight: asyncio.Future[None] | None = None
        self.written = 0

    def submit(self, record: RequestRecord) -> bool:
        try:
            self._queue.put_nowait(record)
            return True
        except asyncio.QueueFull:
            self._on_drop()
            log.warning("record_dropped", reason="queue full", request_id=record.request_id)
            return False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="record-writer")

    async def stop(self) -> None:
        """Write everything accepted so far, then stop."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if self._inflight is not None:
            await self._inflight
        await self._write(self._take_all())

    async def flush(self) -> None:
        """Write everything queued now (tests and admin reads use it to see their own records)."""
        await self._write(self._take_all())

    def _take_all(self) -> list[RequestRecord]:
        batch, self._batch = self._batch, []
        while not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    async def _run(self) -> None:
        while True:
            self._batch.append(await self._queue.get())
            # Let a burst accumulate so DuckDB sees few, large transactions.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._flush_interval):
                    while len(self._batch) < self._batch_size:
                        self._batch.append(await self._queue.get())
            batch, self._batch = self._batch, []
            await self._write(batch)

    async def _write(self, batch: list[RequestRecord]) -> None:
        if not batch:
            return
        # Shielded so a stop() arriving mid-write neither loses nor double-writes the batch; stop()
        # awaits it through ``_inflight`` before writing what is left.
        self._inflight = asyncio.ensure_future(self._write_now(batch))
        await asyncio.shield(self._inflight)

    async def _write_now(self, batch: list[RequestRecord]) -> None:
        try:
            await self._analytics.call(self._analytics.write_requests, batch)
            self.written += len(batch)
        except Exception:
            log.exception("record_batch_failed", size=len(batch))
            for _ in batch:
                self._on_drop()
