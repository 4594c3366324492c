"""adapters/coarse_timeout.py: one timer per tick for every call in flight, with asyncio.timeout's semantics."""

from __future__ import annotations

import asyncio
import time

import pytest

from adapters.coarse_timeout import TICK_SECS, CoarseTimeouts


async def test_a_call_past_its_deadline_raises_timeout_error_within_a_tick() -> None:
    book = CoarseTimeouts()
    started = time.monotonic()
    with pytest.raises(TimeoutError), book.within(0.2):
        await asyncio.sleep(5)
    assert 0.2 <= time.monotonic() - started < 0.2 + TICK_SECS + 0.2
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

    got = await asyncio.gather(call(0.3, 0.05), call(0.1, 5), call(5, 0.2), call(0.15, 5))
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
