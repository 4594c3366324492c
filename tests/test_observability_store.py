"""DuckDB side of observability: derived time series, downsampling arithmetic, retention, stats, trends,
schema migration, and the record writer's drop accounting."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import pytest

from pipeline.periodic import Periodic
from store import record_writer
from store.analytics import REQUEST_LOG_COLUMNS, AnalyticsStore
from store.block_cache import BlockCacheTrim
from store.record_writer import RecordWriter
from store.request_queries import LogFilter, query_logs, request_stats, request_trends
from store.retention import Retention
from store.tsdb import Point, SeriesQuery, list_metrics, prune_points, query_series, write_points
from tests.test_record_writer import SpyAnalytics, make_record

T0 = 1_700_000_000  # unix seconds, a multiple of every step used below
START = datetime.fromtimestamp(T0, tz=UTC)


@pytest.fixture
async def store() -> AsyncIterator[AnalyticsStore]:
    analytics = AnalyticsStore(":memory:")
    analytics.open()
    yield analytics
    analytics.close()


def at(seconds: float) -> datetime:
    return START + timedelta(seconds=seconds)


async def series(store: AnalyticsStore, **query: Any) -> dict[str, Any]:
    return await store.read(query_series, SeriesQuery(**query))


def points(result: dict[str, Any], index: int = 0) -> list[tuple[str, float]]:
    return [(p["t"], p["v"]) for p in result["series"][index]["points"]]


async def test_downsampling_averages_sums_counts_and_extremes_of_known_points(store: AnalyticsStore) -> None:
    known = [(0.0, 1.0), (0.5, 3.0), (1.2, 10.0), (2.0, 20.0), (2.999, 30.0)]
    await store.call(write_points, store.db, [Point(at(s), "latency", v, "m", "p") for s, v in known])

    one_second = await series(store, metric="latency", step_ms=1000)
    assert points(one_second) == [
        ("2023-11-14T22:13:20.000Z", 2.0),
        ("2023-11-14T22:13:21.000Z", 10.0),
        ("2023-11-14T22:13:22.000Z", 25.0),
    ]
    two_seconds = await series(store, metric="latency", step_ms=2000)
    assert [v for _, v in points(two_seconds)] == [pytest.approx(14 / 3), 25.0]
    assert [v for _, v in points(await series(store, metric="latency", step_ms=2000, aggregate="sum"))] == [14, 50]
    assert [v for _, v in points(await series(store, metric="latency", step_ms=2000, aggregate="count"))] == [3, 2]
    assert [v for _, v in points(await series(store, metric="latency", step_ms=2000, aggregate="min"))] == [1, 20]
    assert [v for _, v in points(await series(store, metric="latency", step_ms=2000, aggregate="max"))] == [10, 30]
    # A step that does not divide the range: buckets are floor(unix_ms / step) * step.
    odd = await series(store, metric="latency", step_ms=700)
    assert [(t[-7:], v) for t, v in points(odd)] == [
        ("19.600Z", 1.0),  # 0.0 s -> bucket starts 0.4 s earlier (T0 is not a multiple of 700 ms)
        ("20.300Z", 3.0),
        ("21.000Z", 10.0),
        ("21.700Z", 20.0),
        ("22.400Z", 30.0),
    ]
    raw = await series(store, metric="latency")  # no step: every stored timestamp is its own point
    assert [v for _, v in points(raw)] == [1, 3, 10, 20, 30]
    assert points(raw)[2][0] == "2023-11-14T22:13:21.200Z"


async def test_series_filters_ranges_and_order_of_first_appearance(store: AnalyticsStore) -> None:
    await store.call(
        write_points,
        store.db,
        [
            Point(at(5), "cost", 2.0, "b", "p2"),
            Point(at(1), "cost", 1.0, "a", "p1"),
            Point(at(3), "cost", 3.0, "b", "p2"),
            Point(at(9), "cost", 9.0, "a", "p1"),
            Point(at(4), "tokens", 100.0, "a", "p1"),
        ],
    )
    result = await series(store, metric="cost", step_ms=1000)
    assert [(s["model_id"], s["provider_id"]) for s in result["series"]] == [("a", "p1"), ("b", "p2")]
    assert [v for _, v in points(result, 1)] == [3.0, 2.0]
    only_b = await series(store, metric="cost", model_id="b")
    assert [s["model_id"] for s in only_b["series"]] == ["b"]
    window = await series(store, metric="cost", start=at(3), end=at(5))  # inclusive at both ends
    assert sorted(v for s in window["series"] for _, v in points({"series": [s]})) == [2.0, 3.0]
    assert (await series(store, metric="nope"))["series"] == []
    capped = await series(store, metric="cost", max_points=2)
    assert capped["truncated"] is True and sum(len(s["points"]) for s in capped["series"]) == 2
    assert await store.read(list_metrics) == ["cost", "tokens"]


async def test_records_become_per_second_points_that_downsample_exactly(store: AnalyticsStore) -> None:
    # Two batches split the same second: the roll-ups must still combine exactly.
    await store.call(store.write_requests, [make_record(0, timestamp=T0 + 0.1, latency_ms=10.0)])
    await store.call(
        store.write_requests,
        [
            make_record(1, timestamp=T0 + 0.9, latency_ms=30.0),
            make_record(2, timestamp=T0 + 1.5, latency_ms=50.0, status=502, cost_usd=0.0, error_class="transient"),
            make_record(3, timestamp=T0 + 1.6, latency_ms=70.0, ttft_ms=12.5),
        ],
    )
    raw = await series(store, metric="latency")
    assert points(raw) == [("2023-11-14T22:13:20.000Z", 20.0), ("2023-11-14T22:13:21.000Z", 60.0)]
    overall = await series(store, metric="latency", step_ms=2000)
    assert points(overall) == [("2023-11-14T22:13:20.000Z", 40.0)]  # (10+30+50+70)/4, not (20+60)/2
    assert points(await series(store, metric="requests", step_ms=2000, aggregate="sum")) == [
        ("2023-11-14T22:13:20.000Z", 4.0)
    ]
    assert points(await series(store, metric="errors", step_ms=2000, aggregate="sum")) == [
        ("2023-11-14T22:13:20.000Z", 1.0)
    ]
    assert points(await series(store, metric="cost", step_ms=2000, aggregate="count")) == [
        ("2023-11-14T22:13:20.000Z", 3.0)  # successes only
    ]
    assert points(await series(store, metric="ttft")) == [("2023-11-14T22:13:21.000Z", 12.5)]
    assert await store.read(list_metrics) == ["cost", "errors", "latency", "requests", "tokens", "ttft"]


async def test_prune_deletes_exactly_what_is_older_than_the_retention(store: AnalyticsStore) -> None:
    now = T0 + 30 * 86400
    retention = Retention(store, tsdb_days=7, request_log_days=20, clock=lambda: now)
    cutoff = retention.cutoff(7)
    assert cutoff == datetime.fromtimestamp(now, tz=UTC) - timedelta(days=7)
    tick = timedelta(microseconds=1)
    stamps = [cutoff - timedelta(days=3), cutoff - tick, cutoff, cutoff + tick, cutoff + timedelta(days=1)]
    await store.call(write_points, store.db, [Point(ts, "latency", float(i)) for i, ts in enumerate(stamps)])
    assert await retention.prune_tsdb() == 2
    left = await store.read(lambda db: db.execute("SELECT ts, value FROM tsdb_points ORDER BY ts").fetchall())
    assert [(ts, value) for ts, value in left] == [(cutoff, 2.0), (cutoff + tick, 3.0), (stamps[-1], 4.0)]
    assert await retention.prune_tsdb() == 0

    log_cutoff = retention.cutoff(20).timestamp()
    records = [make_record(i, timestamp=log_cutoff + offset) for i, offset in enumerate((-86400, -1e-6, 0, 1))]
    await store.call(store.write_requests, records)
    assert await retention.prune_request_log() == 2
    assert await store.call(store.count_requests) == 2

    retention.set_tsdb_days(1)
    assert retention.tsdb_days == 1
    with pytest.raises(ValueError, match="days must be >= 1"):
        retention.set_tsdb_days(0)


async def test_checkpoints_never_merge_row_groups_and_retention_still_frees_them(tmp_path: Any) -> None:
    """No vacuum: merging the row groups earlier checkpoints wrote read them back and rewrote them, a memory
    spike that grew with the table. Each checkpoint's rows stay a row group of their own, and a retention
    prune that deletes a whole group's rows still removes it."""
    store = AnalyticsStore(str(tmp_path / "tokenhub.duckdb"))
    store.open()
    now = T0 + 30 * 86400
    retention = Retention(store, tsdb_days=7, request_log_days=20, clock=lambda: now)
    cutoff = retention.cutoff(20).timestamp()

    def row_groups(db: duckdb.DuckDBPyConnection) -> list[int]:
        db.execute("CHECKPOINT")
        rows = db.execute(
            "SELECT row_group_id, max(count) FROM pragma_storage_info('request_log') WHERE column_id = 0"
            " GROUP BY ALL ORDER BY 1"
        ).fetchall()
        return [size for _, size in rows]

    try:
        for day in (-2, -1, 1):  # three checkpoints, the first two batches past the retention
            batch = [make_record(i, timestamp=cutoff + day * 86400 + i) for i in range(3000)]
            await store.call(store.write_requests, batch)
            await store.call(row_groups, store.db)
        assert await store.call(row_groups, store.db) == [3000, 3000, 3000]  # vacuum merged them: [6000, 3000]
        assert await retention.prune_request_log() == 6000
        assert await store.call(row_groups, store.db) == [3000]
        assert await store.call(store.count_requests) == 3000
    finally:
        store.close()


