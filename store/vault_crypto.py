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

__all__ = [
    "CANARY_NAME",
    "CANARY_VALUE",
    "KDF_FLOOR",
    "KDF_MAX_MEMORY_KIB",
    "KDF_MAX_PARALLELISM",
    "KDF_MAX_TIME_COST",
    "KDF_MIN_MEMORY_KIB",
    "KEY_BYTES",
    "NONCE_BYTES",
    "SALT_BYTES",
    "TAG_BYTES",
    "KdfParams",
    "SealBroken",
    "canary_matches",
    "derive_key",
    "new_salt",
    "open_sealed",
    "seal",
    "seal_canary",
]

KEY_BYTES = 32  # AES-256
SALT_BYTES = 16
NONCE_BYTES = 12
TAG_BYTES = 16
CANARY_NAME = "__canary__"  # a known value sealed under the key: proves a password right before any use
CANARY_VALUE = b"tokenhub-vault-canary-v1"
# Bounds on Argon2id parameters, for the settings and for a vault header read from SQLite: a header
# edited to ask for terabytes of memory or millions of passes must not take the server down at unlock.
KDF_MAX_TIME_COST = 100
KDF_MAX_MEMORY_KIB = 4 * 1024 * 1024  # 4 GiB
KDF_MAX_PARALLELISM = 64
KDF_MIN_MEMORY_KIB = 64
# OWASP's Argon2id minimums as (memory KiB, passes): meeting any one pair is strong enough.
KDF_FLOOR = ((47104, 1), (19456, 2), (12288, 3), (9216, 4), (7168, 5))


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

    @property
    def weak(self) -> bool:
        """Below every one of OWASP's Argon2id minimums (fine for tests, not for a real password)."""
        return not any(self.memory_kib >= memory and self.time_cost >= passes for memory, passes in KDF_FLOOR)

    def check(self) -> None:
        """Raises ValueError unless the parameters are integers within the bounds Argon2id and we accept."""
        values = (self.time_cost, self.memory_kib, self.parallelism)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ValueError("key derivation parameters must be integers")
        if not 1 <= self.time_cost <= KDF_MAX_TIME_COST:
            raise ValueError(f"time cost {self.time_cost} is outside 1..{KDF_MAX_TIME_COST}")
        if not 1 <= self.parallelism <= KDF_MAX_PARALLELISM:
            raise ValueError(f"parallelism {self.parallelism} is outside 1..{KDF_MAX_PARALLELISM}")
        low = max(KDF_MIN_MEMORY_KIB, 8 * self.parallelism)  # Argon2 needs 8 KiB per lane
        if not low <= self.memory_kib <= KDF_MAX_MEMORY_KIB:
            raise ValueError(f"memory {self.memory_kib} KiB is outside {low}..{KDF_MAX_MEMORY_KIB}")

    @classmethod
    def from_json(cls, text: str) -> KdfParams:
        """Raises ValueError when the stored parameters are not a well-formed, bounded Argon2id description."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("alg") != "argon2id" or data.get("v") != ARGON2_VERSION:
            raise ValueError("unsupported key derivation parameters")
        params = cls(time_cost=data["t"], memory_kib=data["m"], parallelism=data["p"])
        params.check()
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
