"""The admin token: from TOKENHUB_ADMIN_TOKEN, else the data directory's .admin-token, else generated once;
and ``AdminToken``, the live value the admin API checks, which POST /admin/v1/admin-token/rotate replaces."""

from __future__ import annotations

import hmac
import os
import re
import secrets
import threading
from pathlib import Path

__all__ = [
    "MAX_ADMIN_TOKEN_CHARS",
    "MIN_ADMIN_TOKEN_CHARS",
    "TOKEN_FILE",
    "AdminToken",
    "TokenFromEnvironment",
    "WeakAdminToken",
    "read_admin_token",
    "resolve_admin_token",
    "write_private_file",
]

TOKEN_FILE = ".admin-token"
# 32 hex characters are 128 bits: a token shorter than that is guessable faster than anything else we guard.
MIN_ADMIN_TOKEN_CHARS = 32
MAX_ADMIN_TOKEN_CHARS = 512
# Visible ASCII only: a token must survive an `Authorization: Bearer` header and a shell variable unchanged.
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")


class WeakAdminToken(ValueError):
    """A configured or stored admin token is too short to stand between the network and the admin API."""


class TokenFromEnvironment(RuntimeError):
    """The token is set by TOKENHUB_ADMIN_TOKEN: a rotation would be undone by the next restart."""


class AdminToken:
    """The live admin token. Every admin request compares against ``value`` (read each time, so a rotation
    takes effect on the very next request); ``path`` is the token file, None when the token comes from
    TOKENHUB_ADMIN_TOKEN (then it cannot be rotated here)."""

    def __init__(self, value: str, *, path: Path | None) -> None:
        if not value:
            raise ValueError("the admin API needs an admin token")
        self._value = value
        self.path = path
        self._lock = threading.Lock()  # rotations run on worker threads: one file write and swap at a time

    @property
    def value(self) -> str:
        return self._value

    def matches(self, presented: str) -> bool:
        return hmac.compare_digest(presented.encode(), self._value.encode())

    def rotate(self, new: str | None = None) -> str:
        """Blocking (writes the token file): a new token, random (256 bits) or ``new`` when given. The file
        is replaced atomically (0600) before the new value goes live, so a crash never leaves a server
        running on a token that is not on disk. Raises TokenFromEnvironment or WeakAdminToken."""
        if self.path is None:
            raise TokenFromEnvironment(
                "the admin token is set by TOKENHUB_ADMIN_TOKEN: change the variable and restart (a rotation here"
                " would be undone by the next restart)"
            )
        token = secrets.token_hex(32) if new is None else new
        if not MIN_ADMIN_TOKEN_CHARS <= len(token) <= MAX_ADMIN_TOKEN_CHARS or not _TOKEN_CHARS.fullmatch(token):
            raise WeakAdminToken(
                f"the admin token must be {MIN_ADMIN_TOKEN_CHARS}-{MAX_ADMIN_TOKEN_CHARS} visible ASCII characters"
                " (no spaces)"
            )
        with self._lock:
            write_private_file(self.path, token)
            self._value = token
        return token


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
    write_private_file(path, token)
    return token, True


def write_private_file(path: Path, token: str) -> None:
    """Replace a one-line secret file (the admin token, the host-local API key) atomically, readable by this
    user only (0600 whatever the umask)."""
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)  # a stale temporary file may have had another mode
        handle.write(token + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


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
