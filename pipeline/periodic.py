"""The one helper every background job runs on: a coroutine function run now (or after one interval) and
then every interval, surviving its own failures, stopped by cancellation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from pipeline.errors import ConfigStoreUnavailable

__all__ = ["Periodic"]

log = structlog.get_logger("tokenhub.periodic")


class Periodic:
    """A background job as a start/stop component. `first_run_now=False` waits one interval before the
    first run (prunes and heartbeats have nothing to do at start-up); an interval of 0 turns the job off."""

    def __init__(
        self,
        name: str,
        interval_secs: float,
        job: Callable[[], Awaitable[object]],
        *,
        first_run_now: bool = True,
    ) -> None:
        self.name = name
        self.interval_secs = interval_secs
        self._job = job
        self._first_run_now = first_run_now
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    async def start(self) -> None:
        """Start unless already running or turned off. Returns at once: the first run happens in the task."""
        if self.interval_secs > 0 and self._task is None:
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        if not self._first_run_now:
            await asyncio.sleep(self.interval_secs)
        while True:
            try:
                await self._job()
            except ConfigStoreUnavailable:  # expected while PostgreSQL is away (docs/scaling.md): no traceback
                log.warning("periodic_job_skipped", job=self.name, reason="config_store_unavailable")
            except Exception:  # one bad round must not end the job for the life of the process
                log.exception("periodic_job_failed", job=self.name)
            await asyncio.sleep(self.interval_secs)
