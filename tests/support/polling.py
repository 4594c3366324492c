"""Waiting for a state instead of sleeping for a time: a test ordered by what it waits for passes on a slow
machine too, and one whose state never comes fails instead of hanging the suite."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def until(check: Callable[[], bool], seconds: float) -> None:
    """Return once `check()` holds, re-checked every 5 ms; fail the test after `seconds`."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def until_equal(read: Callable[[], Awaitable[T]], wanted: T, seconds: float, every: float = 0.01) -> None:
    """Return once `await read()` equals `wanted` (a state read over HTTP: metrics, ...), re-read every `every`
    seconds; fail the test after `seconds`, saying what it last read."""
    deadline = time.monotonic() + seconds
    while (seen := await read()) != wanted:
        assert time.monotonic() < deadline, f"still {seen!r} after {seconds} s, expected {wanted!r}"
        await asyncio.sleep(every)
