"""The admin token: from TOKENHUB_ADMIN_TOKEN, else the data directory's .admin-token, else generated once."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["MIN_ADMIN_TOKEN_CHARS", "TOKEN_FILE", "WeakAdminToken", "read_admin_token", "resolve_admin_token"]

TOKEN_FILE = ".admin-token"
# 32 hex characters are 128 bits: a token shorter than that is guessable faster than anything else we guard.
MIN_ADMIN_TOKEN_CHARS = 32


class WeakAdminToken(ValueError):
    """A configured or stored admin token is too short to stand between the network and the admin API."""


def resolve_admin_token(configured: str, data_dir: Path) -> tuple[str, bool]:
    """Returns (token, generated_now). A generated token is persisted with mode 0600 so restarts keep it.
    Raises WeakAdminToken for a token shorter than MIN_ADMIN_TOKEN_CHARS (settings check the variable; a
    hand-edited token file is checked here)."""
    if configured:
        _check(configured, "TOKENHUB_ADMIN_TOKEN")
        return configured, False
    path = data_dir / TOKEN_FILE
    if path.exists():
        token = path.read_text().strip()
        if token:
            _check(token, str(path))
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


def _check(token: str, source: str) -> None:
    if len(token) < MIN_ADMIN_TOKEN_CHARS:
        raise WeakAdminToken(
            f"the admin token from {source} has {len(token)} characters; at least {MIN_ADMIN_TOKEN_CHARS} are"
            " required (e.g. `openssl rand -hex 32`; delete the token file to have one generated)"
        )
