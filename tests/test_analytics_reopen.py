"""The analytics store opens its database again every `reopen_rows` written rows (store/analytics.py,
REOPEN_ROWS): no row is lost, reads keep working on fresh cursors, a reopen never closes a cursor a read is
using, and an in-memory database is never reopened."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import duckdb
import pytest

from store.analytics import AnalyticsStore
from store.retention import Retention
from store.startup_pages import duckdb_library
from tests.conftest import Hub
from tests.support.pages import private_kib, private_pages_before_release
from tests.test_observability_api import samples, value
from tests.test_record_writer import make_record


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[AnalyticsStore]:
    analytics = AnalyticsStore(str(tmp_path / "analytics.duckdb"), reopen_rows=100)
    analytics.open()
    yield analytics
    analytics.close()


async def _write(store: AnalyticsStore, first: int, count: int) -> None:
    await store.call(store.write_requests, [make_record(first + i) for i in range(count)])


def _count(cursor: duckdb.DuckDBPyConnection) -> int:
    return int(cursor.execute("SELECT count(*) FROM request_log").fetchall()[0][0])


async def test_the_database_is_opened_again_after_enough_rows_and_keeps_every_row(store: AnalyticsStore) -> None:
    await _write(store, 0, 60)
    assert store.reopens == 0
    assert await store.read(_count) == 60  # the reader thread's cursor, made before any reopen
    await _write(store, 60, 60)
    assert store.reopens == 1
    await _write(store, 120, 150)
    assert store.reopens == 2
    # Both reader threads' cursors were closed by the reopens: each read gets a fresh one.
    counts = await asyncio.gather(*(store.read(_count) for _ in range(6)))
    assert counts == [270] * 6
    assert await store.read_cluster(_count) == 270
    ids = await store.read(lambda db: db.execute("SELECT count(DISTINCT request_id) FROM request_log").fetchall())
    assert ids == [(270,)]


async def test_a_reopen_gives_back_the_library_pages_its_opening_ran(store: AnalyticsStore) -> None:
    library = duckdb_library()
    assert library is not None
    await _write(store, 0, 60)
    own = private_pages_before_release(library)  # this store's opening ran DuckDB's catalogue
    await _write(store, 60, 60)
    assert store.reopens == 1
    assert private_kib(library) < own / 4  # the reopen ran it again, and released it


async def test_a_reopen_waits_for_the_read_that_is_running(store: AnalyticsStore) -> None:
    started, release = threading.Event(), threading.Event()

    def slow_read(cursor: duckdb.DuckDBPyConnection) -> int:
        started.set()
        assert release.wait(10)
        return _count(cursor)  # its cursor must still be open

    reading = asyncio.ensure_future(store.read(slow_read))
    assert await asyncio.to_thread(started.wait, 10)
    await _write(store, 0, 150)
    assert store.reopens == 0  # due, but a read runs
    release.set()
    assert await reading == 150
    await _write(store, 150, 1)  # the next write finds no read running
    assert store.reopens == 1
    assert await store.read(_count) == 151


async def test_reads_that_come_during_a_reopen_wait_for_it(store: AnalyticsStore) -> None:
    seen: list[list[int]] = [[], []]

    async def read_repeatedly(counts: list[int]) -> None:
        for _ in range(30):
            counts.append(await store.read(_count))

    readers = [asyncio.ensure_future(read_repeatedly(counts)) for counts in seen]
    written = 0
    # A running read defers a reopen, so how many of the first ten batches end in one depends on the machine:
    # write on (bounded) until the readers are done and three reopens have happened.
    for _ in range(100):
        await _write(store, written, 60)
        written += 60
        if written >= 600 and store.reopens >= 3 and all(reader.done() for reader in readers):
            break
    await asyncio.gather(*readers)
    assert store.reopens >= 3
    for counts in seen:  # every read answered, and none saw rows go missing across a reopen
        assert len(counts) == 30
        assert counts == sorted(counts)
        assert all(0 <= n <= written for n in counts)
    assert await store.read(_count) == written


async def test_a_read_that_comes_while_the_database_opens_again_waits_for_it(
    store: AnalyticsStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = store.open
    opening, resume = threading.Event(), threading.Event()

    def slow_open() -> None:
        opening.set()
        assert resume.wait(10)
        real_open()

    monkeypatch.setattr(store, "open", slow_open)
    writing = asyncio.ensure_future(_write(store, 0, 150))
    assert await asyncio.to_thread(opening.wait, 10)  # closed, not open yet
    reading = asyncio.ensure_future(store.read(_count))
    await asyncio.sleep(0.05)
    assert not reading.done()
    resume.set()
    await writing
    assert await reading == 150


async def test_work_handed_the_connection_gets_the_one_of_its_moment(store: AnalyticsStore) -> None:
    """Retention and backups pass the connection through `call_with_db`: one taken on the event loop before
    a reopen would be closed by the time the writer thread ran the work."""
    await _write(store, 0, 50)
    retention = Retention(store, request_log_days=1, tsdb_days=1)
    # The write runs first on the writer thread and reopens; the prune, queued behind it, still finds an open
    # connection.
    _, deleted = await asyncio.gather(_write(store, 50, 100), retention.prune_request_log())
    assert store.reopens == 1
    assert deleted == 150  # make_record's rows are from 2023
    assert await store.read(_count) == 0


async def test_an_in_memory_database_is_never_reopened() -> None:
    store = AnalyticsStore(":memory:", reopen_rows=10)
    store.open()
    try:
        await _write(store, 0, 50)
        assert store.reopens == 0
        assert await store.read(_count) == 50
    finally:
        store.close()


async def test_a_failed_reopen_is_tried_again_before_the_next_write(
    store: AnalyticsStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = store.open
    fail = [True]

    def flaky_open() -> None:
        if fail.pop(0) if fail else False:
            raise duckdb.IOException("IO Error: simulated")
        real_open()

    monkeypatch.setattr(store, "open", flaky_open)
    await _write(store, 0, 150)  # the write itself succeeded: its caller sees no error
    assert store.reopens == 0
    await _write(store, 150, 10)  # opens first, then writes
    assert store.reopens == 1
    assert await store.read(_count) == 160


async def test_the_servers_reopens_are_counted_in_its_metrics(ready_hub: tuple[Hub, str]) -> None:
    hub, key = ready_hub
    analytics = hub.services.analytics
    assert isinstance(analytics, AnalyticsStore)
    analytics._reopen_rows = 1  # after every batch the writer stores
    await hub.chat_ok(key)
    deadline = asyncio.get_running_loop().time() + 15
    while analytics.reopens == 0:  # the record writer stores the row within its interval
        assert asyncio.get_running_loop().time() < deadline, "the row was never stored"
        await asyncio.sleep(0.05)
    parsed = samples(await (await hub.client.get("/metrics")).text())
    assert value(parsed, "tokenhub_analytics_reopens_total") == analytics.reopens >= 1
    await hub.chat_ok(key)  # and the server goes on serving and recording on the new connection
    rows = await analytics.read(_count)
    assert rows >= 1
