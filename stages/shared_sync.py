"""The background loop that pushes and pulls shared state (stages/shared_bandit.py, stages/shared_health.py).

Unlike `Periodic`, stopping never cancels a round in the middle of a Redis call (redis-py's connection release
is shielded from cancellation, so a cancelled call can hold the stop up): `stop` asks the loop to end and
waits for the round in progress, which `RedisLink.run` bounds by the Redis timeout. The last round runs at
stop, so what was learned just before a clean shutdown still reaches the other replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

__all__ = ["SyncLoop"]

log = structlog.get_logger("tokenhub.shared_sync")


class SyncLoop:
    def __init__(self, name: str, interval_secs: float, rounds: list[Callable[[], Awaitable[object]]]) -> None:
        self.name = name
        self.interval_secs = interval_secs
        self._rounds = rounds
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            self._stopping.set()
            await task

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval_secs)
            for job in self._rounds:
                try:
                    await job()
                except Exception:  # one bad round must not end the loop for the life of the process
                    log.exception("shared_sync_failed", job=self.name)
            if self._stopping.is_set():
                return
