"""Model aliases: which weighted variant an alias resolves to for one request (routing.md, "Aliases").

Pure and cheap (no I/O): policy calls it with an alias from the in-memory snapshot.
- sticky_by "" / "request": FNV-1a-32 of the request id, so every retry and fallback of one request (and
  a client that resends the same X-Request-Id) lands on the same variant;
- "api_key": the same hash of the caller's API key id (the request id when there is no key), so one
  caller keeps one variant;
- "round_robin": a counter per alias walks the weighted buckets in order. Replicas keep their own counters
  (no Redis round trip per request): each replica's traffic is split by the weights, so the sum over replicas
  is too (at most replicas x (total weight - 1) requests from exact), and a per-replica `salt` starts each
  alias's walk at a different bucket so replicas that see little traffic do not all send it to the first.
The bucket is in [0, total weight); the first variant whose cumulative weight exceeds it wins.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from pipeline.types import AliasInfo, AliasVariant

__all__ = ["AliasChooser", "fnv1a_32", "variant_for_bucket"]

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


def fnv1a_32(text: str) -> int:
    value = _FNV_OFFSET
    for byte in text.encode():
        value = ((value ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return value


def variant_for_bucket(variants: Sequence[AliasVariant], bucket: int) -> AliasVariant:
    """The variant whose cumulative-weight range holds `bucket` (0 <= bucket < total weight)."""
    cumulative = 0
    for variant in variants:
        cumulative += variant.weight
        if bucket < cumulative:
            return variant
    return variants[-1]  # unreachable for a valid bucket; keeps the function total


class AliasChooser:
    """Holds the round-robin counters; one per policy stage instance (like a rate limiter's buckets, they
    belong to the tenant's pipeline and survive configuration changes)."""

    def __init__(self, rng: random.Random | None = None, *, salt: str = "") -> None:
        self._turns: dict[str, int] = {}
        self._rng = rng or random.Random()
        self._salt = salt  # "" (one process): every walk starts at the first bucket

    def choose(self, alias: AliasInfo, *, request_id: str, api_key_id: str = "") -> AliasVariant:
        total = sum(v.weight for v in alias.variants)
        if alias.sticky_by == "round_robin":
            turn = self._turns.get(alias.name)
            if turn is None:
                turn = fnv1a_32(self._salt + alias.name) if self._salt else 0
            self._turns[alias.name] = turn + 1
            return variant_for_bucket(alias.variants, turn % total)
        key = (api_key_id or request_id) if alias.sticky_by == "api_key" else request_id
        bucket = fnv1a_32(key) % total if key else self._rng.randrange(total)
        return variant_for_bucket(alias.variants, bucket)