async def test_the_writer_keeps_duckdbs_block_cache_within_its_budget(tmp_path: Any) -> None:
    """DuckDB keeps the blocks each checkpoint writes cached until memory_limit needs the room: a gateway's
    writes grew it for hours. The writer trims it to the budget; rows not checkpointed stay in memory (none
    spill), the memory limit is restored, and the dropped blocks read back from the file."""

    def memory(db: duckdb.DuckDBPyConnection) -> dict[str, tuple[float, float]]:
        rows = db.execute("SELECT tag, memory_usage_bytes, temporary_storage_bytes FROM duckdb_memory()").fetchall()
        return {tag: (used / 2**20, spilled / 2**20) for tag, used, spilled in rows}

    def write_and_checkpoint(db: duckdb.DuckDBPyConnection, start: int) -> None:
        store.write_requests([make_record(start + i, timestamp=T0 + start + i) for i in range(5000)])
        db.execute("CHECKPOINT")

    clock = [0.0]
    store = AnalyticsStore(str(tmp_path / "tokenhub.duckdb"), memory_limit_mib=64, cache_mib=1)
    store.cache_trim = trim = BlockCacheTrim("64MiB", 1, interval_secs=10, clock=lambda: clock[0])
    store.open()
    try:
        for start in range(0, 40_000, 5000):
            await store.call(write_and_checkpoint, store.db, start)
        await store.call(store.write_requests, [make_record(i, timestamp=T0 + i) for i in range(40_000, 41_000)])
        before = await store.call(memory, store.db)
        assert before["BASE_TABLE"][0] > 2 and trim.trims == 0  # not due yet: DuckDB kept its blocks

        clock[0] = 10.0  # due: the next writer call trims after its own work
        await store.call(store.count_requests)
        after = await store.call(memory, store.db)
        assert trim.trims == 1
        assert after["BASE_TABLE"][0] <= 1.0 < before["BASE_TABLE"][0]
        assert after["IN_MEMORY_TABLE"] == before["IN_MEMORY_TABLE"]  # the unwritten rows stay; nothing spilled
        assert all(spilled == 0 for _, spilled in after.values())
        assert store.db.execute("SELECT current_setting('memory_limit')").fetchall() == [("64.0 MiB",)]
        distinct = await store.call(lambda: store.db.execute("SELECT count(DISTINCT request_id) FROM request_log"))
        assert distinct.fetchall() == [(41_000,)]  # the dropped blocks read back from the file
    finally:
        store.close()


