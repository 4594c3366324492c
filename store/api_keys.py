"""API-key lifecycle in SQLite: create with limits, edit, rotate, budget
reset, last-used flushes, listing. Runs on the config store's thread. Only SHA-256 digests are stored."""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from typing import Any

from store.config_store import KEY_PREFIX, key_digest

PREFIX_CHARS = len(KEY_PREFIX) + 8  # "tokenhub_" + 8 hex: enough to recognise a key, useless to guess it
EDITABLE = frozenset(
    {
        "name",
        "scopes",
        "enabled",
        "expires_at",
        "monthly_budget_usd",
        "rate_limit_rpm",
        "rate_limit_tpm",
        "rotation_days",
    }
)
DAY_SECS = 86400.0


def new_plaintext() -> str:
    return KEY_PREFIX + secrets.token_hex(32)  # 256 random bits


def create(
    db: sqlite3.Connection,
    *,
    name: str,
    tenant_id: str,
    scopes: list[str],
    expires_at: float | None,
    monthly_budget_usd: float = 0.0,
    rate_limit_rpm: int = 0,
    rate_limit_tpm: int = 0,
    rotation_days: int = 0,
) -> tuple[str, dict[str, Any]]:
    """Returns (plaintext, listing). The plaintext exists only in the return value."""
    plaintext = new_plaintext()
    key_id = secrets.token_hex(8)  # independent of the secret: listing ids reveals none of its bits
    now = time.time()
    with db:
        db.execute(
            "INSERT INTO api_keys (id, key_digest, key_prefix, name, tenant_id, scopes, created_at, expires_at,"
            " enabled, monthly_budget_usd, rate_limit_rpm, rate_limit_tpm, rotated_at, rotation_days)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?)",
            (
                key_id,
                key_digest(plaintext),
                plaintext[:PREFIX_CHARS],
                name,
                tenant_id,
                json.dumps(scopes),
                now,
                expires_at,
                monthly_budget_usd,
                rate_limit_rpm,
                rate_limit_tpm,
                now,
                rotation_days,
            ),
        )
    return plaintext, listing(_row(db, key_id))


def get(db: sqlite3.Connection, key_id: str) -> dict[str, Any] | None:
    row = _row(db, key_id)
    return listing(row) if row is not None else None


def list_page(db: sqlite3.Connection, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
    total = db.execute("SELECT count(*) FROM api_keys").fetchone()[0]
    rows = db.execute(
        "SELECT * FROM api_keys ORDER BY created_at DESC, id LIMIT ? OFFSET ?", (limit, offset)
    ).fetchall()
    return [listing(row) for row in rows], total


def update(db: sqlite3.Connection, key_id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
    """Apply the given column changes; None when the key does not exist."""
    unknown = set(changes) - EDITABLE
    if unknown:
        raise ValueError(f"not editable: {', '.join(sorted(unknown))}")
    values = {k: json.dumps(v) if k == "scopes" else int(v) if k == "enabled" else v for k, v in changes.items()}
    with db:
        if values:
            assignments = ", ".join(f"{column} = ?" for column in values)
            if db.execute(f"UPDATE api_keys SET {assignments} WHERE id = ?", (*values.values(), key_id)).rowcount == 0:
                return None
    return get(db, key_id)


def rotate(db: sqlite3.Connection, key_id: str) -> tuple[str, dict[str, Any]] | None:
    """A new secret for the same key (id, name, scopes, limits unchanged); the old one stops matching."""
    plaintext = new_plaintext()
    with db:
        changed = db.execute(
            "UPDATE api_keys SET key_digest = ?, key_prefix = ?, rotated_at = ? WHERE id = ?",
            (key_digest(plaintext), plaintext[:PREFIX_CHARS], time.time(), key_id),
        ).rowcount
    if not changed:
        return None
    return plaintext, listing(_row(db, key_id))


def disable_rotation_expired(db: sqlite3.Connection, now: float) -> list[dict[str, Any]]:
    """Disable every enabled key with a rotation period that has not been rotated within it, in one
    transaction; returns their listings. Measured from the last rotation (creation counts as one), so a
    freshly rotated key is safe; a key exactly ``rotation_days`` old is due."""
    due = "rotation_days > 0 AND enabled = 1 AND coalesce(rotated_at, created_at) + rotation_days * ? <= ?"
    with db:
        ids = [row[0] for row in db.execute(f"SELECT id FROM api_keys WHERE {due}", (DAY_SECS, now))]
        db.executemany("UPDATE api_keys SET enabled = 0 WHERE id = ?", [(key_id,) for key_id in ids])
    return [listing(_row(db, key_id)) for key_id in ids]


def mark_paid(db: sqlite3.Connection, key_id: str, now: float) -> bool:
    """Budget spend counts from ``now`` on (an invoice was settled, or the limit was lifted)."""
    with db:
        return db.execute("UPDATE api_keys SET budget_reset_at = ? WHERE id = ?", (now, key_id)).rowcount > 0


def record_last_used(db: sqlite3.Connection, used: dict[str, float]) -> None:
    """One batched write for every key used since the last flush."""
    if not used:
        return
    with db:
        db.executemany(
            "UPDATE api_keys SET last_used_at = ? WHERE id = ? AND coalesce(last_used_at, 0) < ?",
            [(ts, key_id, ts) for key_id, ts in used.items()],
        )


def budget_resets(db: sqlite3.Connection) -> dict[str, float]:
    return {
        key_id: ts
        for key_id, ts in db.execute("SELECT id, budget_reset_at FROM api_keys WHERE budget_reset_at IS NOT NULL")
    }


def _row(db: sqlite3.Connection, key_id: str) -> sqlite3.Row:
    return db.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()


def listing(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "key_prefix": row["key_prefix"],
        "name": row["name"],
        "tenant_id": row["tenant_id"],
        "scopes": json.loads(row["scopes"] or "[]"),
        "created_at": row["created_at"],
        "expires_at": row["expires_at"],
        "enabled": bool(row["enabled"]),
        "last_used_at": row["last_used_at"],
        "rotated_at": row["rotated_at"],
        "monthly_budget_usd": row["monthly_budget_usd"],
        "budget_reset_at": row["budget_reset_at"],
        "rate_limit_rpm": row["rate_limit_rpm"],
        "rate_limit_tpm": row["rate_limit_tpm"],
        "rotation_days": row["rotation_days"],
    }
