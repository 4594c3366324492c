"""The credential vault: provider keys sealed with AES-256-GCM under a key derived from an admin password.

States: not initialized (no vault row: provider keys stay sealed with the key file) -> locked (rows
exist, no key in memory) <-> unlocked (the derived key in memory). The first unlock sets the password and
moves every key-file-sealed provider key into the vault, in one transaction.

Threads: Argon2id runs in the loop's default executor; SQLite work runs on the config store's thread
(``config.call``); ``seal`` / ``open`` are called from that thread too (snapshot loads, provider writes).
The key is only ever replaced whole, so a reader sees the old key or the new one, never a mix.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import structlog

from store import vault_store
from store.secret_box import SecretBox
from store.vault_crypto import (
    KdfParams,
    SealBroken,
    canary_matches,
    derive_key,
    new_salt,
    open_sealed,
    seal,
    seal_canary,
)
from store.vault_store import VaultCorrupted, VaultHeader

__all__ = [
    "ConfigThread",
    "PasswordRejected",
    "UnlockOutcome",
    "Vault",
    "VaultDamaged",
    "VaultDisabled",
    "VaultError",
    "VaultLockedError",
    "WrongPassword",
    "delete_secret",
    "provider_vault_keys",
    "put_secret",
    "read_secret",
    "secret_keys",
    "store_provider_key",
]

log = structlog.get_logger("tokenhub.vault")
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024
T = TypeVar("T")


class ConfigThread(Protocol):
    """What the vault needs of the configuration store (store/config_store.py's ConfigStore): its SQLite
    connection, the thread that may use it, and the key-file seal keys are moved out of. A protocol, so
    the store can import the vault without the vault importing the store."""

    @property
    def db(self) -> sqlite3.Connection: ...

    @property
    def secret_box(self) -> SecretBox: ...

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...


class VaultError(Exception):
    """Base of the vault's refusals; ``kind`` is the API error type."""

    kind = "vault_error"


class VaultDisabled(VaultError):
    kind = "vault_disabled"


class VaultLockedError(VaultError):
    kind = "vault_locked"


class WrongPassword(VaultError):
    kind = "unlock_failed"


class PasswordRejected(VaultError):
    kind = "invalid_password"


class VaultDamaged(VaultError):
    kind = "vault_corrupted"


@dataclass(frozen=True, slots=True)
class UnlockOutcome:
    initialized: bool  # this unlock created the vault (set the password)
    migrated_keys: int  # provider keys moved from the key file into the vault


class Vault:
    def __init__(
        self,
        *,
        enabled: bool,
        params: KdfParams,
        auto_lock_secs: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.enabled = enabled
        self.params = params  # for new vaults and rotations; an existing vault keeps its own
        self.auto_lock_secs = auto_lock_secs  # 0 = never
        self.clock = clock
        self.initialized = False
        self._key: bytearray | None = None
        self._last_used = 0.0
        self._busy = asyncio.Lock()  # one unlock / rotate at a time: each holds 64 MiB of Argon2 memory

    # --- state -------------------------------------------------------------------------------------
    @property
    def unlocked(self) -> bool:
        return self._key is not None

    def load(self, db: sqlite3.Connection) -> None:
        """Learn whether a vault exists (at start-up). A damaged header still counts as existing."""
        try:
            header = vault_store.load_header(db)
        except VaultCorrupted:
            self.initialized = True
            return
        self.initialized = header is not None
        if header is not None and header.params.weak:
            # Made with test-strength parameters: usable, but the next rotation should re-derive the key.
            log.warning(
                "vault_kdf_weak",
                time_cost=header.params.time_cost,
                memory_kib=header.params.memory_kib,
                fix="POST /admin/v1/vault/rotate re-seals under the configured parameters",
            )

    def touch(self) -> None:
        """Mark the vault as in use: postpones the auto-lock."""
        self._last_used = self.clock()

    def idle_expired(self) -> bool:
        return bool(self.auto_lock_secs) and self.unlocked and self.clock() - self._last_used >= self.auto_lock_secs

    def lock(self) -> bool:
        """Forget the key (overwritten first, as far as Python allows). Returns False if already locked."""
        key, self._key = self._key, None
        if key is None:
            return False
        key[:] = bytes(len(key))
        return True

    def status(self) -> dict[str, Any]:
        idle = self.clock() - self._last_used if self.unlocked else None
        return {
            "enabled": self.enabled,
            "initialized": self.initialized,
            "locked": not self.unlocked,
            "auto_lock_secs": self.auto_lock_secs,
            "auto_lock_in_secs": (
                round(max(0.0, self.auto_lock_secs - idle), 1) if idle is not None and self.auto_lock_secs else None
            ),
        }

    # --- sealing (config store thread) -------------------------------------------------------------
    def seal(self, name: str, plaintext: str) -> bytes:
        key = self._require_key()
        self.touch()
        return seal(key, name, plaintext.encode())

    def open(self, name: str, blob: bytes) -> str:
        """Raises VaultLockedError, or SealBroken when the blob does not authenticate."""
        key = self._require_key()
        self.touch()
        return open_sealed(key, name, blob).decode()

    def require_unlocked(self) -> None:
        """Refuses, with the reason an operator can act on, unless secrets can be sealed and opened now."""
        if not self.enabled:
            raise VaultDisabled("the vault is disabled (TOKENHUB_VAULT_ENABLED=false)")
        if not self.initialized:
            raise VaultLockedError(
                "the vault is not set up: unlock it once (POST /admin/v1/vault/unlock) to set a password"
            )
        if not self.unlocked:
            raise VaultLockedError("the vault is locked: unlock it (POST /admin/v1/vault/unlock)")

    def _require_key(self) -> bytearray:
        key = self._key
        if key is None:
            raise VaultLockedError("the vault is locked")
        return key

    # --- unlock ------------------------------------------------------------------------------------
    async def unlock(self, password: str, config: ConfigThread) -> UnlockOutcome:
        self._check_password(password)
        loop = asyncio.get_running_loop()
        async with self._busy:
            header, blobs = await config.call(_read_all, config.db)
            if header is None:
                salt = new_salt()
                key = await loop.run_in_executor(None, derive_key, password, salt, self.params)
                migrated = await config.call(self._create, config, key, salt)
                return UnlockOutcome(True, migrated)
            key = await loop.run_in_executor(None, _open_vault, password, header, blobs)
            self._install(key)
            return UnlockOutcome(False, 0)

    def unlock_blocking(self, password: str, config: ConfigThread) -> UnlockOutcome:
        """Start-up (TOKENHUB_VAULT_PASSWORD): the same steps, before the server serves anything."""
        self._check_password(password)
        header, blobs = _read_all(config.db)
        if header is None:
            salt = new_salt()
            return UnlockOutcome(True, self._create(config, derive_key(password, salt, self.params), salt))
        self._install(_open_vault(password, header, blobs))
        return UnlockOutcome(False, 0)

    def _create(self, config: ConfigThread, key: bytearray, salt: bytes) -> int:
        """On the store thread: create the vault and move the key-file-sealed provider keys into it."""
        db = config.db
        if vault_store.load_header(db) is not None:  # another unlock created it meanwhile
            raise WrongPassword("the vault was initialized concurrently; unlock it with its password")
        moved: dict[str, bytes] = {}
        for provider_id, sealed in vault_store.sealed_provider_keys(db).items():
            name = vault_store.provider_key_name(provider_id)
            try:
                plaintext = config.secret_box.open(sealed, context=name)
            except ValueError:
                log.warning("sealed_provider_key_unreadable", provider_id=provider_id)
                continue
            moved[name] = seal(key, name, plaintext.encode())
        vault_store.create(db, VaultHeader(salt, self.params, seal_canary(key)), moved)
        self.initialized = True
        self._install(key)
        log.info("vault_initialized", migrated_provider_keys=len(moved))
        return len(moved)

    def _install(self, key: bytearray) -> None:
        old, self._key = self._key, key
        if old is not None and old is not key:
            old[:] = bytes(len(old))
        self.touch()

    def _check_password(self, password: str) -> None:
        if not self.enabled:
            raise VaultDisabled("the vault is disabled (TOKENHUB_VAULT_ENABLED=false)")
        if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
            raise PasswordRejected(f"the password must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters long")

    # --- rotation ----------------------------------------------------------------------------------
    async def rotate(self, old_password: str, new_password: str, config: ConfigThread) -> int:
        """Re-seal every secret under a key derived from the new password, in one SQLite transaction.
        Returns how many secrets were re-sealed. The vault must be unlocked and ``old_password`` right."""
        if not self.enabled:
            raise VaultDisabled("the vault is disabled (TOKENHUB_VAULT_ENABLED=false)")
        self._check_password(new_password)
        loop = asyncio.get_running_loop()
        async with self._busy:
            if not self.unlocked:
                raise VaultLockedError("the vault is locked: unlock it before rotating the password")
            header = await config.call(vault_store.load_header, config.db)
            if header is None:
                raise VaultLockedError("the vault is not initialized: unlock it once to set a password")
            old_key = await loop.run_in_executor(None, derive_key, old_password, header.salt, header.params)
            live = self._key
            if live is None or not secrets.compare_digest(bytes(old_key), bytes(live)):
                raise WrongPassword("the old password does not match")
            salt = new_salt()
            new_key = await loop.run_in_executor(None, derive_key, new_password, salt, self.params)
            return await config.call(self._rewrite, config.db, old_key, new_key, salt)

    def _rewrite(self, db: sqlite3.Connection, old_key: bytearray, new_key: bytearray, salt: bytes) -> int:
        """On the store thread, so no secret can be written between reading and re-sealing them all."""
        resealed: dict[str, bytes] = {}
        for name, blob in vault_store.load_secrets(db).items():
            try:
                plaintext = open_sealed(old_key, name, blob)
            except SealBroken as exc:
                raise VaultDamaged(f"{exc}; nothing was changed") from None
            resealed[name] = seal(new_key, name, plaintext)
        vault_store.rewrite(db, VaultHeader(salt, self.params, seal_canary(new_key)), resealed)
        self._install(new_key)  # only after the commit: until then the old key stays live
        old_key[:] = bytes(len(old_key))
        return len(resealed)


def _read_all(db: sqlite3.Connection) -> tuple[VaultHeader | None, dict[str, bytes]]:
    try:
        header = vault_store.load_header(db)
    except VaultCorrupted as exc:
        raise VaultDamaged(str(exc)) from None
    return header, vault_store.load_secrets(db) if header is not None else {}


def _open_vault(password: str, header: VaultHeader, blobs: dict[str, bytes]) -> bytearray:
    """Derive the key and prove it on the canary and on every secret: all of them open, or the vault
    stays locked (no partial unlock)."""
    key = derive_key(password, header.salt, header.params)
    if not canary_matches(key, header.canary):
        key[:] = bytes(len(key))
        raise WrongPassword("wrong password")
    for name, blob in blobs.items():
        try:
            open_sealed(key, name, blob)
        except SealBroken as exc:
            key[:] = bytes(len(key))
            raise VaultDamaged(
                f"{exc}: the vault stays locked; the database was changed outside TokenHub or is damaged"
                " (restore it from a backup, or delete that provider to drop its key)"
            ) from None
    return key


# --- provider keys (config store thread) -------------------------------------------------------------
def provider_vault_keys(db: sqlite3.Connection, vault: Vault | None) -> dict[str, str]:
    """Provider id -> key for every provider whose key lives in the vault: the plaintext while unlocked,
    "" while locked (or when a blob no longer opens: that provider is unavailable, the others are not)."""
    keys: dict[str, str] = {}
    for name, blob in vault_store.load_secrets(db).items():
        provider_id = vault_store.provider_id_of(name)
        if provider_id is None:
            continue
        keys[provider_id] = ""
        if vault is None or not vault.unlocked:
            continue
        try:
            keys[provider_id] = vault.open(name, blob)
        except VaultLockedError:
            pass  # locked a moment ago
        except SealBroken:
            log.error("vault_secret_unreadable", provider_id=provider_id)
    return keys


def store_provider_key(db: sqlite3.Connection, vault: Vault, provider_id: str, api_key: str) -> None:
    """Inside the caller's transaction: seal the key into the vault ("" removes it) and drop any copy
    sealed with the key file. Raises VaultLockedError (nothing written) while the vault is locked."""
    name = vault_store.provider_key_name(provider_id)
    if api_key:
        vault_store.write_secret(db, name, vault.seal(name, api_key))
    else:
        vault_store.delete_secret(db, name)
    db.execute("UPDATE providers SET api_key_sealed = '' WHERE id = ?", (provider_id,))


# --- generic secrets (config store thread): PUT/GET/DELETE /admin/v1/vault/secrets/{key} --------------
def put_secret(db: sqlite3.Connection, vault: Vault, key: str, value: str) -> bool:
    """Seal ``value`` under ``key``; True when the key is new. Raises VaultError (nothing written) unless
    the vault is unlocked."""
    vault.require_unlocked()
    name = vault_store.secret_name(key)
    created = vault_store.load_secret(db, name) is None
    blob = vault.seal(name, value)
    with db:
        vault_store.write_secret(db, name, blob)
    return created


def read_secret(db: sqlite3.Connection, vault: Vault, key: str) -> str | None:
    """The plaintext, or None when there is no such secret. Raises VaultError unless unlocked, and
    VaultDamaged when the stored blob does not authenticate."""
    vault.require_unlocked()
    name = vault_store.secret_name(key)
    blob = vault_store.load_secret(db, name)
    if blob is None:
        return None
    try:
        return vault.open(name, blob)
    except SealBroken as exc:
        raise VaultDamaged(f"{exc}: the database was changed outside TokenHub or is damaged") from None


def delete_secret(db: sqlite3.Connection, key: str) -> bool:
    """Removing needs no key: the admin token is the authority here, as for a provider's key."""
    with db:
        return vault_store.delete_secret(db, vault_store.secret_name(key))


def secret_keys(db: sqlite3.Connection) -> list[str]:
    """The generic secrets' keys, sorted; never their values, and never provider keys."""
    names = (vault_store.secret_key_of(name) for name in vault_store.secret_names(db))
    return [key for key in names if key is not None]
