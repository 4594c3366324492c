"""Configuration changes made by another process reach this one: a start/stop component that calls ``reload``
(which builds a new snapshot off to the side and swaps it) when another replica or worker committed one.

- PostgreSQL: a dedicated connection LISTENs on the channel every configuration write NOTIFYs in its own
  transaction (store/pg_connection.py). The connection is probed while idle and re-opened when lost; after
  every (re)connect the configuration is reloaded, since notifications sent meanwhile were missed.
- SQLite shared by several processes on one machine: ``PRAGMA data_version`` (a counter that moves when
  another connection commits to the file) is polled off the event loop every ``poll_secs``.

A reload that fails (the store unreachable a moment) is retried on the next round until one succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog

from store.config_store import ConfigStore

if TYPE_CHECKING:
    import psycopg

__all__ = ["ConfigWatcher"]

log = structlog.get_logger("tokenhub.config_watch")


class ConfigWatcher:
    name = "config-watcher"

    def __init__(
        self,
        store: ConfigStore,
        reload: Callable[[], Awaitable[None]],
        *,
        poll_secs: float = 0.25,
        probe_secs: float = 2.0,
        retry_secs: float = 0.5,
        on_state: Callable[[bool], None] | None = None,
    ) -> None:
        self._store = store
        self._reload = reload
        self._poll_secs = poll_secs
        self._probe_secs = probe_secs  # an idle LISTEN connection proves itself alive this often
        self._retry_secs = retry_secs
        self._on_state = on_state or (lambda up: None)
        self._task: asyncio.Task[None] | None = None
        self._pending = False  # a reload is owed (a change was seen, or a reload failed)
        self.up = True
        self.reloads = 0  # changes from elsewhere applied (for /healthz and tests)
        self.last_reload_at = 0.0

    @property
    def active(self) -> bool:
        """Only a store other processes can change needs watching (not ":memory:")."""
        return bool(self._store.database_url or self._store.sqlite_file)

    def status(self) -> dict[str, Any]:
        return {
            "backend": "postgresql" if self._store.database_url else "sqlite",
            "up": self.up,
            "reloads_from_elsewhere": self.reloads,
        }

    async def start(self) -> None:
        if self.active and self._task is None:
            run = self._listen if self._store.database_url else self._poll
            self._task = asyncio.create_task(run(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- both ----------------------------------------------------------------------------------------
    async def _apply(self) -> None:
        """Reload now; on failure remember that one is owed (retried next round)."""
        self._pending = True
        try:
            await self._reload()
        except Exception as exc:  # the store is unreachable a moment: the old snapshot keeps serving
            log.warning("config_reload_failed", error=type(exc).__name__)
            return
        self._pending = False
        self.reloads += 1
        self.last_reload_at = time.time()

    def _set_up(self, up: bool) -> None:
        if up != self.up:
            self.up = up
            if up:
                log.info("config_store_up")
            else:
                log.warning("config_store_down")
        self._on_state(up)

    # --- SQLite --------------------------------------------------------------------------------------
    async def _poll(self) -> None:
        store = self._store
        seen = await store.call(store.data_version)
        while True:
            await asyncio.sleep(self._poll_secs)
            try:
                version = await store.call(store.data_version)
            except Exception as exc:
                log.warning("config_watch_failed", error=type(exc).__name__)
                continue
            if version != seen or self._pending:
                seen = version
                await self._apply()

    # --- PostgreSQL ----------------------------------------------------------------------------------
    async def _listen(self) -> None:
        import psycopg  # only a PostgreSQL store listens: the SQLite default never loads the driver

        from store.pg_connection import CHANNEL, connect_kwargs

        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._store.database_url, autocommit=True, **connect_kwargs(self._probe_secs)
                )
            except (psycopg.Error, OSError) as exc:
                self._set_up(False)
                log.debug("config_listen_connect_failed", error=type(exc).__name__)
                await asyncio.sleep(self._retry_secs)
                continue
            try:
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self._set_up(True)
                    await self._apply()  # whatever changed while this replica was not listening
                    await self._receive(conn)
            except (psycopg.Error, OSError, TimeoutError) as exc:
                self._set_up(False)
                log.warning("config_listen_lost", error=type(exc).__name__)
                await asyncio.sleep(self._retry_secs)

    async def _receive(self, conn: psycopg.AsyncConnection[Any]) -> None:
        origin = self._store.origin
        while True:
            notes = [n async for n in conn.notifies(timeout=self._probe_secs, stop_after=1)]
            if not notes:  # idle: is the server still there? (a vanished one would otherwise wait forever)
                await asyncio.wait_for(conn.execute("SELECT 1"), self._probe_secs)
                if self._pending:
                    await self._apply()
                continue
            notes += [n async for n in conn.notifies(timeout=0.01)]  # a burst of writes: one reload
            if self._pending or any(n.payload != origin for n in notes):
                await self._apply()
