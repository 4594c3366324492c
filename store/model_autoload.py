"""The store side of `autoload_models`: a provider's model list made into rows, in one transaction.

A listed model is registered (weight 5, enabled, free until the pricing refresh or an admin sets prices)
unless its id is taken (by any model or alias) or a model of this provider already sends that name
upstream. Rows this provider's autoload wrote (`autoloaded = 1`) that the list no longer names are
deleted; nothing else ever is: an admin's row, or an autoloaded row an admin has since written to (which
clears the flag), stays whatever the provider lists.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["AUTOLOAD_WEIGHT", "Listed", "Synced", "sync_autoloaded"]

AUTOLOAD_WEIGHT = 5  # the spec's weight for autoloaded models (as for discovered vLLM models)


@dataclass(frozen=True, slots=True)
class Listed:
    id: str
    kind: str = "chat"
    max_context_tokens: int = 0  # 0 = not reported


@dataclass(frozen=True, slots=True)
class Synced:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    skipped: tuple[str, ...]  # listed but not registered: the id or the upstream name is already in use


def sync_autoloaded(db: sqlite3.Connection, provider_id: str, listed: Sequence[Listed]) -> Synced:
    """Make `provider_id`'s autoloaded rows match `listed` (config store thread)."""
    now = time.time()
    with db:
        rows = db.execute("SELECT id, provider_id, upstream_model, autoloaded FROM models").fetchall()
        aliases = {row[0] for row in db.execute("SELECT name FROM aliases")}
        taken = {row["id"] for row in rows} | aliases
        sent = {row["upstream_model"] or row["id"] for row in rows if row["provider_id"] == provider_id}
        mine = {row["id"] for row in rows if row["provider_id"] == provider_id and row["autoloaded"]}
        wanted = {m.id for m in listed}
        added, skipped = [], []
        for model in listed:
            if model.id in mine:
                continue
            if model.id in taken or model.id in sent:
                skipped.append(model.id)
                continue
            db.execute(
                "INSERT INTO models (id, provider_id, weight, max_context_tokens, enabled, kind, autoloaded,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, 1, ?, 1, ?, ?)",
                (model.id, provider_id, AUTOLOAD_WEIGHT, model.max_context_tokens, model.kind, now, now),
            )
            added.append(model.id)
        removed = sorted(mine - wanted)
        db.executemany("DELETE FROM models WHERE id = ? AND autoloaded = 1", [(model_id,) for model_id in removed])
    return Synced(tuple(added), tuple(removed), tuple(skipped))
