"""What each workflow activity produced, persisted: an activity retried after it did its work returns the
stored outcome instead of calling the provider (and charging the key) a second time.

Keyed by the step's deterministic request id (`<plan request id>.<n>-<role>`, or the chat's request id), in a
SQLite file of its own in the data directory, on one dedicated thread (the event loop never touches the
disk). Entries older than a week are pruned at start: a workflow does not retry a step for that long.
Within one process, `once` also joins a second call for a key that is still running (a retry racing the
first attempt) to the first one.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from pydantic import TypeAdapter

__all__ = ["StepCache"]

T = TypeVar("T")
KEEP_SECS = 7 * 86400


class StepCache:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        self._running: dict[str, asyncio.Future[Any]] = {}

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="step-cache")
        await self._call(self._open_blocking)

    async def close(self) -> None:
        if self._executor is None:
            return
        await self._call(self._close_blocking)
        self._executor.shutdown(wait=True)
        self._executor = None

    async def once(self, key: str, kind: type[T], work: Callable[[], Awaitable[T]]) -> T:
        """`work()`'s result for `key`: the stored one if it ran before, else run it once and store it."""
        running = self._running.get(key)
        if running is not None:
            return await asyncio.shield(running)
        adapter = TypeAdapter(kind)
        stored = await self._call(self._get, key)
        if stored is not None:
            return adapter.validate_json(stored)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        try:
            result = await work()
            await self._call(self._put, key, adapter.dump_json(result))
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
            future.exception()  # retrieved: a failure nobody joined is not an "unretrieved" warning
            raise
        finally:
            self._running.pop(key, None)
        future.set_result(result)
        return result

    async def joined(self, key: str, kind: type[T]) -> T | None:
        """The outcome for `key` if its work runs now (awaited) or ran before; None if it never started."""
        running = self._running.get(key)
        if running is not None:
            return await asyncio.shield(running)
        stored = await self._call(self._get, key)
        return None if stored is None or stored == b"null" else TypeAdapter(kind).validate_json(stored)

    async def mark(self, key: str) -> None:
        """Store a marker (no outcome) under `key`."""
        await self._call(self._put, key, b"null")

    async def has(self, key: str) -> bool:
        return await self._call(self._get, key) is not None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._executor is not None, "the step cache is not open"
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _open_blocking(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # an outcome must survive a crash the moment it is stored
        db.execute("CREATE TABLE IF NOT EXISTS step_outcomes (key TEXT PRIMARY KEY, outcome BLOB, stored_at REAL)")
        db.execute("DELETE FROM step_outcomes WHERE stored_at < ?", (time.time() - KEEP_SECS,))
        self._db = db

    def _close_blocking(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _get(self, key: str) -> bytes | None:
        assert self._db is not None
        row = self._db.execute("SELECT outcome FROM step_outcomes WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def _put(self, key: str, outcome: bytes) -> None:
        assert self._db is not None
        self._db.execute(
            "INSERT OR REPLACE INTO step_outcomes (key, outcome, stored_at) VALUES (?, ?, ?)",
            (key, outcome, time.time()),
        )
