"""Security housekeeping in the background: API-key last-used times flushed to SQLite in one batch every
few seconds (and at shutdown), the vault locked once it has been idle for its auto-lock time, and, at
start-up, each key's month-to-date spend read from the DuckDB request log.

A start/stop component; its rounds run on the periodic helper. It is handed exactly what it touches (no
`Services`), so it imports nothing from the composition root."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog

from pipeline.periodic import Periodic
from store import api_keys
from store.analytics import AnalyticsStore
from store.config_store import ConfigStore
from store.key_ledger import KeyLedger, month_spend
from store.vault import Vault

__all__ = ["Housekeeping"]

log = structlog.get_logger("tokenhub.housekeeping")
INTERVAL_SECS = 5.0


class Housekeeping:
    name = "security-housekeeping"

    def __init__(
        self,
        *,
        config: ConfigStore,
        analytics: AnalyticsStore,
        ledger: KeyLedger,
        vault: Vault,
        reload_config: Callable[[], Awaitable[None]],
        interval_secs: float = INTERVAL_SECS,
    ) -> None:
        self._config = config
        self._analytics = analytics
        self._ledger = ledger
        self._vault = vault
        self._reload_config = reload_config
        self._periodic = Periodic(self.name, interval_secs, self.tick, first_run_now=False)

    async def start(self) -> None:
        """Seed per-key spend from the request log (before serving), then start the rounds."""
        resets = await self._config.call(api_keys.budget_resets, self._config.db)
        self._ledger.seed(await self._analytics.read(month_spend, self._ledger.month_start, resets))
        await self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()
        await self.flush_last_used()  # the last batch of last-used times

    async def tick(self) -> None:
        """One round; tests call it directly with a controlled clock."""
        await self.flush_last_used()
        await self.lock_idle_vault()

    async def flush_last_used(self) -> None:
        pending = self._ledger.take_last_used()
        if not pending:
            return
        try:
            await self._config.call(api_keys.record_last_used, self._config.db, pending)
        except Exception as exc:  # keep them for the next round rather than lose them
            self._ledger.restore_last_used(pending)
            log.warning("last_used_flush_failed", keys=len(pending), error=type(exc).__name__)

    async def lock_idle_vault(self) -> None:
        vault = self._vault
        if vault.idle_expired() and vault.lock():
            log.info("vault_locked", reason="idle", idle_secs=vault.auto_lock_secs)
            await self._reload_config()  # vault-held keys leave the adapters
