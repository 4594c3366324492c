"""A lean HTTP/1.1 client for the one call on the hot path: a provider's non-streaming POST (HttpClient.post_json).

aiohttp's client spends ~0.1 ms of Python per call on this machine (request and response objects, a body
writer task, cookie and redirect handling, timer handles): more than the rest of a routed request's own work.
This client keeps a pool of keep-alive connections per origin, writes the request head and body in one write,
parses the response with httptools (llhttp, the parser aiohttp itself uses), and decodes gzip/deflate bodies.
Everything else (streams, probes, model lists) stays on aiohttp. The caller bounds each call with its own
timeout; a call that does not finish (timeout, cancellation, error) never returns its connection to the pool.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import httptools
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

__all__ = ["LeanClient", "LeanHttpError", "LeanResponse"]

_Origin = tuple[str, str, int]  # scheme, host, port
_FORBIDDEN = frozenset("\r\n\0")


class LeanHttpError(OSError):
    """The connection closed early, or the answer was not HTTP: a transport failure, like a refused connect."""


@dataclass(frozen=True, slots=True)
class LeanResponse:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


@dataclass(frozen=True, slots=True)
class _Target:
    origin: _Origin
    host_header: str
    path: str


@lru_cache(maxsize=256)
def _target(url: str) -> _Target:
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise LeanHttpError(f"not an http(s) URL: {parsed.scheme}://{parsed.host or ''}")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    default = port == (443 if parsed.scheme == "https" else 80)
    return _Target((parsed.scheme, parsed.host, port), host if default else f"{host}:{port}", parsed.raw_path_qs)


class _Connection(asyncio.Protocol):
    """One keep-alive connection, one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser: Any = None
        self._waiter: asyncio.Future[LeanResponse] | None = None
        self._headers: CIMultiDict[str] = CIMultiDict()
        self._body: list[bytes] = []
        self._headers_done = False
        self._keep_alive = False  # what the last complete answer allowed (the parser forgets once it is done)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, data: bytes) -> asyncio.Future[LeanResponse]:
        assert self.transport is not None
        self._parser = httptools.HttpResponseParser(self)
        self._headers, self._body, self._headers_done, self._keep_alive = CIMultiDict(), [], False, False
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self._waiter

    @property
    def reusable(self) -> bool:
        return not self.closed and self._keep_alive

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # --- the socket ---------------------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes nobody asked for: the connection is not in a state to reuse
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(LeanHttpError(f"malformed HTTP response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is None or self._waiter.done():
            return
        parser = self._parser
        if (
            self._headers_done
            and parser is not None
            and "Content-Length" not in self._headers
            and not _chunked(self._headers)
        ):
            self.on_message_complete()  # a body delimited by the end of the connection (HTTP/1.0 style)
            return
        reason = f": {type(exc).__name__}" if exc else ""
        self._fail(LeanHttpError(f"the server closed the connection before the response was complete{reason}"))

    # --- httptools callbacks -----------------------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.add(name.decode("latin-1"), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is None or waiter.done():
            return
        self._keep_alive = not self.closed and self._parser.should_keep_alive()
        body = b"".join(self._body)
        try:
            body = _decoded(body, self._headers.get("Content-Encoding", ""))
        except zlib.error as exc:
            waiter.set_exception(LeanHttpError(f"undecodable response body: {exc}"))
            return
        waiter.set_result(LeanResponse(self._parser.get_status_code(), CIMultiDictProxy(self._headers), body))

    def _fail(self, error: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)


def _chunked(headers: CIMultiDict[str]) -> bool:
    return "chunked" in headers.get("Transfer-Encoding", "").lower()


def _decoded(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if not body or encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompress(body, 16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        try:
            return zlib.decompress(body)
        except zlib.error:
            return zlib.decompress(body, -zlib.MAX_WBITS)  # raw deflate, as some servers send it
    raise zlib.error(f"unsupported content-encoding {encoding!r}")


class LeanClient:
    def __init__(
        self, *, keepalive_secs: float = 30.0, max_idle_per_origin: int = 256, tls: ssl.SSLContext | None = None
    ) -> None:
        self._keepalive = keepalive_secs
        self._max_idle = max_idle_per_origin
        self._idle: defaultdict[_Origin, list[_Connection]] = defaultdict(list)
        self._tls = tls  # default: the system's CAs, hostname checked (made on the first https call)

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> LeanResponse:
        """POST `body` to `url` with `headers` (Host, Content-Length and Accept-Encoding are added) and read the
        whole answer. Raises OSError (refused, reset, closed early, not HTTP) or ValueError (a header that
        would split the request). Unbounded in time: the caller wraps it in its own timeout."""
        target = _target(url)
        head = [f"POST {target.path} HTTP/1.1\r\nHost: {target.host_header}\r\nContent-Length: {len(body)}\r\n"]
        head.append("Accept-Encoding: gzip, deflate\r\n")
        for name, value in headers.items():
            if not _FORBIDDEN.isdisjoint(name) or not _FORBIDDEN.isdisjoint(value):
                raise ValueError(f"header {name!r} holds a line break")
            head.append(f"{name}: {value}\r\n")
        head.append("\r\n")
        data = "".join(head).encode("latin-1") + body
        conn = self._checkout(target.origin) or await self._connect(target.origin)
        try:
            response = await conn.send(data)
        except BaseException:
            conn.close()  # cancelled, timed out or failed mid-answer: its bytes are unknown, never reuse it
            raise
        if conn.reusable and len(self._idle[target.origin]) < self._max_idle:
            conn.idle_since = time.monotonic()
            self._idle[target.origin].append(conn)
        else:
            conn.close()
        return response

    def close(self) -> None:
        for pool in self._idle.values():
            for conn in pool:
                conn.close()
        self._idle.clear()

    def _checkout(self, origin: _Origin) -> _Connection | None:
        pool = self._idle.get(origin)
        stale_before = time.monotonic() - self._keepalive
        while pool:
            conn = pool.pop()
            if not conn.closed and conn.idle_since > stale_before:
                return conn
            conn.close()
        return None

    async def _connect(self, origin: _Origin) -> _Connection:
        scheme, host, port = origin
        tls = None
        if scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Connection, host, port, ssl=tls, server_hostname=host if tls else None)
        return conn
