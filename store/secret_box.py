"""Seals provider API keys at rest with AES-256-GCM under a key file kept in the data directory.

The file is created once (mode 0600). This protects keys in SQLite backups and dumps; the password-based
vault (Argon2id) replaces the key file when it is enabled.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "gcm1:"


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

    def seal(self, plaintext: str) -> str:
        if not plaintext:
            return ""
        nonce = secrets.token_bytes(12)
        sealed = nonce + self._aead.encrypt(nonce, plaintext.encode(), None)
        return PREFIX + base64.b64encode(sealed).decode()

    def open(self, sealed: str) -> str:
        if not sealed:
            return ""
        if not sealed.startswith(PREFIX):
            raise SecretBoxError("unknown sealed value format")
        raw = base64.b64decode(sealed[len(PREFIX) :])
        try:
            return self._aead.decrypt(raw[:12], raw[12:], None).decode()
        except InvalidTag:
            raise SecretBoxError("sealed value does not match this data directory's key file") from None
