"""The vault's SQLite tables: one header row (salt, KDF parameters, canary) and one row per sealed secret.

Every function takes the config store's connection and runs on its thread. Functions that change more
than one row commit as one transaction, so a crash leaves either the old state or the new one.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from store.vault_crypto import KdfParams

__all__ = [
    "PROVIDER_KEY_PREFIX",
    "PROVIDER_KEY_SUFFIX",
    "SECRET_PREFIX",
    "VaultCorrupted",
    "VaultHeader",
    "create",
    "delete_secret",
    "load_header",
    "load_secret",
    "load_secrets",
    "provider_id_of",
    "provider_key_name",
    "rewrite",
    "sealed_provider_keys",
    "secret_key_of",
    "secret_name",
    "secret_names",
    "write_secret",
]

PROVIDER_KEY_PREFIX = "provider:"
PROVIDER_KEY_SUFFIX = ":api_key"
# Generic secrets (PUT /admin/v1/vault/secrets/{key}) live under their own prefix, so that API can never
# read or overwrite a provider's key.
SECRET_PREFIX = "secret:"


class VaultCorrupted(ValueError):
    """Stored vault data is damaged or was changed outside TokenHub."""


@dataclass(frozen=True, slots=True)
class VaultHeader:
    salt: bytes
    params: KdfParams
    canary: bytes
    created_at: float = 0.0
    rotated_at: float = 0.0


def provider_key_name(provider_id: str) -> str:
    return f"{PROVIDER_KEY_PREFIX}{provider_id}{PROVIDER_KEY_SUFFIX}"


def provider_id_of(name: str) -> str | None:
    if name.startswith(PROVIDER_KEY_PREFIX) and name.endswith(PROVIDER_KEY_SUFFIX):
        return name[len(PROVIDER_KEY_PREFIX) : -len(PROVIDER_KEY_SUFFIX)]
    return None


def secret_name(key: str) -> str:
    return SECRET_PREFIX + key


def secret_key_of(name: str) -> str | None:
    return name[len(SECRET_PREFIX) :] if name.startswith(SECRET_PREFIX) else None


def load_header(db: sqlite3.Connection) -> VaultHeader | None:
    row = db.execute("SELECT salt, kdf, canary, created_at, rotated_at FROM vault WHERE id = 1").fetchone()
    if row is None:
        return None
    salt, kdf, canary, created_at, rotated_at = row
    try:
        params = KdfParams.from_json(kdf)
    except (ValueError, KeyError, TypeError) as exc:
        raise VaultCorrupted(f"vault key-derivation parameters are unreadable ({exc})") from None
    if not isinstance(salt, bytes) or len(salt) < 16 or not isinstance(canary, bytes):
        raise VaultCorrupted("vault header (salt or canary) is damaged")
    return VaultHeader(salt, params, canary, created_at, rotated_at)


def load_secrets(db: sqlite3.Connection) -> dict[str, bytes]:
    return {name: blob for name, blob in db.execute("SELECT name, ciphertext FROM vault_secrets")}


def load_secret(db: sqlite3.Connection, name: str) -> bytes | None:
    row = db.execute("SELECT ciphertext FROM vault_secrets WHERE name = ?", (name,)).fetchone()
    return row[0] if row is not None else None


def secret_names(db: sqlite3.Connection) -> list[str]:
    return [row[0] for row in db.execute("SELECT name FROM vault_secrets ORDER BY name")]


def sealed_provider_keys(db: sqlite3.Connection) -> dict[str, str]:
    """Provider keys still sealed with the data directory's key file (before the vault existed)."""
    return {
        pid: sealed for pid, sealed in db.execute("SELECT id, api_key_sealed FROM providers WHERE api_key_sealed != ''")
    }


def create(db: sqlite3.Connection, header: VaultHeader, secrets: dict[str, bytes]) -> None:
    """Create the vault and move the given (already re-sealed) provider keys into it, in one transaction:
    a crash half-way leaves no vault and the key-file-sealed keys untouched."""
    now = time.time()
    with db:
        db.execute(
            "INSERT INTO vault (id, salt, kdf, canary, created_at, rotated_at) VALUES (1, ?, ?, ?, ?, ?)",
            (header.salt, header.params.to_json(), header.canary, now, now),
        )
        for name, blob in secrets.items():
            write_secret(db, name, blob)
            if (provider_id := provider_id_of(name)) is not None:
                db.execute("UPDATE providers SET api_key_sealed = '' WHERE id = ?", (provider_id,))


def rewrite(db: sqlite3.Connection, header: VaultHeader, secrets: dict[str, bytes]) -> None:
    """Replace the header and every secret in one transaction (password rotation). If anything fails
    before the commit, SQLite rolls back and the old vault is exactly as it was."""
    with db:
        db.execute(
            "UPDATE vault SET salt = ?, kdf = ?, canary = ?, rotated_at = ? WHERE id = 1",
            (header.salt, header.params.to_json(), header.canary, time.time()),
        )
        for name, blob in secrets.items():
            write_secret(db, name, blob)


def write_secret(db: sqlite3.Connection, name: str, blob: bytes) -> None:
    """Upsert one sealed secret inside the caller's transaction."""
    db.execute(
        "INSERT INTO vault_secrets (name, ciphertext, updated_at) VALUES (?, ?, ?) ON CONFLICT(name)"
        " DO UPDATE SET ciphertext = excluded.ciphertext, updated_at = excluded.updated_at",
        (name, blob, time.time()),
    )


def delete_secret(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("DELETE FROM vault_secrets WHERE name = ?", (name,)).rowcount > 0
