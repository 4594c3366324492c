"""The config store's durable copy of each API key's month-to-date spend when replicas share it in Redis.

Redis holds the live total; each replica writes what Redis says, as absolute values, every housekeeping round
(so several replicas writing never add up), and a month's copy seeds Redis when Redis has lost it. A copy
written before the key's budget was marked paid is ignored (that spend no longer counts).
"""

from __future__ import annotations

import sqlite3
import time

__all__ = ["load_spend_copy", "save_spend_copy"]


def load_spend_copy(db: sqlite3.Connection, month: str) -> dict[str, float]:
    rows = db.execute(
        "SELECT s.key_id, s.spend_usd FROM key_spend s LEFT JOIN api_keys k ON k.id = s.key_id"
        " WHERE s.month = ? AND (k.budget_reset_at IS NULL OR s.updated_at > k.budget_reset_at)",
        (month,),
    ).fetchall()
    return {key_id: float(spend) for key_id, spend in rows}


def save_spend_copy(db: sqlite3.Connection, month: str, spend: dict[str, float]) -> None:
    """One batched upsert of the keys whose spend changed."""
    if not spend:
        return
    now = time.time()
    with db:
        db.executemany(
            "INSERT INTO key_spend (key_id, month, spend_usd, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (key_id, month) DO UPDATE SET spend_usd = excluded.spend_usd,"
            " updated_at = excluded.updated_at",
            [(key_id, month, value, now) for key_id, value in spend.items()],
        )
