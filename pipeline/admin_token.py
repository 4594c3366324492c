"""The admin token: from TOKENHUB_ADMIN_TOKEN, else the data directory's .admin-token, else generated once."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

TOKEN_FILE = ".admin-token"


def resolve_admin_token(configured: str, data_dir: Path) -> tuple[str, bool]:
    """Returns (token, generated_now). A generated token is persisted with mode 0600 so restarts keep it."""
    if configured:
        return configured, False
    path = data_dir / TOKEN_FILE
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token, False
    token = secrets.token_hex(32)
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token, True


def read_admin_token(configured: str, data_dir: Path) -> tuple[str, str] | None:
    """(token, where it comes from) as the server would use it, without generating one; None if none yet."""
    if configured:
        return configured, "TOKENHUB_ADMIN_TOKEN"
    path = data_dir / TOKEN_FILE
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token, str(path)
    return None
