"""Seals provider API keys at rest with AES-256-GCM under a key file kept in the data directory.

The file is created once (mode 0600). This protects keys in SQLite backups and dumps; the password-based
vault (Argon2id) replaces the key file when it is enabled.

Each value is sealed with its name (``provider:<id>:api_key``, the vault's naming) as associated data,
so a sealed value copied onto another provider's row fails to open instead of handing that provider
another's key. Values sealed before names were bound (prefix ``gcm1:``) are re-sealed once when the
store opens (``upgrade_legacy_seals``); after that only the bound form is accepted.
"""

from __future__ import annotations

import base64
import os
import secrets
import sqlite3
from pathlib import Path

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from store.vault_store import provider_key_name

__all__ = ["SecretBox", "SecretBoxError", "upgrade_legacy_seals"]

log = structlog.get_logger("tokenhub.secret_box")
PREFIX = "gcm2:"  # nonce || ciphertext || tag, the value's name bound as associated data
LEGACY_PREFIX = "gcm1:"  # the same without associated data: read once, by the upgrade


class SecretBoxError(ValueError):
    pass


class SecretBox:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @classmethod
    def from_key_file(cls, path: Path) -> SecretBox:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_bytes(32))
        key = path.read_bytes()
        if len(key) != 32:
            raise SecretBoxError(f"{path} must hold exactly 32 bytes")
        return cls(key)

    def seal(self, plaintext: str, *, context: str) -> str:
        """Seal ``plaintext`` for the value named ``context``; only ``open`` with the same name opens it."""
        if not plaintext:
            return ""
        nonce = secrets.token_bytes(12)
        sealed = nonce + self._aead.encrypt(nonce, plaintext.encode(), context.encode())
        return PREFIX + base64.b64encode(sealed).decode()

    def open(self, sealed: str, *, context: str) -> str:
        if not sealed:
            return ""
        if sealed.startswith(LEGACY_PREFIX):
            raise SecretBoxError("sealed value predates name binding and was not upgraded")
        if not sealed.startswith(PREFIX):
            raise SecretBoxError("unknown sealed value format")
        return self._decrypt(sealed[len(PREFIX) :], context.encode())

    def open_legacy(self, sealed: str) -> str:
        """A ``gcm1:`` value (no associated data). Only the one-time upgrade reads these."""
        if not sealed.startswith(LEGACY_PREFIX):
            raise SecretBoxError("not a legacy sealed value")
        return self._decrypt(sealed[len(LEGACY_PREFIX) :], None)

    def _decrypt(self, encoded: str, aad: bytes | None) -> str:
        try:
            raw = base64.b64decode(encoded, validate=True)
            return self._aead.decrypt(raw[:12], raw[12:], aad).decode()
        except (InvalidTag, ValueError):
            raise SecretBoxError(
                "sealed value does not match this data directory's key file (or belongs to another provider)"
            ) from None


def upgrade_legacy_seals(db: sqlite3.Connection, box: SecretBox) -> int:
    """Re-seal every provider key still in the ``gcm1:`` form with its name bound, in one transaction.
    Returns how many were upgraded. A value this key file cannot open is left as it was (and logged):
    it was unreadable before and stays so."""
    rows = db.execute(
        "SELECT id, api_key_sealed FROM providers WHERE api_key_sealed LIKE ?", (LEGACY_PREFIX + "%",)
    ).fetchall()
    upgraded: list[tuple[str, str]] = []
    for provider_id, sealed in rows:
        try:
            plaintext = box.open_legacy(sealed)
        except SecretBoxError:
            log.warning("sealed_provider_key_unreadable", provider_id=provider_id)
            continue
        upgraded.append((box.seal(plaintext, context=provider_key_name(provider_id)), provider_id))
    if upgraded:
        with db:
            db.executemany("UPDATE providers SET api_key_sealed = ? WHERE id = ?", upgraded)
        log.info("sealed_provider_keys_upgraded", count=len(upgraded))
    return len(upgraded)
