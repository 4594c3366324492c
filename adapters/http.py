"""The one shared HTTP client and retry loop every adapter uses, for plain calls and for opening streams.

A call goes to one URL, or along a `Route` that names the URL of each attempt (a vLLM deployment's
endpoints, round-robin): the retry rules are the same either way, and written only here.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, Protocol, TypedDict, TypeVar

import aiohttp
import orjson

from adapters.coarse_timeout import CoarseTimeouts
from adapters.errors import ProviderError, excerpt
from adapters.lean_http import LeanClient, LeanStream
from pipeline.types import ErrorClass

__all__ = [
    "BodyTooLarge",
    "CallOptions",
    "Classifier",
    "HttpClient",
    "RetryHook",
    "RetryPolicy",
    "Route",
    "parse_retry_after",
    "read_capped",
]

Classifier = Callable[[int, str, Mapping[str, str]], ProviderError]
RetryHook = Callable[[int, ProviderError, float], None]
_READ_CHUNK = 64 * 1024

_TRANSIENT = ErrorClass.TRANSIENT
KEEPALIVE_SECS = 30.0  # an idle pooled connection older than this is closed, not reused
T = TypeVar("T")


class Route(Protocol):
    """Where each attempt of one call goes. The retry loop asks for the next URL only when it will retry, and
    reports every failed attempt, so a route can take a failing endpoint out of its rotation."""

    def pick(self) -> str: ...

    def failed(self, url: str, error: ProviderError) -> None: ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries for TRANSIENT errors only: base * multiplier**k * U(jitter), k = 0 for the first retry."""

    max_retries: int = 2
    base_delay: float = 0.1
    multiplier: float = 2.0
    jitter: tuple[float, float] = (0.5, 1.5)
    max_retry_after: float = 10.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        backoff = self.base_delay * self.multiplier**attempt * rng.uniform(*self.jitter)
        return max(backoff, retry_after or 0.0)


class CallOptions(TypedDict):
    """The keyword arguments every provider call gives `post_json` and `open_stream`."""

    headers: dict[str, str]
    deadline: float
    attempt_timeout: float
    classify: Classifier
    retry: RetryPolicy
    secret: str


class BodyTooLarge(ValueError):
    """A response body over the reader's cap; `declared` is its Content-Length when that said so first."""

    def __init__(self, limit: int, declared: int | None = None) -> None:
        super().__init__(f"the body is over the {limit}-byte limit")
        self.limit = limit
        self.declared = declared


