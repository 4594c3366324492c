"""The worker side of the DuckDB owner, in one process: what may travel on the owner's socket, and a record
relay that buffers while no owner listens, drops (and counts) past its capacity, and delivers on stop.

The owner here is a real aiohttp server on a Unix socket with the owner's own routes (pipeline/edge/owner.py)
over a real AnalyticsStore and RecordWriter; the end-to-end version with processes is tests/test_workers.py.
"""

from __future__ import annotations

import asyncio
import os
import pickle
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiohttp import web

from pipeline.edge.owner import owner_routes
from store.analytics import AnalyticsStore
from store.owner_link import OwnerLink, OwnerOnly, OwnerUnavailable, RemoteAnalytics
from store.owner_wire import WireRefused, dumps, function_ref, loads
from store.record_relay import RecordRelay
from store.record_writer import RecordWriter
from store.request_queries import LogFilter, query_logs
from tests.test_record_writer import make_record


def test_values_travel_and_callables_do_not() -> None:
    record = make_record(3)
    sent = [record, LogFilter(model_id="m")]
    assert repr(loads(dumps(sent))) == repr(sent)  # repr: the record's unset numbers are NaN
    for hostile in (os.system, print, pickle.loads, ValueError("x")):
        with pytest.raises(WireRefused):
            loads(pickle.dumps(hostile))


def test_only_public_store_queries_may_be_named() -> None:
    assert function_ref(query_logs) == "store.request_queries:query_logs"
    for fn in (os.system, print, lambda cursor: cursor, make_record):
        with pytest.raises(WireRefused):
            function_ref(fn)


class Owner:
    """The owner's routes on a Unix socket, over a real DuckDB file."""

    def __init__(self, tmp_path: Path) -> None:
        self.socket = tmp_path / "owner.sock"
        self.analytics = AnalyticsStore(str(tmp_path / "a.duckdb"))
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        self.analytics.open()
        self.records = RecordWriter(self.analytics, capacity=10_000)
        self.records.start()
        app = web.Application()
        app.router.add_routes(owner_routes(SimpleNamespace(records=self.records, analytics=self.analytics)))  # type: ignore[arg-type]
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.UnixSite(self.runner, str(self.socket)).start()

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()
        await self.records.stop()
        self.analytics.close()


@pytest.fixture
async def link(tmp_path: Path) -> AsyncIterator[OwnerLink]:
    link = OwnerLink(tmp_path / "owner.sock", wait_secs=0.3)
    link.start()
    yield link
    await link.close()


async def test_relay_buffers_without_owner_drops_past_capacity_and_delivers_on_stop(
    tmp_path: Path, link: OwnerLink
) -> None:
    drops: list[int] = []
    relay = RecordRelay(link, capacity=5, drain_secs=30, on_drop=lambda: drops.append(1))
    relay.start()
    accepted = [relay.submit(make_record(i)) for i in range(7)]  # no owner yet: all wait in the buffer
    assert accepted == [True] * 5 + [False] * 2 and len(drops) == 2 and relay.depth == 5
    await asyncio.sleep(0.5)  # the sender tried and keeps them
    assert relay.depth == 5

    owner = Owner(tmp_path)
    await owner.start()
    try:
        await relay.stop()  # delivers what it holds to the owner that came up
        assert relay.depth == 0 and relay.written == 5
        remote = RemoteAnalytics(link)
        page = await remote.read(query_logs, LogFilter(), 100, 0, None)
        assert sorted(row["request_id"] for row in page["logs"]) == sorted(make_record(i).request_id for i in range(5))
        with pytest.raises(OwnerOnly):
            await remote.call(os.getcwd)
    finally:
        await owner.stop()


async def test_a_read_without_an_owner_fails_503_after_its_wait(link: OwnerLink) -> None:
    with pytest.raises(OwnerUnavailable) as caught:
        await RemoteAnalytics(link).read(query_logs, LogFilter(), 1, 0, None)
    assert caught.value.status == 503
