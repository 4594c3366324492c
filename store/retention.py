"""Retention: how long time-series points, request-log rows and audit rows are kept, and the prunes.

The services run each prune on the periodic helper every `tsdb_every` / `request_log_every` seconds,
the first one interval after start-up (spec: hourly and every 6 hours; the audit trail, in SQLite, on the
request log's schedule with its own retention). The time-series retention can be
changed at runtime (``PUT /admin/v1/tsdb/retention``); like the original it lives in memory and a restart
goes back to the configured value. Prunes run on the DuckDB writer thread, so they never race a batch insert.

With a log export directory the same prunes delete exported segments (store/segments.py) of every replica,
whole segments only: a segment goes once its entire window ended before the cutoff, so rows up to one
segment span older than the retention may be read from a segment until then.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog

from store import audit
from store.analytics import AnalyticsStore
from store.config_store import ConfigStore
from store.segments import delete_segments_before
from store.tsdb import prune_points, prune_requests

__all__ = ["REQUEST_LOG_PRUNE_EVERY_SECS", "TSDB_PRUNE_EVERY_SECS", "Retention"]

log = structlog.get_logger("tokenhub.retention")
TSDB_PRUNE_EVERY_SECS = 3600.0  # spec: hourly, first run after an hour
REQUEST_LOG_PRUNE_EVERY_SECS = 6 * 3600.0  # spec: every 6 hours, first run after 6 hours


class Retention:
    def __init__(
        self,
        analytics: AnalyticsStore,
        *,
        tsdb_days: int,
        request_log_days: int,
        config: ConfigStore | None = None,
        audit_days: int = 90,
        tsdb_every: float = TSDB_PRUNE_EVERY_SECS,
        request_log_every: float = REQUEST_LOG_PRUNE_EVERY_SECS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if tsdb_days < 1 or request_log_days < 1 or audit_days < 1:
            raise ValueError("retention must be at least one day")
        self._analytics = analytics
        self._config = config  # the audit trail's store; None: no audit prune
        self.audit_days = audit_days
        self.tsdb_days = tsdb_days
        self.request_log_days = request_log_days
        self.tsdb_every = tsdb_every
        self.request_log_every = request_log_every
        self._clock = clock

    def set_tsdb_days(self, days: int) -> None:
        if days < 1:
            raise ValueError("days must be >= 1")
        self.tsdb_days = days

    def cutoff(self, days: int) -> datetime:
        return datetime.fromtimestamp(self._clock(), tz=UTC) - timedelta(days=days)

    async def prune_tsdb(self) -> int:
        """Delete points older than now - retention; returns how many."""
        return await self._prune("tsdb_points", prune_points, self.tsdb_days)

    async def prune_request_log(self) -> int:
        return await self._prune("request_log", prune_requests, self.request_log_days)

    async def prune_segments(self, table: str, days: int) -> int:
        """Delete ``table``'s exported segments (every replica's) entirely older than now - ``days``."""
        root = self._analytics.export_dir
        if not root:
            return 0
        cutoff = self.cutoff(days)
        deleted = await asyncio.to_thread(delete_segments_before, Path(root), table, cutoff.timestamp())
        self._analytics.forget_segments(s.path for s in deleted)
        if deleted:
            log.info("pruned_segments", table=table, deleted=len(deleted), older_than=cutoff.isoformat())
        return len(deleted)

    async def prune_audit(self) -> int:
        """Delete audit rows older than now - the audit retention (on the config store's thread)."""
        if self._config is None:
            return 0
        cutoff = self.cutoff(self.audit_days)
        deleted = await self._config.call(audit.prune, self._config.db, cutoff.timestamp())
        log.info(
            "pruned", table="audit_logs", deleted=deleted, older_than=cutoff.isoformat(), retention_days=self.audit_days
        )
        return deleted

    async def _prune(self, table: str, fn: Callable[..., int], days: int) -> int:
        cutoff = self.cutoff(days)
        deleted = await self._analytics.call_with_db(fn, cutoff)
        log.info("pruned", table=table, deleted=deleted, older_than=cutoff.isoformat(), retention_days=days)
        await self.prune_segments(table, days)
        return deleted
