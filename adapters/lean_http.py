"""A lean HTTP/1.1 client for the calls on the hot path: a provider's POST, whole (HttpClient.post_json) or
streamed (HttpClient.open_stream).

aiohttp's client spends ~0.1 ms of Python per call on this machine (request and response objects, a body
writer task, cookie and redirect handling, timer handles): more than the rest of a routed request's own work.
This client keeps a pool of keep-alive connections per origin, writes the request head and body in one write,
parses the response with httptools (llhttp, the parser aiohttp itself uses), and decodes gzip/deflate bodies.
Everything else (probes, model lists) stays on aiohttp. The caller bounds each call with its own timeout; a
call that does not finish (timeout, cancellation, error, a stream closed half-read) never returns its
connection to the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import weakref
import zlib
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import httptools
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from adapters.dns_cache import DnsCache, is_ip_address

__all__ = ["LeanClient", "LeanHttpError", "LeanResponse", "LeanStream"]

_Origin = tuple[str, str, int]  # scheme, host, port
_FORBIDDEN = frozenset("\r\n\0")
# A stream's body chunks received and not yet read: past this the socket is not read until the reader catches
# up, so a slow client slows the upstream instead of filling memory.
_STREAM_BUFFER_BYTES = 256 * 1024
# A stream's reader stops at its done marker, often a few bytes before the body's end (the chunked terminator
# comes in the next packet). Its connection then waits this long for that end, discarding what comes, and is
# pooled once it arrives; a body that goes on longer, or past `_TAIL_MAX_BYTES`, closes it instead. Closing
# it would cost the next call to that provider a new connection (and TLS handshake).
TAIL_GRACE_SECS = 1.0
_TAIL_MAX_BYTES = 64 * 1024


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
    """One keep-alive connection, one request at a time: answered whole (`send`), or head first and then the
    body as it arrives (`send_streaming`)."""

    def __init__(self) -> None:
        # Made by create_connection, inside the loop. Kept: each get_running_loop() is a getpid system call.
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser: Any = None
        self._status = 0
        self._waiter: asyncio.Future[LeanResponse] | None = None
        self._headers: CIMultiDict[str] = CIMultiDict()
        self._body: list[bytes] = []
        self._headers_done = False
        self._keep_alive = False  # what the last complete answer allowed (the parser forgets once it is done)
        # streaming: the head's waiter, then the body's chunks as they arrive for the reader
        self._streaming = False
        self._head: asyncio.Future[None] | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._ended = False  # the whole body has arrived
        # why it broke; each read raises a new error from it (one stored error, raised and kept, would hold its
        # traceback's frames, and with them this connection, in a reference cycle)
        self._error: str | None = None
        self._more: asyncio.Future[None] | None = None  # the reader waits on it for a chunk, the end or an error
        # released before its body ended: called when the end arrives (in time), and what closes it otherwise
        self._on_end: Callable[[], None] | None = None
        self._tail_timer: asyncio.TimerHandle | None = None
        self._tail_bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, data: bytes) -> asyncio.Future[LeanResponse]:
        self._start(streaming=False)
        self._waiter = self._loop.create_future()
        self._write(data)
        return self._waiter

    def send_streaming(self, data: bytes) -> asyncio.Future[None]:
        """Done when the response head has arrived; the body is then read with `read_chunk`."""
        self._start(streaming=True)
        self._head = self._loop.create_future()
        self._write(data)
        return self._head

    def _start(self, *, streaming: bool) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._status = 0
        self._headers, self._body, self._headers_done, self._keep_alive = CIMultiDict(), [], False, False
        self._streaming, self._ended, self._error = streaming, False, None
        self._chunks.clear()  # what the last answer's reader left unread
        self._buffered = 0
        if self._paused and self.transport is not None:  # it ended while its reader lagged: read again
            self._paused = False
            self.transport.resume_reading()

    def _write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    @property
    def status(self) -> int:
        return self._status

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return CIMultiDictProxy(self._headers)

    @property
    def reusable(self) -> bool:
        return not self.closed and self._keep_alive

    @property
    def complete(self) -> bool:
        """A streamed answer has arrived whole, and the connection is not broken."""
        return self._ended and self._error is None

    @property
    def broken(self) -> bool:
        return self._error is not None

    def close(self) -> None:
        self.closed = True
        self._forget_tail()
        if self.transport is not None:
            self.transport.close()

    def check_in_at_end(self, check_in: Callable[[], None], grace_secs: float) -> None:
        """The reader is done before the body ended: drop the rest as it comes and call `check_in` when the body
        ends within `grace_secs`; close the connection if it does not."""
        self._on_end = check_in
        self._chunks.clear()
        self._buffered = self._tail_bytes = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        self._tail_timer = self._loop.call_later(grace_secs, self.close)

    def _forget_tail(self) -> None:
        self._on_end = None
        if self._tail_timer is not None:
            self._tail_timer.cancel()
            self._tail_timer = None

    async def read_chunk(self) -> bytes:
        """The next piece of a streamed body, b"" at its end; LeanHttpError when the connection broke first."""
        while not self._chunks:
            if self._error is not None:
                raise LeanHttpError(self._error)
            if self._ended:
                return b""
            self._more = self._loop.create_future()
            try:
                await self._more
            finally:
                self._more = None
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered < _STREAM_BUFFER_BYTES // 2 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return chunk

    # --- the socket ---------------------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._waiter is None and (self._head is None or self._ended):  # bytes nobody asked for: do not reuse
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(LeanHttpError(f"malformed HTTP response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._forget_tail()
        try:
            self._end_at_close(exc)
        finally:
            # The parser holds this protocol's callbacks: left in place, the pair is a reference cycle that only
            # the collector's rare full pass would free.
            self._parser = None

    def _end_at_close(self, exc: Exception | None) -> None:
        pending = self._waiter is not None and not self._waiter.done()
        if not pending and not (self._streaming and not self._ended):
            return
        if self._headers_done and "Content-Length" not in self._headers and not _chunked(self._headers):
            self.on_message_complete()  # a body delimited by the end of the connection (HTTP/1.0 style)
            return
        reason = f": {type(exc).__name__}" if exc else ""
        self._fail(LeanHttpError(f"the server closed the connection before the response was complete{reason}"))

    # --- httptools callbacks -----------------------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.add(name.decode("latin-1"), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self._status = self._parser.get_status_code()
        head = self._head
        if head is not None and not head.done():
            head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if not self._streaming:
            self._body.append(body)
            return
        if self._on_end is not None:  # released: nobody reads it
            self._tail_bytes += len(body)
            if self._tail_bytes > _TAIL_MAX_BYTES:
                self.close()
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _STREAM_BUFFER_BYTES and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self._keep_alive = not self.closed and self._parser.should_keep_alive()
        if self._streaming:
            self._ended = True
            self._head = None
            on_end = self._on_end
            if on_end is not None:
                self._forget_tail()
                on_end()
            self._wake()
            return
        waiter, self._waiter = self._waiter, None
        if waiter is None or waiter.done():
            return
        body = b"".join(self._body)
        try:
            body = _decoded(body, self._headers.get("Content-Encoding", ""))
        except zlib.error as exc:
            waiter.set_exception(LeanHttpError(f"undecodable response body: {exc}"))
            return
        waiter.set_result(LeanResponse(self._status, CIMultiDictProxy(self._headers), body))

    def _fail(self, error: LeanHttpError) -> None:
        if self._streaming:
            head, self._head = self._head, None  # the error's traceback will hold this connection: no way back
            if head is not None and not head.done():
                head.set_exception(error)
            self._error = str(error)
            self._wake()
            return
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def _wake(self) -> None:
        more = self._more
        if more is not None and not more.done():
            more.set_result(None)


class LeanStream:
    """An answer whose head has arrived and whose body is read as it comes (`readany`). `release()` once the
    reader is done returns the connection to the pool when the body has ended (at once, or within
    TAIL_GRACE_SECS); `close()` closes it, which tells the server to stop."""

    def __init__(self, client: LeanClient, origin: _Origin, conn: _Connection) -> None:
        self._client = client
        self._origin = origin
        self._conn: _Connection | None = conn
        self.status = conn.status
        self.headers = conn.headers
        encoding = self.headers.get("Content-Encoding", "").strip().lower()
        self._decoder = _stream_decoder(encoding)
        self._at_end = False

    async def readany(self) -> bytes:
        """Whatever part of the body has arrived (waiting for some when none has), decoded; b"" at the end.
        Raises LeanHttpError when the connection broke or the body cannot be decoded."""
        conn = self._conn
        if conn is None or self._at_end:
            return b""
        while True:
            chunk = await conn.read_chunk()
            if not chunk:
                self._at_end = True
                return self._decoder.flush() if self._decoder is not None else b""
            if self._decoder is None:
                return chunk
            try:
                if decoded := self._decoder.decompress(chunk):
                    return decoded
            except zlib.error as exc:
                raise LeanHttpError(f"undecodable response body: {exc}") from None

    async def read(self, max_bytes: int) -> bytes:
        """The rest of the body, up to `max_bytes` (the rest is not read; the connection is then not reused)."""
        parts: list[bytes] = []
        size = 0
        while size <= max_bytes and (chunk := await self.readany()):
            parts.append(chunk)
            size += len(chunk)
        return b"".join(parts)[:max_bytes]

    def release(self) -> None:
        """Done with the answer: the connection goes back to the pool once the whole answer has arrived (read or
        not: a stream's reader stops at its done marker, usually just before the body's end), now or within
        TAIL_GRACE_SECS; a connection already broken closes."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if conn.complete:
            self._client.check_in(self._origin, conn)
        elif conn.closed or conn.broken:
            conn.close()
        else:
            self._client.check_in_at_end(self._origin, conn)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _stream_decoder(encoding: str) -> Any:
    """A streaming decompressor for the body's Content-Encoding; None for identity. A stream is asked for
    `identity`, but a server may compress anyway."""
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj()
    raise LeanHttpError(f"unsupported content-encoding {encoding!r}")


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


