"""The host-local API key (spec row 74): an ordinary API key named ``host-local`` (default tenant, scopes
chat and plan, no budget or rate limit of its own) whose plaintext is written to ``<data dir>/.host-api-key``
(0600) at start-up, so tools on the same host can call /v1 without an admin creating a key for them.

Created once and reused across restarts: SQLite holds only its digest, like every key; the plaintext exists
only in the file. When the file's key is no longer known (revoked, or the database was replaced) a new one
is created and the file rewritten. Runs before serving, on the start-up thread.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from pipeline.admin_token import write_private_file
from store import api_keys
from store.config_store import DEFAULT_TENANT, KEY_PREFIX, key_digest

__all__ = ["HOST_KEY_FILE", "HOST_KEY_NAME", "HOST_KEY_SCOPES", "ensure_host_key"]

HOST_KEY_FILE = ".host-api-key"
HOST_KEY_NAME = "host-local"
HOST_KEY_SCOPES = ("chat", "plan")  # the API's default scopes


def ensure_host_key(db: sqlite3.Connection, data_dir: Path) -> tuple[str, bool]:
    """Returns (key id, created now). Reuses the file's key when SQLite still knows it."""
    path = data_dir / HOST_KEY_FILE
    existing = _read(path)
    if existing:
        row = db.execute("SELECT id FROM api_keys WHERE key_digest = ?", (key_digest(existing),)).fetchone()
        if row is not None:
            return row[0], False
    plaintext, record = api_keys.create(
        db, name=HOST_KEY_NAME, tenant_id=DEFAULT_TENANT, scopes=list(HOST_KEY_SCOPES), expires_at=None
    )
    write_private_file(path, plaintext)
    return record["id"], True


def _read(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return ""
    return text if text.startswith(KEY_PREFIX) else ""
