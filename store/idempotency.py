"""Stored answers for `Idempotency-Key`: an in-memory LRU bounded in bytes, with expiry, and the requests
still running under a key (a repeat waits for them).

Entries are keyed by a digest of (API key id, Idempotency-Key), so one key never sees another's answers, and
carry a fingerprint of (endpoint, body) so a reused key with another request is told apart. An expired entry
is dropped when it is next looked up or when the byte cap evicts it (least recently used first), so memory
stays under the cap without a sweeper. Nothing here does I/O; nothing survives a restart (a repeat after a
restart runs again).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["IdempotencyStore", "InFlight", "StoredResponse", "fingerprint", "scope_digest"]

ENTRY_OVERHEAD_BYTES = 512  # the entry's objects and digests, counted so many tiny answers still fill the cap


def scope_digest(key_id: str, idempotency_key: str) -> bytes:
    return hashlib.sha256(f"{key_id}\0{idempotency_key}".encode()).digest()


def fingerprint(method: str, path: str, body: bytes) -> bytes:
    return hashlib.sha256(f"{method} {path}\0".encode() + body).digest()


@dataclass(frozen=True, slots=True)
class StoredResponse:
    fingerprint: bytes
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes  # a stream's bytes as the client received them
    request_id: str  # the request that produced it
    model_id: str  # the model that answered ("" when none did)
    expires_at: float

    @property
    def size(self) -> int:
        return len(self.body) + sum(len(k) + len(v) for k, v in self.headers) + ENTRY_OVERHEAD_BYTES


@dataclass(frozen=True, slots=True)
class InFlight:
    fingerprint: bytes
    done: asyncio.Future[None]  # resolved when the first request finishes, stored or not


class IdempotencyStore:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[bytes, StoredResponse] = OrderedDict()  # least recently used first
        self._running: dict[bytes, InFlight] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def find(self, scope: bytes, now: float) -> StoredResponse | InFlight | None:
        running = self._running.get(scope)
        if running is not None:
            return running
        entry = self._entries.get(scope)
        if entry is None:
            return None
        if entry.expires_at <= now:
            self._drop(scope)
            return None
        self._entries.move_to_end(scope)
        return entry

    def begin(self, scope: bytes, print_: bytes) -> InFlight:
        running = self._running[scope] = InFlight(print_, asyncio.get_running_loop().create_future())
        return running

    def finish(self, scope: bytes, stored: StoredResponse | None) -> None:
        """The first request ended: keep its answer (when given and it fits), wake whoever waits."""
        running = self._running.pop(scope, None)
        if stored is not None and stored.size <= self.max_bytes:
            self._drop(scope)
            self._entries[scope] = stored
            self.bytes += stored.size
            while self.bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))
        if running is not None and not running.done.done():
            running.done.set_result(None)

    def _drop(self, scope: bytes) -> None:
        entry = self._entries.pop(scope, None)
        if entry is not None:
            self.bytes -= entry.size
