"""A worker's record sink: the records it accepts go to the DuckDB owner in batches (RecordWriter's interface).

``submit`` never awaits and never blocks the request path: it appends to a bounded buffer and wakes the sender.
The sender posts what is buffered as one batch and keeps it until the owner answers that it took it, so a
batch in flight when the owner dies is sent again once it is back (at least once: a batch the owner took
just before dying may be written twice). While the owner is away the buffer fills; past ``capacity`` records
are dropped and counted (``on_drop``, the metric), as RecordWriter does. ``stop`` sends everything accepted,
waiting up to ``drain_secs`` for an owner that is restarting; what is still unsent then is counted dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog

from pipeline.types import RequestRecord
from store.owner_link import OwnerFailed, OwnerLink, OwnerUnavailable

__all__ = ["RecordRelay"]

log = structlog.get_logger("tokenhub.record_relay")
RETRY_SECS = 0.2  # between attempts while the owner is away
DROP_LOG_SECS = 1.0  # drops within this of the last `records_dropped` line are summed into the next one


class RecordRelay:
    def __init__(
        self,
        link: OwnerLink,
        *,
        capacity: int,
        batch_size: int = 2000,
        drain_secs: float = 30.0,
        on_drop: Callable[[], None] = lambda: None,
    ) -> None:
        self._link = link
        self._capacity = capacity
        self._batch_size = batch_size
        self._drain_secs = drain_secs
        self._on_drop = on_drop
        self._pending: list[RequestRecord] = []  # accepted, not yet taken by the owner (sending ones first)
        self._wake = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._owner_away = False
        self._unlogged_drops = 0
        self._last_drop_log = float("-inf")
        self.written = 0  # taken by the owner
        self.dropped = 0

    @property
    def depth(self) -> int:
        return len(self._pending)

    def submit(self, record: RequestRecord) -> bool:
        if len(self._pending) >= self._capacity:
            self._drop(1, "buffer full")
            return False
        self._pending.append(record)
        self._wake.set()  # at once: the record reaches the owner within a round trip when it is reachable
        return True

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="record-relay")

    async def stop(self) -> None:
        """Send everything accepted so far (waiting up to ``drain_secs`` for the owner), then stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self._send_all(wait_secs=self._drain_secs)
        except (OwnerUnavailable, OwnerFailed) as exc:
            lost = len(self._pending)
            self._pending.clear()
            self._drop(lost, f"owner unavailable at stop: {exc.message}")

    async def flush(self) -> None:
        """Everything accepted so far is in the owner's hands (admin reads call it to see the newest rows)."""
        await self._send_all(wait_secs=None)

    async def settle(self) -> None:
        """Everything accepted so far is written to DuckDB by the owner (a durable workflow step's row)."""
        await self.flush()
        await self._link.post("/internal/v1/records/settle", None)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._send_all(wait_secs=0.0)
            except (OwnerUnavailable, OwnerFailed) as exc:
                if not self._owner_away:
                    self._owner_away = True
                    log.warning("analytics_owner_unreachable", buffered=len(self._pending), error=exc.message)
                await asyncio.sleep(RETRY_SECS)
                self._wake.set()
            except Exception:  # never let the sender die: the buffer would only fill
                log.exception("record_relay_failed", buffered=len(self._pending))
                await asyncio.sleep(RETRY_SECS)
                self._wake.set()

    async def _send_all(self, *, wait_secs: float | None) -> None:
        """Send batches until what was pending when called has been taken (later arrivals may ride along)."""
        remaining = len(self._pending)
        while remaining > 0 and self._pending:
            async with self._send_lock:
                batch = self._pending[: self._batch_size]
                if not batch:
                    return
                await self._link.post("/internal/v1/records", batch, wait_secs=wait_secs)
                # The batch is the head of the buffer: submit only appends, and only this lock's holder removes.
                del self._pending[: len(batch)]
            remaining -= len(batch)
            self.written += len(batch)
            if self._owner_away:
                self._owner_away = False
                log.info("analytics_owner_reachable", buffered=len(self._pending))

    def _drop(self, count: int, reason: str) -> None:
        if count <= 0:
            return
        for _ in range(count):
            self._on_drop()
        self.dropped += count
        self._unlogged_drops += count
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_SECS or reason != "buffer full":  # a full buffer would flood
            log.warning("records_dropped", count=self._unlogged_drops, reason=reason, dropped_total=self.dropped)
            self._unlogged_drops, self._last_drop_log = 0, now
