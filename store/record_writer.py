"""The record sink: an in-process buffer drained in batches into DuckDB.

``submit`` never awaits and never blocks the request path. A full queue drops the record and counts it
(bounded memory beats unbounded latency). ``stop`` drains everything accepted before returning.

A batch whose insert fails on its data (a value the schema refuses) is retried by halves, down to the
single rows that fail, so one bad record costs only itself: the request log is the ledger spend is rebuilt
from. Any other failure (disk, database) drops the batch: every row would fail the same way.

Every dropped record is counted (``on_drop``, the metric) and reported in a ``records_dropped`` log line.
The line is rate-limited: under overload a line per drop would flood the log it is meant to warn in, so
drops within ``drop_log_interval`` of the last line are summed into the next one (written by the next
drop after the interval, the writer's next wake-up, or ``stop``). Each rejected row is also named in a
``record_rejected`` line (its request id and the error), once per row.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Sequence

import duckdb
import structlog

from pipeline.types import RequestRecord
from store.analytics import AnalyticsStore

__all__ = ["FLUSH_INTERVAL_SECS", "RecordWriter"]

log = structlog.get_logger("tokenhub.record_writer")
# Errors a row's own values cause (numpy's conversion, DuckDB's casts and constraints): worth isolating.
_DATA_ERRORS = (
    ValueError,
    TypeError,
    OverflowError,
    duckdb.DataError,
    duckdb.IntegrityError,
    duckdb.InvalidInputException,
)
Rejected = list[tuple[RequestRecord, str]]  # a record the database refused, and why
# How long an accepted record may wait for its batch. It bounds what a kill -9 can take from the request log
# (and from the spend rebuilt from it at start): a record is durable once its batch commits. Half a second
# plus the write keeps "answered more than a second before the kill" safe (docs/crash-safety.md), at two
# small transactions a second when idle.
FLUSH_INTERVAL_SECS = 0.5


class RecordWriter:
    def __init__(
        self,
        analytics: AnalyticsStore,
        *,
        capacity: int,
        batch_size: int = 2000,
        flush_interval: float = FLUSH_INTERVAL_SECS,
        on_drop: Callable[[], None] = lambda: None,
        drop_log_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._analytics = analytics
        self._capacity = capacity
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._on_drop = on_drop
        # A plain list, not an asyncio.Queue: submitting must not schedule a wake-up per record.
        self._pending: list[RequestRecord] = []
        self._batch_ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Future[None] | None = None
        self._writing = 0  # records handed to DuckDB whose transaction has not finished
        self.written = 0
        self.dropped = 0
        self._drop_log_interval = drop_log_interval
        self._clock = clock
        self._unlogged: Counter[str] = Counter()  # reason -> drops not yet reported in a log line
        self._last_drop_log = float("-inf")

    @property
    def depth(self) -> int:
        """Records accepted and not yet handed to DuckDB."""
        return len(self._pending)

    @property
    def unwritten(self) -> int:
        """Records accepted and not yet stored: queued, or in a batch being written."""
        return len(self._pending) + self._writing

    def submit(self, record: RequestRecord) -> bool:
        if len(self._pending) >= self._capacity:
            self._count_drops(1, "queue full")
            return False
        self._pending.append(record)
        if len(self._pending) == self._batch_size:
            self._batch_ready.set()
        return True

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="record-writer")

    async def stop(self) -> None:
        """Write everything accepted so far, then stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._inflight is not None:
            await self._inflight
        await self.flush()
        self._log_drops()

    async def flush(self) -> None:
        """Return once every record accepted so far is in DuckDB (admin reads use it to see the latest
        requests), a batch the writer task is writing now included: without waiting for it, a read could
        run beside that write and miss every record in it. Only what is pending now is written: records
        arriving during the writes wait for the next flush, so a steady trickle cannot keep the writer busy
        with tiny batches."""
        remaining = len(self._pending)
        while remaining > 0:
            batch = self._take()
            remaining -= len(batch)
            await self._write(batch)
        if self._inflight is not None:
            await asyncio.shield(self._inflight)

    async def settle(self) -> None:
        """Every record accepted so far is in DuckDB (a durable workflow step is done only when its row is
        stored): what `flush` does, under the name the worker's relay gives it."""
        await self.flush()

    def _take(self) -> list[RequestRecord]:
        batch = self._pending[: self._batch_size]
        del self._pending[: self._batch_size]
        return batch

    async def _run(self) -> None:
        while True:
            # Wake when a full batch is waiting or the interval has passed, whichever comes first. Under
            # sustained load the queue may still hold a full batch after a flush without ever having
            # crossed the batch size from below (which is what sets the event): go on at once then,
            # or the writer would idle for the interval with a full queue.
            if len(self._pending) < self._batch_size:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._flush_interval):
                        await self._batch_ready.wait()
            self._batch_ready.clear()
            await self.flush()
            if self._unlogged and self._clock() - self._last_drop_log >= self._drop_log_interval:
                self._log_drops()

    async def _write(self, batch: list[RequestRecord]) -> None:
        if not batch:
            return
        # Shielded so a stop() arriving mid-write neither loses nor double-writes the batch; stop()
        # awaits it through ``_inflight`` before writing what is left.
        self._inflight = asyncio.ensure_future(self._write_now(batch))
        await asyncio.shield(self._inflight)

    async def _write_now(self, batch: list[RequestRecord]) -> None:
        self._writing += len(batch)
        try:
            rejected = await self._analytics.call(write_isolating, self._analytics.write_requests, batch)
        except Exception:
            log.exception("record_batch_failed", size=len(batch))
            self._count_drops(len(batch), "write failed")
            return
        finally:
            self._writing -= len(batch)
        self.written += len(batch) - len(rejected)
        for record, error in rejected:
            log.error("record_rejected", request_id=record.request_id, error=error)
        if rejected:
            self._count_drops(len(rejected), "bad record")

    def _count_drops(self, count: int, reason: str) -> None:
        for _ in range(count):
            self._on_drop()
        self.dropped += count
        self._unlogged[reason] += count
        if self._clock() - self._last_drop_log >= self._drop_log_interval:
            self._log_drops()

    def _log_drops(self) -> None:
        for reason, count in self._unlogged.items():
            log.warning("records_dropped", count=count, reason=reason, dropped_total=self.dropped)
        self._unlogged.clear()
        self._last_drop_log = self._clock()


def write_isolating(write: Callable[[Sequence[RequestRecord]], None], records: Sequence[RequestRecord]) -> Rejected:
    """``write(records)``; when the batch fails on its data, retry each half, down to single rows, so only
    the rows that fail alone are lost (k bad rows in n cost about 2·k·log2(n) extra writes). Returns those
    rows and their errors. Each write is one transaction, so a failed attempt leaves nothing behind."""
    try:
        write(records)
        return []
    except _DATA_ERRORS as exc:
        if len(records) == 1:
            return [(records[0], f"{type(exc).__name__}: {exc}"[:500])]
    middle = len(records) // 2
    return write_isolating(write, records[:middle]) + write_isolating(write, records[middle:])
