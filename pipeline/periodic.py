"""A background task that runs a coroutine function now and then every interval, surviving its failures."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger("tokenhub.periodic")


class Periodic:
    def __init__(self, name: str, interval_secs: float, job: Callable[[], Awaitable[object]]) -> None:
        self._name = name
        self._interval = interval_secs
        self._job = job
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start unless already running or the interval is 0 (turned off)."""
        if self._interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                await self._job()
            except Exception:  # one bad round must not end the job for the life of the process
                log.exception("periodic_job_failed", job=self._name)
            await asyncio.sleep(self._interval)
