"""Per-API-key bookkeeping kept in memory on the request path: month-to-date spend and last-used times.

Spend is updated from every request record (a dict update) and seeded at start-up from the DuckDB
request log; last-used times are collected here and flushed to SQLite in batches by the housekeeping
task, never one write per request. Months are calendar months in UTC.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

__all__ = ["KeyLedger", "month_bounds", "month_spend"]


def month_bounds(ts: float) -> tuple[float, float]:
    """(start of ts's UTC month, start of the next one) as unix seconds."""
    moment = datetime.fromtimestamp(ts, tz=UTC)
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if start.month == 12:
        following = start.replace(year=start.year + 1, month=1)
    else:
        following = start.replace(month=start.month + 1)
    return start.timestamp(), following.timestamp()


class KeyLedger:
    def __init__(self, now: float | None = None) -> None:
        self._month_start, self._next_month = month_bounds(time.time() if now is None else now)
        self._spend: dict[str, float] = {}
        self._pending_used: dict[str, float] = {}

    @property
    def month_start(self) -> float:
        return self._month_start

    # --- spend -------------------------------------------------------------------------------------
    def add_cost(self, key_id: str, cost_usd: float, ts: float) -> None:
        if ts >= self._next_month:
            self._roll(ts)
        elif ts < self._month_start:
            return  # a record from last month (a request that straddled midnight)
        self._spend[key_id] = self._spend.get(key_id, 0.0) + cost_usd

    def spent(self, key_id: str, now: float) -> float:
        if now >= self._next_month:
            self._roll(now)
        return self._spend.get(key_id, 0.0)

    def reset(self, key_id: str) -> None:
        """The key's budget was marked paid: spend counts from now."""
        self._spend.pop(key_id, None)

    def seed(self, spend: dict[str, float]) -> None:
        """Start-up, before serving: month-to-date spend per key from the request log."""
        self._spend = dict(spend)

    def _roll(self, ts: float) -> None:
        self._month_start, self._next_month = month_bounds(ts)
        self._spend = {}

    # --- last used ---------------------------------------------------------------------------------
    def touch(self, key_id: str, ts: float) -> None:
        self._pending_used[key_id] = ts

    def last_used(self, key_id: str) -> float | None:
        return self._pending_used.get(key_id)

    def take_last_used(self) -> dict[str, float]:
        pending, self._pending_used = self._pending_used, {}
        return pending

    def restore_last_used(self, pending: dict[str, float]) -> None:
        """A flush failed: keep its entries (newer touches win) for the next attempt."""
        for key_id, ts in pending.items():
            if ts > self._pending_used.get(key_id, 0.0):
                self._pending_used[key_id] = ts


def month_spend(db: Any, month_start: float, resets: dict[str, float]) -> dict[str, float]:
    """On a DuckDB reader cursor: month-to-date cost per key; a key marked paid this month counts from then."""
    rows = db.execute(
        "SELECT api_key_id, sum(cost_usd) FROM request_log WHERE timestamp >= to_timestamp(?)"
        " AND api_key_id <> '' GROUP BY api_key_id",
        [month_start],
    ).fetchall()
    spend = {key_id: float(total or 0.0) for key_id, total in rows}
    for key_id, reset_at in resets.items():
        if reset_at > month_start and key_id in spend:
            row = db.execute(
                "SELECT sum(cost_usd) FROM request_log WHERE api_key_id = ? AND timestamp >= to_timestamp(?)",
                [key_id, reset_at],
            ).fetchall()
            spend[key_id] = float(row[0][0] or 0.0)
    return spend
