"""stages/shared_events.py: live events between processes through the machine's Redis (and a private one that is
killed and restarted). Each "process" here is a bus, a Redis link and its outlet, as each worker has.

The real workers (an event stream on one, a request served by the other) are in tests/test_workers.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson

from pipeline.events import EventBus, Subscriber
from stages.shared_events import CHECK_SECS, FLUSH_SECS, SharedEvents
from store.redis_link import RedisLink
from tests.support.backing import REDIS_URL, fresh_redis_prefix, private_redis
from tests.support.polling import until
from tests.support.server import free_port

WAIT_SECS = 10.0  # a few checks, on a loaded machine


class Process:
    def __init__(self, url: str, prefix: str) -> None:
        self.link = RedisLink(url, prefix, timeout_secs=1.0)
        self.bus = EventBus()
        self.shared = SharedEvents(self.link, self.bus)

    async def start(self) -> None:
        await self.link.start()
        await self.shared.start()

    async def stop(self) -> None:
        await self.shared.stop()
        await self.link.stop()


@asynccontextmanager
async def processes(count: int, url: str = REDIS_URL) -> AsyncIterator[list[Process]]:
    async with fresh_redis_prefix() as prefix:
        started = [Process(url, prefix) for _ in range(count)]
        for process in started:
            await process.start()
        try:
            yield started
        finally:
            for process in started:
                await process.stop()


async def received(subscriber: Subscriber, settle_secs: float = 3 * FLUSH_SECS + 0.3) -> list[dict[str, Any]]:
    """Every event that reaches `subscriber` until none has come for `settle_secs`."""
    events: list[dict[str, Any]] = []
    while True:
        try:
            frames = await asyncio.wait_for(subscriber.next_frames(), settle_secs)
        except TimeoutError:
            return events
        for frame in frames:
            events.append(orjson.loads(frame.split(b"\ndata: ", 1)[1]))


async def test_a_process_sends_its_events_only_while_another_has_subscribers() -> None:
    async with processes(2) as (a, b):
        await asyncio.sleep(2 * CHECK_SECS)
        assert not a.bus.active and not b.bus.active  # nobody listens: nothing is built, nothing is sent

        watcher = b.bus.subscribe()
        await until(lambda: a.bus.active, WAIT_SECS)
        assert not b.bus.remote_listeners  # b's own subscription is not another process's
        a.bus.publish("route_success", request_id="from-a")
        b.bus.publish("route_success", request_id="from-b")
        a.bus.publish("heartbeat", reason="a's own")  # each process has its own heartbeats
        assert sorted(e["request_id"] for e in await received(watcher)) == ["from-a", "from-b"]

        b.bus.unsubscribe(watcher)
        await until(lambda: not a.bus.active, WAIT_SECS)


async def test_every_subscriber_gets_each_event_once_whichever_process_published_it() -> None:
    async with processes(3) as processes_:
        watchers = [p.bus.subscribe() for p in processes_]
        await until(lambda: all(p.bus.remote_listeners for p in processes_), WAIT_SECS)
        for n, process in enumerate(processes_):
            for i in range(3):
                process.bus.publish("route_success", request_id=f"p{n}-{i}")
        wanted = sorted(f"p{n}-{i}" for n in range(3) for i in range(3))
        for process, watcher in zip(processes_, watchers, strict=True):
            events = await received(watcher)
            assert sorted(e["request_id"] for e in events) == wanted
            own = [e["request_id"] for e in events if e["request_id"].startswith(f"p{processes_.index(process)}")]
            assert own == sorted(own)  # a process's own events in publish order


async def test_without_redis_events_stay_local() -> None:
    process = Process(f"redis://127.0.0.1:{free_port()}/0", "t")
    await process.start()
    try:
        watcher = process.bus.subscribe()
        await asyncio.sleep(2 * CHECK_SECS)
        assert not process.bus.remote_listeners
        process.bus.publish("route_success", request_id="local")
        assert [e["request_id"] for e in await received(watcher)] == ["local"]
    finally:
        await process.stop()


async def test_a_restarted_redis_brings_the_other_processes_events_back() -> None:
    async with private_redis() as server, processes(2, server.url) as (a, b):
        watcher = b.bus.subscribe()
        await until(lambda: a.bus.active, WAIT_SECS)
        server.stop()
        await until(lambda: not a.bus.remote_listeners, WAIT_SECS)
        a.bus.publish("route_success", request_id="while-down")  # pub/sub keeps nothing: lost, a never blocks
        await server.start()
        await until(lambda: a.bus.remote_listeners, 3 * WAIT_SECS)  # b subscribed again, a sees it
        a.bus.publish("route_success", request_id="after")
        assert [e["request_id"] for e in await received(watcher)] == ["after"]