async def read_capped(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """The whole body of `response`, read to its end (one `read(n)` returns only what has arrived so far),
    refusing more than `max_bytes` with BodyTooLarge, before reading when Content-Length already says so."""
    declared = response.content_length
    if declared is not None and declared > max_bytes:
        raise BodyTooLarge(max_bytes, declared)
    body = bytearray()
    async for chunk in response.content.iter_chunked(_READ_CHUNK):
        body += chunk
        if len(body) > max_bytes:
            raise BodyTooLarge(max_bytes)
    return bytes(body)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: a non-negative number, or an HTTP date still in the future; else None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        return _seconds_until_http_date(value, time.time() if now is None else now)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _seconds_until_http_date(value: str, now: float) -> float | None:
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" dates parse naive; HTTP dates are always GMT
        when = when.replace(tzinfo=UTC)
    seconds = when.timestamp() - now
    return seconds if seconds > 0 else None


class HttpClient:
    """Owns the pooled connections every adapter shares (connection reuse is most of the speed): the lean client's
    for provider calls, whole or streamed, one aiohttp session for everything else (probes, model lists)."""

    def __init__(
        self,
        *,
        rng: random.Random | None = None,
        wrap_attempt: Callable[[Any], Any] | None = None,
    ) -> None:
        self._rng = rng or random.Random()
        self._session: aiohttp.ClientSession | None = None
        self._lean = LeanClient(keepalive_secs=KEEPALIVE_SECS)  # provider calls; the session does the rest
        self.timeouts = CoarseTimeouts()  # provider calls' and stream reads' deadlines
        if wrap_attempt is not None:  # tracing (pipeline/tracing.py): decided once here, not per call
            self._attempt = wrap_attempt(self._attempt)  # type: ignore[method-assign]
            self._open_attempt = wrap_attempt(self._open_attempt)  # type: ignore[method-assign]

    @property
    def session(self) -> aiohttp.ClientSession:
        """The live session, created on first use (must be called inside the running loop)."""
        session = self._session
        if session is None or session.closed:
            session = self._session = self._new_session()
        return session

    def _new_session(self) -> aiohttp.ClientSession:
        # limit=0: unbounded; the proxy's own admission control bounds concurrency
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=KEEPALIVE_SECS)
        return aiohttp.ClientSession(connector=connector, auto_decompress=True, trust_env=False)

    async def start(self) -> None:
        _ = self.session

    async def close(self) -> None:
        self._lean.close()
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    async def post_json(
        self,
        target: str | Route,
        payload: dict[str, Any],
        *,
        headers: dict[str, str],
        deadline: float,
        attempt_timeout: float,
        classify: Classifier,
        retry: RetryPolicy,
        secret: str = "",
        on_retry: RetryHook | None = None,
    ) -> tuple[dict[str, Any], bytes, float]:
        """POST `payload` to `target` (a URL or a Route); return (JSON object body, its raw bytes, latency_ms
        of the successful attempt). The raw bytes let an edge pass the provider's body through without
        encoding it again.

        `deadline` is absolute time.monotonic(). `headers` must already carry Content-Type. TRANSIENT errors
        are retried per `retry` within the deadline; every other class is raised at once so the router can
        fail over. `on_retry(k, error, delay)` is called before sleeping for retry k (0-based).
        """
        data = orjson.dumps(payload)  # serialized once for all attempts
        return await self._with_retries(
            lambda url, timeout: self._attempt(url, data, headers, timeout, classify, secret),
            target,
            retry,
            deadline,
            attempt_timeout,
            on_retry,
        )

    async def open_stream(
        self,
        target: str | Route,
        payload: dict[str, Any],
        *,
        headers: dict[str, str],
        deadline: float,
        attempt_timeout: float,
        classify: Classifier,
        retry: RetryPolicy,
        secret: str = "",
        on_retry: RetryHook | None = None,
    ) -> LeanStream:
        """POST `payload` and return the open 200 response once its headers arrive, body unread. Errors before
        that (status, transport, no headers within the attempt timeout) are classified and retried like
        post_json's: nothing has reached the client yet."""
        data = orjson.dumps(payload)
        return await self._with_retries(
            lambda url, timeout: self._open_attempt(url, data, headers, timeout, deadline, classify, secret),
            target,
            retry,
            deadline,
            attempt_timeout,
            on_retry,
        )

    async def _with_retries(
        self,
        attempt_once: Callable[[str, float], Awaitable[T]],
        target: str | Route,
        retry: RetryPolicy,
        deadline: float,
        attempt_timeout: float,
        on_retry: RetryHook | None,
    ) -> T:
        """Attempt, and retry what `retry` allows. A retry that goes to a URL this call has not failed on yet
        (the next endpoint of a route) goes at once, even after a silent attempt (`retryable` False); one
        that goes back to a failed URL waits out the backoff, and is not made after a silent attempt."""
        route = None if isinstance(target, str) else target
        url = target if route is None else route.pick()
        tried: set[str] = set()
        attempt = 0
        while True:
            # before the attempt, so an expired deadline is not reported to the route as the endpoint's fault
            timeout = _attempt_seconds(deadline - time.monotonic(), attempt_timeout)
            try:
                return await attempt_once(url, timeout)
            except ProviderError as err:
                tried.add(url)
                if route is not None:
                    route.failed(url, err)
                if not _may_retry(err, attempt, retry):
                    raise
                next_url = url if route is None else route.pick()
                fresh = next_url not in tried
                if not fresh and not err.retryable:
                    raise
                delay = 0.0 if fresh else retry.delay(attempt, err.retry_after, self._rng)
                if time.monotonic() + delay >= deadline:  # no time left for another attempt after the sleep
                    raise
                if on_retry is not None:
                    on_retry(attempt, err, delay)
                if delay:
                    await asyncio.sleep(delay)
                url = next_url
                attempt += 1

    async def _attempt(
        self,
        url: str,
        data: bytes,
        headers: dict[str, str],
        timeout: float,
        classify: Classifier,
        secret: str,
    ) -> tuple[dict[str, Any], bytes, float]:
        started = time.monotonic()
        try:
            with self.timeouts.within(timeout):  # one timer per tick for every call, not one per call
                response = await self._lean.post(url, data, headers)  # the hot path's call: adapters/lean_http.py
        except TimeoutError:  # must precede OSError
            raise ProviderError(_TRANSIENT, f"timeout after {timeout:.1f}s with no answer", retryable=False) from None
        except (OSError, ValueError) as exc:
            raise _transport_error(exc, secret) from None
        latency_ms = (time.monotonic() - started) * 1000.0
        raw = response.body
        if response.status != 200:
            raise classify(response.status, raw.decode("utf-8", "replace"), response.headers)
        return _json_object(raw, secret), raw, latency_ms

    async def _open_attempt(
        self,
        url: str,
        data: bytes,
        headers: dict[str, str],
        timeout: float,
        deadline: float,
        classify: Classifier,
        secret: str,
    ) -> LeanStream:
        try:
            # The timeout bounds connecting and the response headers only; the body is read by the caller
            # under its own first-token and idle limits. On the coarse timer, as a whole call's.
            with self.timeouts.within(timeout):
                stream = await self._lean.open_stream(url, data, headers)
        except TimeoutError:
            raise ProviderError(_TRANSIENT, f"no response headers after {timeout:.1f}s", retryable=False) from None
        except (OSError, ValueError) as exc:
            raise _transport_error(exc, secret) from None
        if stream.status == 200:
            return stream
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.05)):
                raw = await stream.read(_ERROR_BODY_BYTES)
        except (TimeoutError, OSError):
            raw = b""
        finally:
            stream.release()
        raise classify(stream.status, raw.decode("utf-8", "replace"), stream.headers)


