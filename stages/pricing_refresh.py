"""The pricing refresh (config.md §4): at start-up and every interval, read a LiteLLM price table from
``TOKENHUB_PRICING_URL`` (an http(s) URL or a local file), update the stored models' prices through the
config store's thread, then reload the request path's snapshot.

Off when no source is configured (the machine may be air-gapped: nothing is fetched from the internet
unless an operator names the table) or when ``TOKENHUB_PRICING_REFRESH_ENABLED=false``. The fetch is
bounded in time and size; a failed round keeps the current prices. Each round ends with one log line
(``pricing_refreshed`` or ``pricing_refresh_failed``) and the ``tokenhub_pricing_refresh_total{outcome}``
counter; ``last`` holds the latest result for anyone who wants to show it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from adapters.http import BodyTooLarge, HttpClient, read_capped
from pipeline.errors import ConfigStoreUnavailable
from store.config_store import ConfigStore
from store.pricing import PriceTableError, apply_prices, parse_price_table

__all__ = ["FETCH_TIMEOUT_SECS", "MAX_TABLE_BYTES", "PricingRefresher", "RefreshResult", "describe_source"]

LOGGER = "tokenhub.pricing"
FETCH_TIMEOUT_SECS = 30.0  # the original's timeout for the whole fetch
MAX_TABLE_BYTES = 32 * 1024 * 1024  # LiteLLM's table is ~1.5 MB; 20x headroom, then it is refused


class FetchFailed(Exception):
    """The table could not be read: the message is safe to log (no URL credentials, no body)."""


@dataclass(frozen=True, slots=True)
class RefreshResult:
    at: float  # wall-clock time the round ended
    ok: bool
    updated: tuple[str, ...] = ()
    unchanged: int = 0
    manual: int = 0
    unmatched: int = 0
    malformed: int = 0
    error: str = ""


class PricingRefresher:
    def __init__(
        self,
        *,
        source: str,
        http: HttpClient,
        config: ConfigStore,
        reload: Callable[[], Awaitable[None]],
        registry: CollectorRegistry,
        timeout_secs: float = FETCH_TIMEOUT_SECS,
        max_bytes: int = MAX_TABLE_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source  # "" = off
        self._http = http
        self._config = config
        self._reload = reload
        self._timeout = timeout_secs
        self._max_bytes = max_bytes
        self._clock = clock
        self.last: RefreshResult | None = None
        self.round_finished = asyncio.Event()  # set after every round, ok or not: lets a caller wait on one
        if not source:
            structlog.get_logger(LOGGER).info(
                "pricing_refresh_off", reason="no TOKENHUB_PRICING_URL (or TOKENHUB_PRICING_REFRESH_ENABLED=false)"
            )
        self._rounds = Counter(
            "tokenhub_pricing_refresh", "Pricing refresh rounds by outcome (ok, failed)", ["outcome"], registry=registry
        )
        self._updated = Counter(
            "tokenhub_pricing_models_updated", "Model rows changed by the refresh", registry=registry
        )
        self._last_ok = Gauge(
            "tokenhub_pricing_refresh_last_success_timestamp_seconds",
            "When prices were last refreshed successfully (0 = never)",
            registry=registry,
        )

    async def run_once(self) -> RefreshResult:
        """One round: fetch, parse, apply, reload. Never raises: a failure is logged, counted and kept
        in ``last``, and the stored prices stay as they were."""
        try:
            return await self._round()
        finally:
            self.round_finished.set()

    async def _round(self) -> RefreshResult:
        shown = describe_source(self.source)
        try:
            raw = await self._fetch()
            table, malformed = parse_price_table(raw)
            outcome = await self._config.call(apply_prices, self._config.db, table)
        except (FetchFailed, PriceTableError) as exc:
            return self._failed(shown, str(exc))
        except (*self._config.errors, ConfigStoreUnavailable) as exc:
            return self._failed(shown, f"storing the prices failed: {type(exc).__name__}")
        if outcome.updated:
            await self._reload()
        result = RefreshResult(
            self._clock(),
            True,
            outcome.updated,
            outcome.unchanged,
            outcome.manual,
            outcome.unmatched,
            malformed,
        )
        self.last = result
        self._rounds.labels(outcome="ok").inc()
        self._updated.inc(len(outcome.updated))
        self._last_ok.set(result.at)
        _log().info(
            "pricing_refreshed",
            source=shown,
            entries=len(table),
            malformed_entries=malformed,
            updated=list(outcome.updated),
            unchanged=outcome.unchanged,
            kept_manual=outcome.manual,
            unmatched=outcome.unmatched,
        )
        return result

    def _failed(self, shown: str, reason: str) -> RefreshResult:
        result = RefreshResult(self._clock(), False, error=reason)
        self.last = result
        self._rounds.labels(outcome="failed").inc()
        _log().warning("pricing_refresh_failed", source=shown, reason=reason, note="the current prices are kept")
        return result

    async def _fetch(self) -> bytes:
        source = self.source
        try:
            async with asyncio.timeout(self._timeout):
                if source.startswith(("http://", "https://")):
                    return await self._fetch_url(source)
                return await asyncio.to_thread(_read_file, Path(source), self._max_bytes)
        except TimeoutError:
            raise FetchFailed(f"no complete answer within {self._timeout:g} s") from None
        except aiohttp.ClientConnectionError as exc:  # its text would carry the URL: name the kind only
            raise FetchFailed(f"connection failed: {type(exc).__name__}") from None
        except aiohttp.ClientError as exc:
            raise FetchFailed(f"request failed: {type(exc).__name__}") from None
        except OSError as exc:
            raise FetchFailed(f"cannot read: {exc.strerror or type(exc).__name__}") from None

    async def _fetch_url(self, url: str) -> bytes:
        async with self._http.session.get(url, allow_redirects=True, max_redirects=3) as resp:
            if resp.status != 200:
                raise FetchFailed(f"HTTP {resp.status}")
            try:
                return await read_capped(resp, self._max_bytes)
            except BodyTooLarge as exc:
                size = f"{exc.declared} bytes, " if exc.declared is not None else ""
                raise FetchFailed(f"the table is {size}over the {self._max_bytes}-byte limit") from None


def _log() -> structlog.stdlib.BoundLogger:
    # A fresh logger per round (rounds are hours apart): it follows the logging configuration of the moment
    # rather than the one cached when the module first logged.
    return structlog.get_logger(LOGGER)


def _read_file(path: Path, max_bytes: int) -> bytes:
    with path.open("rb") as handle:
        raw = handle.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise FetchFailed(f"the table is over the {max_bytes}-byte limit")
    return raw


def describe_source(source: str) -> str:
    """The source as it may be logged: a URL without credentials, query or fragment; a path as is."""
    if not source.startswith(("http://", "https://")):
        return source
    parts = urlsplit(source)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # not a number: aiohttp will refuse the URL too
        port = ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"
