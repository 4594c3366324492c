"""Proactive provider probes (routing.md §11): a down provider is noticed, and a recovered one readmitted,
without waiting for client traffic to stumble on it.

Each round (the services run it on the periodic helper) every provider's health endpoint is fetched (GET,
no credentials, 5 s timeout) concurrently.
2xx, 401 and 405 prove the provider is reachable and answering (an unauthenticated GET of a chat route is
expected to be refused); anything else, or no answer, counts as an error. Results feed the health tracker,
so a probe success closes a half-open breaker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

import aiohttp
import structlog

from adapters.errors import excerpt
from adapters.http import HttpClient
from adapters.provider import Provider
from stages.health import HealthTracker

__all__ = ["HEALTHY_STATUSES", "PROBE_TIMEOUT", "HealthProber"]

log = structlog.get_logger("tokenhub.prober")
PROBE_TIMEOUT = aiohttp.ClientTimeout(total=5.0)
HEALTHY_STATUSES = frozenset({401, 405})


class HealthProber:
    def __init__(
        self,
        http: HttpClient,
        health: HealthTracker,
        adapters: Callable[[], Iterable[Provider]],
    ) -> None:
        self._http = http
        self._health = health
        self._adapters = adapters

    async def run_once(self) -> None:
        """Probe every provider once, concurrently."""
        targets = [(a.id, a.health_endpoint()) for a in self._adapters()]
        await asyncio.gather(*(self._probe(pid, url) for pid, url in targets if url))

    async def _probe(self, provider_id: str, url: str) -> None:
        started = time.monotonic()
        try:
            async with self._http.session.get(url, timeout=PROBE_TIMEOUT, allow_redirects=False) as resp:
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self._health.error(provider_id, f"probe: {excerpt(str(exc) or type(exc).__name__)}")
            return
        if 200 <= status < 300 or status in HEALTHY_STATUSES:
            self._health.success(provider_id, (time.monotonic() - started) * 1000)
        else:
            self._health.error(provider_id, f"probe: HTTP {status}")
