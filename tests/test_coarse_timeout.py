"""adapters/coarse_timeout.py: one timer per tick for every call in flight, with asyncio.timeout's semantics; and
its idle watch as a stream's reads use it (adapters/sse.py)."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from adapters.coarse_timeout import TICK_SECS, CoarseTimeouts
from adapters.sse import StreamStalled, read_events


async def test_a_call_past_its_deadline_raises_timeout_error_within_a_tick() -> None:
    book = CoarseTimeouts()
    started = time.monotonic()
    with pytest.raises(TimeoutError), book.within(0.2):
        await asyncio.sleep(5)
    # at its deadline, not the sleep's end; the bound is loose: a loaded machine's loop runs late
    assert 0.2 <= time.monotonic() - started < 2.0
    assert not book.calls


async def test_calls_in_flight_each_get_their_own_deadline() -> None:
    book = CoarseTimeouts()

    async def call(limit: float, takes: float) -> str:
        try:
            with book.within(limit):
                await asyncio.sleep(takes)
        except TimeoutError:
            return "timeout"
        return "ok"

    # the calls that end in time have seconds to spare, those that time out never end in time
    got = await asyncio.gather(call(3, 0.05), call(0.1, 5), call(5, 0.2), call(0.15, 5))
    assert got == ["ok", "timeout", "ok", "timeout"]
    assert not book.calls


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    book = CoarseTimeouts()

    async def call() -> None:
        with book.within(5):
            await asyncio.sleep(5)

    task = asyncio.create_task(call())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not book.calls


async def test_the_timer_runs_only_while_calls_are_in_flight() -> None:
    book = CoarseTimeouts()
    with book.within(5):
        await asyncio.sleep(0)
    await asyncio.sleep(TICK_SECS * 2)  # the armed tick fires once, finds nothing and does not re-arm
    assert book._timer is None


async def test_an_idle_watch_is_due_only_while_armed() -> None:
    book = CoarseTimeouts()
    loop = asyncio.get_running_loop()
    with book.idle_watch() as watch:
        await asyncio.sleep(3 * TICK_SECS)  # disarmed: never due, however long
        watch.deadline = loop.time() + 5
        await asyncio.sleep(TICK_SECS)  # armed, well within its deadline
        watch.deadline = math.inf
    assert not book.calls
    started = time.monotonic()
    with pytest.raises(TimeoutError), book.idle_watch() as watch:
        watch.deadline = loop.time() + 0.1
        await asyncio.sleep(5)
    assert time.monotonic() - started < 2.0  # due at its deadline, not at the sleep's end (loose: see above)
    assert not book.calls


async def test_a_stream_read_stalls_only_on_the_upstream_never_on_a_slow_reader() -> None:
    class Body:
        """Two events at once, then nothing: the upstream stalls after them."""

        def __init__(self) -> None:
            self.sent = False

        async def readany(self) -> bytes:
            if not self.sent:
                self.sent = True
                return b"data: 1\n\ndata: 2\n\n"
            await asyncio.sleep(5)
            return b""

    got = []
    with pytest.raises(StreamStalled):
        async for event in read_events(Body(), idle_timeout=0.1, timeouts=CoarseTimeouts()):
            got.append(event.data)
            await asyncio.sleep(0.3)  # a slow client between reads: three idle limits, not counted
    assert got == ["1", "2"]
