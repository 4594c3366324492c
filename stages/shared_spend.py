"""Keeps the shared spend and holds healthy in the background (docs/scaling.md), as one start/stop component.

Each round (every few seconds): renew the leases of this replica's holds in Redis (a killed replica's holds
expire, a live one's never do), read the month's spend from Redis into the local view (seeding it first if
Redis lost it), and write it to the config store's durable copy. When Redis comes back after an outage: push
what was recorded locally meanwhile (the flusher's backlog), then the same round. Starting: the flusher, then
one round (it seeds Redis on a cold start). Stopping: the flusher's last batch.
"""

from __future__ import annotations

import contextlib

import structlog

from pipeline.periodic import Periodic
from store.config_store import ConfigStore
from store.redis_limits import HOLD_LEASE_SECS, OpFlusher, RedisLimits
from store.redis_link import RedisDown
from store.shared_budgets import SharedKeyLedger, SharedReservations
from store.spend_copy import load_spend_copy, save_spend_copy

__all__ = ["SharedSpend"]

log = structlog.get_logger("tokenhub.shared_spend")
INTERVAL_SECS = HOLD_LEASE_SECS / 6  # 5 s: a lease is renewed several times before it could expire


class SharedSpend:
    name = "shared-spend"

    def __init__(
        self,
        *,
        limits: RedisLimits,
        flusher: OpFlusher,
        ledger: SharedKeyLedger,
        reservations: SharedReservations,
        config: ConfigStore,
        interval_secs: float = INTERVAL_SECS,
    ) -> None:
        self._limits = limits
        self._flusher = flusher
        self._ledger = ledger
        self._reservations = reservations
        self._config = config
        self._written: dict[str, float] = {}  # what the copy holds for this month (written by this replica)
        self._written_month = ""
        self._started = False
        self._periodic = Periodic(self.name, interval_secs, self.tick, first_run_now=False)
        limits.link.on_up(self.resync)

    async def start(self) -> None:
        await self._flusher.start()
        self._started = True
        with contextlib.suppress(RedisDown):  # else the link's way back up runs it
            await self.sync_month()
        await self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()
        self._started = False
        await self._flusher.stop()

    async def tick(self) -> None:
        self._flusher.add(*self._reservations.renewals())
        try:
            await self.sync_month()
        except RedisDown:
            return  # local state meanwhile; the flusher keeps the backlog

    async def resync(self) -> None:
        """Redis answers again: the backlog first (costs recorded meanwhile, releases), then the month."""
        if not self._started:
            return  # start-up's own round does it, after the request log seeded the ledger
        await self._flusher.resync()
        await self.sync_month()

    async def sync_month(self) -> None:
        ledger = self._ledger
        month = ledger.month
        seeded, spend = await self._limits.month_spend(month)
        if not seeded:
            copy = await self._config.call(load_spend_copy, self._config.db, month)
            if await self._limits.seed_month(month, ledger.seed_values(copy)):
                log.info("shared_spend_seeded", month=month, keys=len(copy))
            seeded, spend = await self._limits.month_spend(month)
        ledger.observe_month(month, spend)
        await self._persist(month, spend)

    async def _persist(self, month: str, spend: dict[str, float]) -> None:
        if month != self._written_month:
            self._written, self._written_month = {}, month
        changed = {key_id: value for key_id, value in spend.items() if self._written.get(key_id) != value}
        if not changed:
            return
        try:
            await self._config.call(save_spend_copy, self._config.db, month, changed)
        except Exception as exc:  # the next round writes it again
            log.warning("shared_spend_copy_failed", keys=len(changed), error=type(exc).__name__)
            return
        self._written.update(changed)
