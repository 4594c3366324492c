"""Security housekeeping in the background: API-key last-used times flushed to SQLite in one batch every
few seconds (and at shutdown), the vault locked once it has been idle for its auto-lock time, and, at
start-up, each key's month-to-date spend read from the DuckDB request log."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import structlog

from store import api_keys
from store.key_ledger import month_spend

if TYPE_CHECKING:
    from pipeline.services import Services

log = structlog.get_logger("tokenhub.housekeeping")
INTERVAL_SECS = 5.0


class Housekeeping:
    def __init__(self, services: Services, *, interval_secs: float = INTERVAL_SECS) -> None:
        self._services = services
        self._interval = interval_secs
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        services = self._services
        resets = await services.config.call(api_keys.budget_resets, services.config.db)
        ledger = services.key_ledger
        ledger.seed(await services.analytics.read(month_spend, ledger.month_start, resets))
        self._task = asyncio.create_task(self._run(), name="security-housekeeping")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush_last_used()

    async def tick(self) -> None:
        """One round; tests call it directly with a controlled clock."""
        await self.flush_last_used()
        await self.lock_idle_vault()

    async def flush_last_used(self) -> None:
        services = self._services
        pending = services.key_ledger.take_last_used()
        if not pending:
            return
        try:
            await services.config.call(api_keys.record_last_used, services.config.db, pending)
        except Exception as exc:  # keep them for the next round rather than lose them
            services.key_ledger.restore_last_used(pending)
            log.warning("last_used_flush_failed", keys=len(pending), error=type(exc).__name__)

    async def lock_idle_vault(self) -> None:
        services = self._services
        if services.vault.idle_expired() and services.vault.lock():
            log.info("vault_locked", reason="idle", idle_secs=services.vault.auto_lock_secs)
            await services.reload_config()  # vault-held keys leave the adapters

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.tick()
            except Exception:
                log.exception("housekeeping_failed")