def test_a_cache_within_budget_is_left_alone_and_a_failed_trim_is_not_raised(tmp_path: Any) -> None:
    clock = [0.0]
    trim = BlockCacheTrim("64MiB", 16, interval_secs=10, clock=lambda: clock[0])
    db = duckdb.connect(str(tmp_path / "t.duckdb"), config={"memory_limit": "64MiB"})
    try:
        db.execute("CREATE TABLE t AS SELECT range AS a, md5(range::VARCHAR) AS b FROM range(200000)")
        db.execute("CHECKPOINT")
        clock[0] = 10.0
        trim.maybe_trim(db)  # due, and a few MiB cached: under the budget
        assert trim.trims == 0
        db.close()  # a closed connection fails the next trim: logged at debug, not raised into the writer
        clock[0] = 20.0
        trim.maybe_trim(db)
        assert trim.trims == 0
    finally:
        db.close()


async def test_background_prune_runs_on_its_interval(store: AnalyticsStore) -> None:
    old = datetime.now(UTC) - timedelta(days=10)
    await store.call(write_points, store.db, [Point(old, "latency", 1.0), Point(datetime.now(UTC), "latency", 2.0)])
    watched = _SignallingStore(store)
    retention = Retention(watched, tsdb_days=7, request_log_days=90, tsdb_every=0.02, request_log_every=3600)  # type: ignore[arg-type]
    job = Periodic("prune-tsdb", retention.tsdb_every, retention.prune_tsdb, first_run_now=False)
    await job.start()
    try:
        await asyncio.wait_for(watched.ran.wait(), 30)  # the first background prune has run (a hang guard)
        assert [v for _, v in points(await series(store, metric="latency"))] == [2.0]
    finally:
        await job.stop()


