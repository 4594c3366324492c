"""rate_limit: a per-client-IP token bucket that rejects before any other work is done.

The HTTP edge takes the token through `admit` before it reads or decodes the body (so invalid and
unauthenticated requests are counted too, and a flood costs no parsing); the stage then lets that request
pass without counting it twice. A tenant's own options (rps, burst) apply at the edge as well, because the
edge uses the stage instance of the tenant's chain; a chain without this stage has no per-IP limit.

Scaled out (TOKENHUB_REDIS_URL) the bucket is shared by the replicas: `admit` defers the take to the request's
one Redis round trip (stages/shared_gate.py), refusing at once only an IP already known to be over its limit;
these buckets are then the fallback while Redis is down.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from pydantic import Field

from pipeline.context import RequestContext
from pipeline.errors import RateLimited
from pipeline.stage import Next, StageOptions, StageSpec

if TYPE_CHECKING:
    from pipeline.services import Services

__all__ = ["SPEC", "RateLimit", "TokenBuckets"]

MAX_KEYS = 100_000
IDLE_EVICT_SECS = 600.0


class TokenBuckets:
    """Continuous-refill token buckets keyed by client, in LRU order so memory stays bounded:
    at most ``max_keys`` buckets, and buckets idle for ``idle_secs`` are dropped as traffic flows."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_keys: int = MAX_KEYS,
        idle_secs: float = IDLE_EVICT_SECS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._max_keys = max_keys
        self._idle = idle_secs
        self._clock = clock
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()  # key -> [tokens, last refill]

    def take(self, key: str) -> float:
        """Consume one token; returns 0 when allowed, else the seconds until a token is available."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = [self.burst, now]
            self._evict(now)
        else:
            self._buckets.move_to_end(key)
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return 0.0
        return (1.0 - bucket[0]) / self.rate

    def _evict(self, now: float) -> None:
        buckets = self._buckets
        while len(buckets) > self._max_keys:
            buckets.popitem(last=False)
        # Oldest-touched first: stop at the first bucket that is still in use.
        while buckets:
            oldest = next(iter(buckets.values()))
            if now - oldest[1] < self._idle:
                break
            buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)


class RateLimitOptions(StageOptions):
    rps: float | None = Field(None, gt=0, description="tokens per second (default TOKENHUB_RATE_LIMIT_RPS)")
    burst: int | None = Field(None, gt=0, description="bucket size (default TOKENHUB_RATE_LIMIT_BURST)")


class RateLimit:
    def __init__(self, services: Services, options: RateLimitOptions) -> None:
        settings = services.settings
        self._rate = options.rps or settings.rate_limit_rps
        self._burst = options.burst or settings.rate_limit_burst
        self._buckets = TokenBuckets(self._rate, self._burst)
        self._rejected = services.metrics.rate_limited
        self._shared = services.shared_gate  # None: this process's buckets only

    def admit(self, ctx: RequestContext) -> None:
        """Take the request's token, once per request: 429 with Retry-After when the client's bucket is empty."""
        if ctx.ip_admitted:
            return
        ctx.ip_admitted = True
        if self._shared is not None:
            wait = self._shared.defer_ip(ctx, self._rate, self._burst, lambda: self._buckets.take(ctx.client_ip))
        else:
            wait = self._buckets.take(ctx.client_ip)
        if wait:
            self._rejected.inc()
            raise RateLimited("rate limit exceeded", retry_after=wait)

    async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
        self.admit(ctx)
        await call_next(ctx)


SPEC = StageSpec(
    name="rate_limit",
    factory=RateLimit,
    options=RateLimitOptions,
    summary="Per-client-IP token bucket; 429 with Retry-After when empty.",
)
