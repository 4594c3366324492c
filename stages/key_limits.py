"""Per-API-key rate limits: requests per minute and tokens per minute, from the key's settings.

Both are continuous-refill buckets holding one minute's allowance. Tokens: a request is admitted while
the key's token bucket is positive; its estimated input tokens are taken up front (the bucket may go
negative: a large request is never refused forever) and, once it is recorded, the difference to the
actual input + output tokens is settled. Shared by every tenant pipeline, so it lives in Services.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from pipeline.types import ApiKeyInfo

__all__ = ["MAX_IN_FLIGHT", "KeyLimits"]

MAX_IN_FLIGHT = 100_000  # charged-but-unsettled requests remembered (a bound, not a working limit)


class KeyLimits:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._requests: dict[str, list[float]] = {}  # key id -> [available, last refill]
        self._tokens: dict[str, list[float]] = {}
        self._charged: OrderedDict[str, tuple[str, int]] = OrderedDict()  # request id -> (key id, tokens)

    def admit(self, key: ApiKeyInfo, request_id: str, estimate: Callable[[], int]) -> tuple[float, str]:
        """(0, "") when admitted, else (seconds to wait, "requests" or "tokens")."""
        now = self.clock()
        rpm, tpm = key.rate_limit_rpm, key.rate_limit_tpm
        requests = _refill(self._requests, key.id, rpm, now) if rpm > 0 else None
        if requests is not None and requests[0] < 1.0:
            return (1.0 - requests[0]) * 60.0 / rpm, "requests"
        if tpm > 0:
            tokens = _refill(self._tokens, key.id, tpm, now)
            if tokens[0] <= 0.0:
                return (1.0 - tokens[0]) * 60.0 / tpm, "tokens"
            charged = max(0, estimate())
            tokens[0] -= charged
            self._charged[request_id] = (key.id, charged)
            if len(self._charged) > MAX_IN_FLIGHT:
                self._charged.popitem(last=False)
        if requests is not None:
            requests[0] -= 1.0
        return 0.0, ""

    def settle(self, request_id: str, actual_tokens: int, tpm: int) -> None:
        """Replace the up-front estimate with what the request really used (0 if it never ran)."""
        entry = self._charged.pop(request_id, None)
        if entry is None:
            return
        key_id, charged = entry
        bucket = self._tokens.get(key_id)
        if bucket is not None and tpm > 0:
            bucket[0] = min(float(tpm), bucket[0] - (actual_tokens - charged))

    def forget(self, key_id: str) -> None:
        """A key's limits changed or it was revoked: start its buckets afresh."""
        self._requests.pop(key_id, None)
        self._tokens.pop(key_id, None)


def _refill(buckets: dict[str, list[float]], key_id: str, per_minute: int, now: float) -> list[float]:
    bucket = buckets.get(key_id)
    if bucket is None:
        bucket = buckets[key_id] = [float(per_minute), now]
    else:
        bucket[0] = min(float(per_minute), bucket[0] + (now - bucket[1]) * per_minute / 60.0)
        bucket[1] = now
    return bucket