class _SignallingStore:
    """The store as Retention sees it (``call_with_db``), setting ``ran`` after each writer-thread job: the
    test waits on the prune itself instead of polling for its effect."""

    def __init__(self, store: AnalyticsStore) -> None:
        self._store = store
        self.ran = asyncio.Event()

    async def call_with_db(self, fn: Any, *args: Any) -> Any:
        result = await self._store.call_with_db(fn, *args)
        self.ran.set()
        return result


async def test_prune_points_counts_deleted_rows(store: AnalyticsStore) -> None:
    await store.call(write_points, store.db, [Point(at(i), "x", 1.0) for i in range(5)])
    assert await store.call(prune_points, store.db, at(3)) == 3


async def test_stats_windows_groups_and_percentiles(store: AnalyticsStore) -> None:
    now = datetime.fromtimestamp(T0 + 100_000, tz=UTC)
    base = now.timestamp()
    records = [
        make_record(i, timestamp=base - 30, model_id="a", provider_id="p1", latency_ms=float(i + 1), cost_usd=0.5)
        for i in range(20)
    ]
    records.append(make_record(20, timestamp=base - 600, model_id="b", provider_id="p2", status=502, cost_usd=0.0))
    records.append(make_record(21, timestamp=base - 7200, model_id="b", provider_id="p2", mode="cheap"))
    records.append(make_record(22, timestamp=base - 90_000, model_id="old"))  # older than every window
    await store.call(store.write_requests, records)

    result = await store.read(request_stats, now, {"0123456789abcdef": "test key"})
    by_window = {item["window"]: item for item in result["global"]}
    assert list(by_window) == ["1m", "5m", "1h", "24h"]
    assert [by_window[w]["request_count"] for w in by_window] == [20, 20, 21, 22]
    minute = by_window["1m"]
    assert minute["error_count"] == 0 and minute["avg_latency_ms"] == 10.5
    assert (minute["p50_latency_ms"], minute["p95_latency_ms"]) == (10.0, 19.0)
    assert minute["total_cost_usd"] == 10.0 and minute["total_tokens"] == 20 * 5 + sum(10 + i for i in range(20))
    hour = by_window["1h"]
    assert hour["error_count"] == 1 and hour["error_rate"] == pytest.approx(1 / 21)
    assert [(m["model_id"], m["request_count"]) for m in result["by_model"]["24h"]] == [("a", 20), ("b", 2)]
    assert [p["provider_id"] for p in result["by_provider"]["1h"]] == ["p1", "p2"]
    assert result["by_api_key"]["1m"][0]["api_key_name"] == "test key"
    assert {m["mode"]: m["request_count"] for m in result["by_mode"]["24h"]} == {"normal": 21, "cheap": 1}