def _request(target: _Target, body: bytes, headers: dict[str, str], accept_encoding: str) -> bytes:
    head = [f"POST {target.path} HTTP/1.1\r\nHost: {target.host_header}\r\nContent-Length: {len(body)}\r\n"]
    head.append(f"Accept-Encoding: {accept_encoding}\r\n")
    for name, value in headers.items():
        if not _FORBIDDEN.isdisjoint(name) or not _FORBIDDEN.isdisjoint(value):
            raise ValueError(f"header {name!r} holds a line break")
        head.append(f"{name}: {value}\r\n")
    head.append("\r\n")
    return "".join(head).encode("latin-1") + body


class LeanClient:
    def __init__(
        self,
        *,
        keepalive_secs: float = 30.0,
        max_idle_per_origin: int = 256,
        tls: ssl.SSLContext | None = None,
        tail_grace_secs: float = TAIL_GRACE_SECS,
        dns: DnsCache | None = None,
    ) -> None:
        self.tail_grace_secs = tail_grace_secs
        self._dns = dns or DnsCache()
        self._tailing: weakref.WeakSet[_Connection] = weakref.WeakSet()  # released, waiting for their body's end
        self._keepalive = keepalive_secs
        self._max_idle = max_idle_per_origin
        self._idle: defaultdict[_Origin, list[_Connection]] = defaultdict(list)
        self._tls = tls  # default: the system's CAs, hostname checked (made on the first https call)

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> LeanResponse:
        """POST `body` to `url` with `headers` (Host, Content-Length and Accept-Encoding are added) and read the
        whole answer. Raises OSError (refused, reset, closed early, not HTTP) or ValueError (a header that
        would split the request). Unbounded in time: the caller wraps it in its own timeout."""
        target = _target(url)
        data = _request(target, body, headers, "gzip, deflate")
        conn = self._checkout(target.origin) or await self._connect(target.origin)
        try:
            response = await conn.send(data)
        except BaseException:
            conn.close()  # cancelled, timed out or failed mid-answer: its bytes are unknown, never reuse it
            raise
        self.check_in(target.origin, conn)
        return response

    async def open_stream(self, url: str, body: bytes, headers: dict[str, str]) -> LeanStream:
        """POST like `post`, but return once the answer's head has arrived: the body is read from the returned
        stream as it comes. The caller must `release()` or `close()` it."""
        target = _target(url)
        data = _request(target, body, headers, "identity")  # compressing would hold tokens back
        conn = self._checkout(target.origin) or await self._connect(target.origin)
        try:
            await conn.send_streaming(data)
            return LeanStream(self, target.origin, conn)
        except BaseException:
            conn.close()
            raise

    def check_in(self, origin: _Origin, conn: _Connection) -> None:
        """Back to the pool after a finished answer, if the server keeps the connection open."""
        if conn.reusable and len(self._idle[origin]) < self._max_idle:
            conn.idle_since = time.monotonic()
            self._idle[origin].append(conn)
        else:
            conn.close()

    def check_in_at_end(self, origin: _Origin, conn: _Connection) -> None:
        """Pool a stream's connection once the rest of its body has arrived (see TAIL_GRACE_SECS)."""

        def ended() -> None:
            self._tailing.discard(conn)
            self.check_in(origin, conn)

        self._tailing.add(conn)
        conn.check_in_at_end(ended, self.tail_grace_secs)

    def close(self) -> None:
        for conn in list(self._tailing):
            conn.close()
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
        if is_ip_address(host):
            return await _open(host, port, tls, host)
        *others, last = await self._dns.addresses(host, port)  # tried in order, as getaddrinfo gave them
        for address in others:
            with contextlib.suppress(OSError):
                return await _open(address, port, tls, host)
        try:
            return await _open(last, port, tls, host)
        except OSError:
            self._dns.forget(host, port)
            raise


async def _open(address: str, port: int, tls: ssl.SSLContext | None, host: str) -> _Connection:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(_Connection, address, port, ssl=tls, server_hostname=host if tls else None)
    return conn