def _may_retry(err: ProviderError, attempt: int, retry: RetryPolicy) -> bool:
    """TRANSIENT errors only, at most max_retries times, and not when the upstream asks for a longer wait
    than we are willing to sleep (the router fails over instead)."""
    if err.error_class is not _TRANSIENT or attempt >= retry.max_retries:
        return False
    return err.retry_after is None or err.retry_after <= retry.max_retry_after


def _attempt_seconds(remaining: float, attempt_timeout: float) -> float:
    if remaining <= 0:  # aiohttp treats total<=0 as "no timeout", so refuse explicitly
        raise ProviderError(_TRANSIENT, "deadline exceeded before the upstream call")
    return min(attempt_timeout, remaining)


# An error answer to a stream request is read this far for its message; the rest is not waited for.
_ERROR_BODY_BYTES = 1024 * 1024


def _transport_error(exc: BaseException, secret: str) -> ProviderError:
    kind = "connection failed" if isinstance(exc, aiohttp.ClientConnectionError | OSError) else "transport error"
    detail = str(exc) or type(exc).__name__
    return ProviderError(_TRANSIENT, f"{kind}: {excerpt(detail, secret)}", secret=secret)


def _json_object(raw: bytes, secret: str) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except ValueError:  # orjson.JSONDecodeError and UnicodeDecodeError are both ValueErrors
        body = None
    if isinstance(body, dict):
        return body
    text = excerpt(raw.decode("utf-8", "replace"), secret) or "<empty body>"
    raise ProviderError(_TRANSIENT, f"malformed upstream response: {text}", status=200, secret=secret)
