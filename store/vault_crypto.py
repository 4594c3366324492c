"""The vault's cryptography: Argon2id key derivation and AES-256-GCM sealing, nothing stateful.

Each secret is sealed as nonce (12 random bytes) || ciphertext || tag (16 bytes), with the secret's name
as associated data: a blob copied onto another name (one provider's key onto another's) fails to open.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass

from argon2.low_level import ARGON2_VERSION, Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32  # AES-256
SALT_BYTES = 16
NONCE_BYTES = 12
TAG_BYTES = 16
CANARY_NAME = "__canary__"  # a known value sealed under the key: proves a password right before any use
CANARY_VALUE = b"tokenhub-vault-canary-v1"


class SealBroken(ValueError):
    """A blob failed authentication: wrong key, or bytes changed since it was sealed."""


@dataclass(frozen=True, slots=True)
class KdfParams:
    """Argon2id cost parameters, stored with the vault so a vault opens with the parameters it was made
    with even after the defaults change (new parameters apply at the next password rotation)."""

    time_cost: int = 3
    memory_kib: int = 65536
    parallelism: int = 4

    def to_json(self) -> str:
        return json.dumps(
            {
                "alg": "argon2id",
                "v": ARGON2_VERSION,
                "t": self.time_cost,
                "m": self.memory_kib,
                "p": self.parallelism,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> KdfParams:
        """Raises ValueError when the stored parameters are not a well-formed Argon2id description."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("alg") != "argon2id" or data.get("v") != ARGON2_VERSION:
            raise ValueError("unsupported key derivation parameters")
        params = cls(time_cost=data["t"], memory_kib=data["m"], parallelism=data["p"])
        if not all(isinstance(v, int) and v > 0 for v in (params.time_cost, params.memory_kib, params.parallelism)):
            raise ValueError("key derivation parameters must be positive integers")
        return params


def new_salt() -> bytes:
    return secrets.token_bytes(SALT_BYTES)


def derive_key(password: str, salt: bytes, params: KdfParams) -> bytearray:
    """Argon2id(password, salt) -> 32 bytes. Slow on purpose (~tens of ms, 64 MiB): run it in a thread.
    Returned as a bytearray so the holder can overwrite it when the vault locks."""
    raw = hash_secret_raw(
        password.encode(),
        salt,
        time_cost=params.time_cost,
        memory_cost=params.memory_kib,
        parallelism=params.parallelism,
        hash_len=KEY_BYTES,
        type=Type.ID,
    )
    return bytearray(raw)


def seal(key: bytes | bytearray, name: str, plaintext: bytes) -> bytes:
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + AESGCM(bytes(key)).encrypt(nonce, plaintext, name.encode())


def open_sealed(key: bytes | bytearray, name: str, blob: bytes) -> bytes:
    """Raises SealBroken for a wrong key, a modified blob, a blob of another name, or a truncated one."""
    if not isinstance(blob, bytes | bytearray) or len(blob) < NONCE_BYTES + TAG_BYTES:
        raise SealBroken(f"{name}: sealed value is truncated or not binary")
    try:
        return AESGCM(bytes(key)).decrypt(bytes(blob[:NONCE_BYTES]), bytes(blob[NONCE_BYTES:]), name.encode())
    except InvalidTag:
        raise SealBroken(f"{name}: sealed value failed authentication") from None


def seal_canary(key: bytes | bytearray) -> bytes:
    return seal(key, CANARY_NAME, CANARY_VALUE)


def canary_matches(key: bytes | bytearray, blob: bytes) -> bool:
    try:
        return secrets.compare_digest(open_sealed(key, CANARY_NAME, blob), CANARY_VALUE)
    except SealBroken:
        return False
