"""The admin audit trail in SQLite: one row per admin mutation, appended on the config store's thread.

A row says who (the admin token, from which IP), what (method, route, handler), on what (path ids or the
created id), how it ended (HTTP status) and a summary of the request body with every secret replaced.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
from dataclasses import asdict, dataclass
from typing import Any

REDACTED = "[REDACTED]"
MAX_DETAIL_CHARS = 4096
MAX_DEPTH = 6
_SECRET_NAMES = frozenset(
    {"api_key", "key", "password", "token", "secret", "value", "authorization", "credentials", "x-api-key"}
)
_SECRET_SUFFIXES = ("password", "_secret", "_token", "_key")
_KEY_LIKE = re.compile(r"tokenhub_[0-9a-f]{16,}|sk-[A-Za-z0-9_-]{8,}")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    timestamp: float
    actor: str
    client_ip: str
    method: str
    route: str
    action: str
    target: str
    detail: str  # JSON text, secrets removed
    status: int
    request_id: str


@dataclass(frozen=True, slots=True)
class AuditFilter:
    action: str | None = None
    target: str | None = None
    since: float | None = None
    until: float | None = None
    status: int | None = None

    def where(self) -> tuple[str, list[Any]]:
        clauses, args = [], []
        for column, value in (("action", self.action), ("target", self.target), ("status", self.status)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        if self.since is not None:
            clauses.append("timestamp >= ?")
            args.append(self.since)
        if self.until is not None:
            clauses.append("timestamp < ?")
            args.append(self.until)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


def append(db: sqlite3.Connection, entry: AuditEntry) -> None:
    row = asdict(entry)
    with db:
        db.execute(
            f"INSERT INTO audit_logs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
            tuple(row.values()),
        )


def prune(db: sqlite3.Connection, older_than: float) -> int:
    """Delete rows strictly older than ``older_than`` (unix seconds, config store thread); returns how many."""
    with db:
        return db.execute("DELETE FROM audit_logs WHERE timestamp < ?", (older_than,)).rowcount


def query(db: sqlite3.Connection, where: AuditFilter, limit: int, offset: int) -> dict[str, Any]:
    clause, args = where.where()
    total = db.execute(f"SELECT count(*) FROM audit_logs{clause}", args).fetchone()[0]
    rows = db.execute(
        f"SELECT * FROM audit_logs{clause} ORDER BY timestamp DESC, id DESC LIMIT ? OFFSET ?",
        [*args, limit, offset],
    ).fetchall()
    return {"logs": [_entry(row) for row in rows], "total": total}


def _entry(row: sqlite3.Row) -> dict[str, Any]:
    item = {key: row[key] for key in row.keys()}  # noqa: SIM118 - sqlite3.Row has no items()
    with contextlib.suppress(json.JSONDecodeError):
        item["detail"] = json.loads(item["detail"]) if item["detail"] else None
    item["resource"] = item["target"]  # the spec's name for it
    return item


def summarize_body(raw: bytes | None) -> str:
    """The request body as compact JSON with secrets replaced by [REDACTED], capped in size."""
    if not raw:
        return ""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return json.dumps({"unparsed_body_bytes": len(raw)})
    text = json.dumps(redact(data), separators=(",", ":"), ensure_ascii=False)
    if len(text) > MAX_DETAIL_CHARS:
        return json.dumps({"truncated": text[: MAX_DETAIL_CHARS - 64]})
    return text


def redact(value: Any, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        return "..."
    if isinstance(value, dict):
        return {
            str(k): REDACTED if is_secret_name(str(k)) else redact(v, depth + 1) for k, v in list(value.items())[:100]
        }
    if isinstance(value, list):
        return [redact(v, depth + 1) for v in value[:100]]
    if isinstance(value, str):
        return _KEY_LIKE.sub(REDACTED, value[:1000])
    return value


def is_secret_name(name: str) -> bool:
    lowered = name.lower()
    return lowered in _SECRET_NAMES or lowered.endswith(_SECRET_SUFFIXES)