async def test_trends_bucket_cost_latency_errors_and_tokens(store: AnalyticsStore) -> None:
    hour = 3600
    records = [
        make_record(0, timestamp=T0 + 10, model_id="a", cost_usd=0.25, latency_ms=100.0, tenant_id="acme"),
        make_record(1, timestamp=T0 + 20, model_id="a", cost_usd=0.25, latency_ms=300.0),
        make_record(2, timestamp=T0 + hour + 5, model_id="b", cost_usd=1.0, latency_ms=50.0),
        make_record(3, timestamp=T0 + hour + 6, model_id="", provider_id="", status=401, cost_usd=0.0),
    ]
    await store.call(store.write_requests, records)
    start = datetime.fromtimestamp(T0 - T0 % hour, tz=UTC)
    result = await store.read(request_trends, start, start + timedelta(hours=3), "hour")
    h0, h1 = "2023-11-14T22:00:00Z", "2023-11-14T23:00:00Z"
    assert [(r["t"], r["model_id"], r["requests"], r["cost_usd"]) for r in result["cost_per_model"]] == [
        (h0, "a", 2, 0.5),
        (h1, "b", 1, 1.0),
    ]
    assert [(r["t"], r["p95_latency_ms"]) for r in result["latency_per_provider"]] == [(h0, 300.0), (h1, 50.0)]
    assert [(r["t"], r["requests"], r["errors"], r["error_rate"]) for r in result["error_rate"]] == [
        (h0, 2, 0, 0.0),
        (h1, 2, 1, 0.5),
    ]
    assert [(r["t"], r["tenant_id"], r["input_tokens"]) for r in result["tokens_per_tenant"]] == [
        (h0, "acme", 10),
        (h0, "default", 11),
        (h1, "default", 25),
    ]
    by_day = await store.read(request_trends, start, start + timedelta(days=1), "day")
    assert [(r["t"], r["requests"]) for r in by_day["error_rate"]] == [("2023-11-14T00:00:00Z", 4)]


async def test_log_filters_and_pagination(store: AnalyticsStore) -> None:
    records = [make_record(i, model_id="a" if i % 2 else "b", status=200 if i % 3 else 502) for i in range(12)]
    await store.call(store.write_requests, records)
    page = await store.read(query_logs, LogFilter(model_id="a"), 4, 0)
    assert page["total"] == 6 and [r["request_id"] for r in page["logs"]] == [
        "req-00011",
        "req-00009",
        "req-00007",
        "req-00005",
    ]
    assert set(page["logs"][0]) == set(REQUEST_LOG_COLUMNS) and page["logs"][0]["reward"] is None
    errors = await store.read(query_logs, LogFilter(outcome="error"), 100, 0)
    assert [r["request_id"] for r in errors["logs"]] == ["req-00009", "req-00006", "req-00003", "req-00000"]
    ranged = await store.read(query_logs, LogFilter(start=at(2), end=at(4), status=200), 100, 0)
    assert [r["request_id"] for r in ranged["logs"]] == ["req-00004", "req-00002"]
    assert (await store.read(query_logs, LogFilter(model_id="a"), 4, 4))["logs"][-1]["request_id"] == "req-00001"


