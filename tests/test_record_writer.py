"""The record sink: a bounded in-process queue drained in batches into DuckDB."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import Any

import duckdb
import pytest

from pipeline.types import RequestRecord
from store.analytics import MAX_TOKEN_COUNT, AnalyticsStore
from store.record_writer import RecordWriter
from store.reward_queries import rewarded_request

BASE_TS = 1_700_000_000.0


def make_record(i: int = 0, **fields: Any) -> RequestRecord:
    record = RequestRecord(
        timestamp=BASE_TS + i,
        request_id=f"req-{i:05d}",
        tenant_id="default",
        api_key_id="0123456789abcdef",
        endpoint="/v1/chat",
        mode="normal",
        model_id="gpt-test",
        provider_id="fake",
        status=200,
        error_class="",
        error_message="",
        input_tokens=10 + i,
        output_tokens=5,
        cost_usd=0.0001 * i,
        latency_ms=12.5,
        escalations=0,
        routing_reason="score",
    )
    return replace(record, **fields)


class SpyAnalytics(AnalyticsStore):
    """Records the size of each batch handed to DuckDB; optionally fails or blocks the write. Each change
    wakes ``until`` on the event loop, so tests wait on the writes themselves, not on a clock."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.batches: list[int] = []
        self.fail = False
        self.started = threading.Event()
        self.release: threading.Event | None = None
        self.finished = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()

    def write_requests(self, records: Sequence[RequestRecord]) -> None:
        self.started.set()
        self._notify()
        if self.release is not None:
            self.release.wait(timeout=5)
        if self.fail:
            raise RuntimeError("disk full")
        super().write_requests(records)
        self.batches.append(len(records))
        self.finished.set()
        self._notify()

    def _notify(self) -> None:  # on the DuckDB thread, after the state changed
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._changed.set)

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` (over this spy's state) holds."""
        while True:
            self._changed.clear()
            if predicate():
                return
            await self._changed.wait()


@pytest.fixture
async def analytics() -> AsyncIterator[SpyAnalytics]:
    store = SpyAnalytics(":memory:")
    store.loop = asyncio.get_running_loop()
    store.open()
    yield store
    if store.release is not None:
        store.release.set()
    store.close()


async def count(analytics: AnalyticsStore) -> int:
    return await analytics.call(analytics.count_requests)


async def test_records_written_in_batches(analytics: SpyAnalytics) -> None:
    writer = RecordWriter(analytics, capacity=100, batch_size=10, flush_interval=0.01)
    writer.start()
    try:
        assert all(writer.submit(make_record(i)) for i in range(25))
        await analytics.until(lambda: sum(analytics.batches) == 25)
        assert analytics.batches == [10, 10, 5]
        assert await count(analytics) == 25
    finally:
        await writer.stop()


async def test_a_lone_record_is_written_after_the_flush_interval(analytics: SpyAnalytics) -> None:
    writer = RecordWriter(analytics, capacity=100, batch_size=500, flush_interval=0.02)
    writer.start()
    try:
        writer.submit(make_record())
        await analytics.until(lambda: bool(analytics.batches))  # no flush() and no stop(): the interval did it
        assert analytics.batches == [1]
    finally:
        await writer.stop()


async def test_stop_drains_everything_accepted(analytics: SpyAnalytics) -> None:
    writer = RecordWriter(analytics, capacity=2000)
    writer.start()
    assert all(writer.submit(make_record(i)) for i in range(1000))
    await writer.stop()
    assert await count(analytics) == 1000
    assert writer.written == 1000


async def test_stop_drains_records_mid_accumulation(analytics: SpyAnalytics) -> None:
    writer = RecordWriter(analytics, capacity=2000, batch_size=500, flush_interval=5.0)
    writer.start()
    for i in range(100):
        writer.submit(make_record(i))
        await asyncio.sleep(0)  # the writer is now holding a partial batch, waiting for more
    await writer.stop()
    assert await count(analytics) == 100
    assert analytics.batches == [100]


async def test_stop_waits_for_the_batch_in_flight(analytics: SpyAnalytics) -> None:
    analytics.release = threading.Event()
    writer = RecordWriter(analytics, capacity=100, batch_size=5, flush_interval=5.0)
    writer.start()
    for i in range(5):
        writer.submit(make_record(i))
    await analytics.until(analytics.started.is_set)  # the batch is being written on the DuckDB thread
    stopping = asyncio.create_task(writer.stop())
    for _ in range(20):  # give stop() every chance to return early: it cannot, the write is held
        await asyncio.sleep(0)
    returned_before_the_write_finished = stopping.done()
    analytics.release.set()
    await stopping
    assert not returned_before_the_write_finished
    assert writer.written == 5


async def test_flush_waits_for_the_batch_the_writer_task_is_writing(analytics: SpyAnalytics) -> None:
    """An admin read flushes first: with nothing pending but a batch in flight, it must still wait for that
    batch, or the read runs beside the write and misses every record in it."""
    analytics.release = threading.Event()
    writer = RecordWriter(analytics, capacity=100, batch_size=5, flush_interval=5.0)
    writer.start()
    for i in range(5):
        writer.submit(make_record(i))
    await analytics.until(analytics.started.is_set)  # the writer task took the batch: nothing is pending
    flushing = asyncio.create_task(writer.flush())
    for _ in range(20):
        await asyncio.sleep(0)
    returned_before_the_write_finished = flushing.done()
    analytics.release.set()
    await flushing
    assert not returned_before_the_write_finished
    assert await count(analytics) == 5
    await writer.stop()


async def test_full_queue_drops_and_calls_on_drop(analytics: SpyAnalytics) -> None:
    drops: list[None] = []
    writer = RecordWriter(analytics, capacity=3, on_drop=lambda: drops.append(None))
    accepted = [writer.submit(make_record(i)) for i in range(5)]
    assert accepted == [True, True, True, False, False]
    assert len(drops) == 2
    await writer.flush()
    assert await count(analytics) == 3
    assert [row["request_id"] for row in await analytics.call(analytics.recent_requests, 10, 0)] == [
        "req-00002",
        "req-00001",
        "req-00000",
    ]
    assert writer.submit(make_record(9)) is True  # room again after the flush


async def test_flush_makes_records_visible(analytics: SpyAnalytics) -> None:
    writer = RecordWriter(analytics, capacity=10)
    writer.submit(make_record(1))
    writer.submit(make_record(2))
    assert await count(analytics) == 0
    await writer.flush()
    assert await count(analytics) == 2
    assert writer.written == 2
    await writer.flush()  # nothing queued: no empty batch is written
    assert analytics.batches == [2]


async def test_failed_batch_counts_every_record_as_dropped(analytics: SpyAnalytics) -> None:
    drops: list[None] = []
    writer = RecordWriter(analytics, capacity=10, on_drop=lambda: drops.append(None))
    analytics.fail = True
    for i in range(3):
        writer.submit(make_record(i))
    await writer.flush()
    assert len(drops) == 3
    assert writer.written == 0
    analytics.fail = False
    writer.submit(make_record(7))
    await writer.flush()
    assert await count(analytics) == 1  # the failed batch was rolled back, nothing half-written


async def test_recent_requests_newest_first_with_limit_and_offset(analytics: SpyAnalytics) -> None:
    writer = RecordWriter(analytics, capacity=100)
    for i in (3, 0, 7, 1, 9, 5, 2, 8, 6, 4):  # submission order differs from time order
        writer.submit(make_record(i))
    await writer.flush()
    first = await analytics.call(analytics.recent_requests, 3, 0)
    assert [row["request_id"] for row in first] == ["req-00009", "req-00008", "req-00007"]
    second = await analytics.call(analytics.recent_requests, 3, 3)
    assert [row["request_id"] for row in second] == ["req-00006", "req-00005", "req-00004"]
    tail = await analytics.call(analytics.recent_requests, 100, 8)
    assert [row["request_id"] for row in tail] == ["req-00001", "req-00000"]
    assert await analytics.call(analytics.recent_requests, 5, 10) == []


async def test_recent_requests_round_trips_fields(analytics: SpyAnalytics) -> None:
    writer = RecordWriter(analytics, capacity=10)
    record = make_record(
        4, status=502, error_class="transient", error_message="upstream 503", escalations=2, mode="cheap"
    )
    writer.submit(record)
    await writer.flush()
    (row,) = await analytics.call(analytics.recent_requests, 1, 0)
    assert row["timestamp"] == "2023-11-14T22:13:24+00:00"
    assert row["request_id"] == "req-00004"
    assert (row["status"], row["error_class"], row["error_message"]) == (502, "transient", "upstream 503")
    assert (row["input_tokens"], row["output_tokens"], row["escalations"]) == (14, 5, 2)
    assert row["cost_usd"] == pytest.approx(0.0004)
    assert row["mode"] == "cheap"
    assert set(row) == set(RequestRecord.__dataclass_fields__) - {"reason_pending"}  # not a column


async def test_a_routing_reason_left_for_later_is_rendered_by_the_writer_off_the_event_loop(
    analytics: SpyAnalytics,
) -> None:
    writer = RecordWriter(analytics, capacity=10)
    rendered_on: list[threading.Thread] = []

    def render() -> str:
        rendered_on.append(threading.current_thread())
        return "routed-weight-5: rendered by the writer"

    record = make_record(1, routing_reason="", reason_pending=render)
    writer.submit(record)
    await writer.flush()
    (row,) = await analytics.call(analytics.recent_requests, 1, 0)
    assert row["routing_reason"] == "routed-weight-5: rendered by the writer"
    assert rendered_on != [] and threading.main_thread() not in rendered_on
    assert record.reason_pending is None and record.resolve_reason() == row["routing_reason"]


async def test_stop_without_start_is_a_no_op(analytics: SpyAnalytics) -> None:
    writer = RecordWriter(analytics, capacity=10)
    await writer.stop()
    assert await count(analytics) == 0


async def test_analytics_file_store(tmp_path: Any) -> None:
    path = tmp_path / "a" / "tokenhub.duckdb"
    store = AnalyticsStore(str(path))
    store.open()
    writer = RecordWriter(store, capacity=10)
    writer.start()
    writer.submit(make_record(1))
    await writer.stop()
    store.close()
    reopened = AnalyticsStore(str(path))
    reopened.open()
    try:
        assert reopened.count_requests() == 1
    finally:
        reopened.close()


async def test_flush_writes_only_what_was_pending_when_it_started(analytics: SpyAnalytics) -> None:
    # A steady trickle of records during a write must not keep flush() looping over tiny batches.
    analytics.release = threading.Event()
    writer = RecordWriter(analytics, capacity=100, batch_size=50, flush_interval=5.0)
    for i in range(5):
        writer.submit(make_record(i))
    flushing = asyncio.create_task(writer.flush())
    await analytics.until(analytics.started.is_set)
    for i in range(5, 10):
        writer.submit(make_record(i))  # arrive while the first batch is being written
    analytics.release.set()
    await flushing
    assert analytics.batches == [5]
    await writer.flush()
    assert analytics.batches == [5, 5]


async def test_a_bad_record_costs_only_itself(analytics: SpyAnalytics) -> None:
    drops: list[None] = []
    writer = RecordWriter(analytics, capacity=100, on_drop=lambda: drops.append(None))
    records = [make_record(i) for i in range(11)]
    records[6] = make_record(6, request_id=None)  # NOT NULL refuses it; it fails its batch of 11
    records[9] = make_record(9, status="teapot")  # numpy refuses it
    for record in records:
        writer.submit(record)
    await writer.flush()
    rows = await analytics.call(analytics.recent_requests, 100, 0)
    assert sorted(row["request_id"] for row in rows) == [f"req-{i:05d}" for i in range(11) if i not in (6, 9)]
    assert (writer.written, writer.dropped, len(drops)) == (9, 2, 2)
    assert analytics.batches.count(11) == 0 and sum(analytics.batches) == 9


async def test_absurd_token_counts_are_stored_clamped_and_large_ones_exactly(analytics: SpyAnalytics) -> None:
    writer = RecordWriter(analytics, capacity=100)
    writer.submit(make_record(1, input_tokens=3_000_000_000, output_tokens=2**31))  # INTEGER overflowed on these
    writer.submit(make_record(2, input_tokens=10**30, output_tokens=-5))  # beyond int64, and negative
    writer.submit(make_record(3))
    await writer.flush()
    rows = {row["request_id"]: row for row in await analytics.call(analytics.recent_requests, 10, 0)}
    assert (rows["req-00001"]["input_tokens"], rows["req-00001"]["output_tokens"]) == (3_000_000_000, 2**31)
    assert (rows["req-00002"]["input_tokens"], rows["req-00002"]["output_tokens"]) == (MAX_TOKEN_COUNT, 0)
    assert rows["req-00003"]["input_tokens"] == 13 and writer.dropped == 0


def test_an_older_file_is_migrated_in_place(tmp_path: Any) -> None:
    path = str(tmp_path / "old.duckdb")
    old = duckdb.connect(path)
    old.execute(  # the first release's request_log: INTEGER token counts, no later columns
        "CREATE TABLE request_log (timestamp TIMESTAMPTZ NOT NULL, request_id VARCHAR NOT NULL, tenant_id VARCHAR"
        " NOT NULL, api_key_id VARCHAR NOT NULL, endpoint VARCHAR NOT NULL, mode VARCHAR NOT NULL, model_id"
        " VARCHAR NOT NULL, provider_id VARCHAR NOT NULL, status INTEGER NOT NULL, error_class VARCHAR NOT NULL,"
        " error_message VARCHAR NOT NULL, input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,"
        " cost_usd DOUBLE NOT NULL, latency_ms DOUBLE NOT NULL, escalations INTEGER NOT NULL, routing_reason"
        " VARCHAR NOT NULL)"
    )
    old.execute(
        "INSERT INTO request_log VALUES (to_timestamp(1700000000), 'old-1', 'default', 'k', 'chat', 'normal',"
        " 'gpt-test', 'fake', 200, '', '', 7, 3, 0.5, 10.0, 0, 'score')"
    )
    old.close()
    store = AnalyticsStore(path)
    store.open()
    try:
        types = dict(
            store.db.execute(
                "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'request_log'"
            ).fetchall()
        )
        assert types["input_tokens"] == types["output_tokens"] == "BIGINT"
        assert types["client_request_id"] == types["feedback_comment"] == "VARCHAR"
        store.write_requests([make_record(1, input_tokens=3_000_000_000, client_request_id="mine-1")])
        rows = {row["request_id"]: row for row in store.recent_requests(10, 0)}
        assert (rows["old-1"]["input_tokens"], rows["old-1"]["cost_usd"], rows["old-1"]["client_request_id"]) == (
            7,
            0.5,
            "",
        )
        assert (rows["req-00001"]["input_tokens"], rows["req-00001"]["client_request_id"]) == (3_000_000_000, "mine-1")
    finally:
        store.close()


async def test_feedback_reads_and_updates_only_the_keys_own_row_in_the_range(analytics: SpyAnalytics) -> None:
    # Rows written before request ids were ours may share an id across keys: each key reaches only its own.
    analytics.write_requests(
        [
            make_record(1, request_id="shared-2", api_key_id="key-a", reward=0.8),
            make_record(2, request_id="shared-2", api_key_id="key-b", reward=0.7),
        ]
    )
    found = await analytics.read(rewarded_request, "key-b", "shared-2", BASE_TS)
    assert found is not None and found.reward == 0.7 and found.feedback_score is None
    assert await analytics.read(rewarded_request, "key-c", "shared-2", BASE_TS) is None
    assert await analytics.read(rewarded_request, "key-b", "shared-2", BASE_TS + 3) is None  # before the range
    changed = await analytics.call(analytics.set_feedback, "key-b", "shared-2", BASE_TS, 0.5, 0.1, "meh")
    assert changed == 1
    assert await analytics.call(analytics.set_feedback, "key-a", "shared-2", BASE_TS + 3, 0.5, 0.1, None) == 0
    rows = {row["api_key_id"]: row for row in await analytics.call(analytics.recent_requests, 10, 0)}
    assert (rows["key-a"]["reward"], rows["key-a"]["feedback_score"], rows["key-a"]["feedback_comment"]) == (
        0.8,
        None,
        None,
    )
    assert (rows["key-b"]["reward"], rows["key-b"]["feedback_score"], rows["key-b"]["feedback_comment"]) == (
        0.5,
        0.1,
        "meh",
    )
