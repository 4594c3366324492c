"""Waiting for a state instead of sleeping for a time: a test ordered by what it waits for passes on a slow
machine too, and one whose state never comes fails instead of hanging the suite."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def until(check: Callable[[], bool], seconds: float) -> None:
    """Return once `check()` holds, re-checked every 5 ms; fail the test after `seconds`."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)