async def test_an_older_file_gains_the_new_columns(tmp_path: Any) -> None:
    path = str(tmp_path / "old.duckdb")
    old = duckdb.connect(path)
    old.execute(
        "CREATE TABLE request_log (timestamp TIMESTAMPTZ NOT NULL, request_id VARCHAR NOT NULL, tenant_id VARCHAR"
        " NOT NULL, api_key_id VARCHAR NOT NULL, endpoint VARCHAR NOT NULL, mode VARCHAR NOT NULL, model_id VARCHAR"
        " NOT NULL, provider_id VARCHAR NOT NULL, status INTEGER NOT NULL, error_class VARCHAR NOT NULL,"
        " error_message VARCHAR NOT NULL, input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,"
        " cost_usd DOUBLE NOT NULL, latency_ms DOUBLE NOT NULL, escalations INTEGER NOT NULL,"
        " routing_reason VARCHAR NOT NULL)"
    )
    old.execute(
        "INSERT INTO request_log VALUES (now(), 'old', 't', 'k', 'chat', '', '', '', 200, '', '', 1, 2,"
        " 0.1, 5.0, 0, '')"
    )
    old.close()
    store = AnalyticsStore(path)
    store.open()
    try:
        await store.call(store.write_requests, [make_record(1, ttft_ms=3.0)])
        page = await store.read(query_logs, LogFilter(), 10, 0)
        by_id = {row["request_id"]: row for row in page["logs"]}
        assert by_id["old"]["ttft_ms"] == 0 and by_id["old"]["reward"] is None
        assert by_id["req-00001"]["ttft_ms"] == 3.0
    finally:
        store.close()


async def test_the_database_refuses_file_access_from_any_connection_for_good(
    store: AnalyticsStore, tmp_path: Any
) -> None:
    cursor = store.new_cursor()
    try:
        with pytest.raises(duckdb.PermissionException):
            cursor.execute(f"COPY (SELECT 1) TO '{tmp_path}/leak.csv'")
        with pytest.raises(duckdb.Error, match="Cannot enable external access"):
            cursor.execute("SET enable_external_access = true")
        with pytest.raises(duckdb.Error, match="enable_external_access is disabled"):
            cursor.execute(f"SET allowed_directories = ['{tmp_path}/']")
        assert cursor.execute("SELECT current_setting('TimeZone')").fetchall() == [("UTC",)]
    finally:
        cursor.close()
    assert not (tmp_path / "leak.csv").exists()


class WarningLog:
    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append({"event": event, **fields})

    def counts(self) -> list[int]:
        return [line["count"] for line in self.lines if line["event"] == "records_dropped"]


async def test_dropped_records_are_counted_and_logged_at_a_bounded_rate(
    store: AnalyticsStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = WarningLog()
    monkeypatch.setattr(record_writer, "log", log)
    now = [0.0]
    drops: list[None] = []
    writer = RecordWriter(
        store, capacity=2, on_drop=lambda: drops.append(None), drop_log_interval=1.0, clock=lambda: now[0]
    )
    for i in range(10):  # 2 accepted, 8 dropped within the same second
        writer.submit(make_record(i))
    assert len(drops) == 8 and writer.dropped == 8
    assert log.counts() == [1]  # the first drop is reported at once, the next 7 are held back
    now[0] = 1.5
    writer.submit(make_record(99))  # the first drop after the interval reports what accumulated
    assert log.counts() == [1, 8]
    assert log.lines[-1]["dropped_total"] == 9 and log.lines[-1]["reason"] == "queue full"
    writer.submit(make_record(100))  # within the interval: held back...
    await writer.stop()  # ...and reported on stop, never silently lost
    assert log.counts() == [1, 8, 1]
    assert await store.call(store.count_requests) == 2


async def test_a_queue_that_stays_full_is_written_back_to_back() -> None:
    # Under sustained load the queue can hold a full batch after a flush without ever crossing the batch
    # size from below; the writer used to sleep its whole interval then (capping it near 10,000 rows/s).
    analytics = SpyAnalytics(":memory:")
    analytics.loop = asyncio.get_running_loop()
    analytics.open()
    analytics.release = threading.Event()
    # An hour's interval: sleeping it even once would end in the guard below, ~100x sooner.
    writer = RecordWriter(analytics, capacity=1000, batch_size=10, flush_interval=3600.0)
    writer.start()
    try:
        for i in range(50):
            writer.submit(make_record(i))
        await analytics.until(analytics.started.is_set)  # the first batch is being written
        for i in range(50, 100):
            writer.submit(make_record(i))  # 40 + 50 pending: never drops below the batch size
        analytics.release.set()
        await asyncio.wait_for(analytics.until(lambda: sum(analytics.batches) == 100), 30)
        assert analytics.batches == [10] * 10
    finally:
        analytics.release.set()
        await writer.stop()
        analytics.close()
