"""The lane: the chat routes served straight from the socket, every other request handed to aiohttp.

aiohttp's server costs ~45 µs of CPU a request on this VM (its protocol, request and response objects, the
router, middleware chain and writer): a sixth of a chat request. The lane parses a connection's requests with
httptools and, for a well-formed POST to a chat route, builds a small request object, runs the same endpoint
through the same `request_id_and_errors` wrapper, and writes a JSON answer in one socket write, a stream
through LaneStreamResponse (its head with its first chunk, then one write per chunk). Anything it is not sure
about (another route or method, HTTP/1.0, `Expect`, `Upgrade`, an over-limit head or body, a malformed
request, a CORS request when CORS is configured) is handed to aiohttp on the same connection, from that
request's first byte on, so aiohttp answers it (and every later request on that connection) exactly as it
would have on its own.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field
from typing import Any, cast

import httptools
import structlog
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11
from aiohttp.http_writer import StreamWriter
from multidict import CIMultiDict, CIMultiDictProxy

from pipeline.web import Handler, request_id_and_errors

__all__ = ["LANE", "Lane", "LaneConnection", "LaneRequest", "LaneRunner", "LaneServer", "LaneStreamResponse"]

log = structlog.get_logger("tokenhub.http")
KEEPALIVE_SECS = 3630.0  # aiohttp's own default for an idle keep-alive connection
_QUEUED_MAX = 16  # pipelined requests read ahead of the one being answered, before reading pauses
HEAD_FRESH_SECS = 1.0  # a stream's head rendered before its first token is sent as rendered within this time


@dataclass(frozen=True)
class Lane:
    """What the lane serves (exact paths of POST routes, each with its endpoint) and the request limits it
    checks before it takes a request; anything over a limit goes to aiohttp, which answers it as before."""

    routes: dict[str, Handler]
    max_body_bytes: int
    max_line_bytes: int
    max_field_bytes: int
    max_headers: int
    cors: bool  # CORS configured: requests with an Origin header go to aiohttp (its preflight and signal)
    handlers: dict[bytes, Handler] = field(init=False)  # by the raw request target, as httptools gives it

    def __post_init__(self) -> None:
        object.__setattr__(self, "handlers", {path.encode(): handler for path, handler in self.routes.items()})


LANE: web.AppKey[Lane] = web.AppKey("lane", Lane)


class _Body:
    """`request.content` of a lane request: the body, read whole before the endpoint runs."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def read(self, n: int = -1) -> bytes:
        return self._data if n < 0 else self._data[:n]


class LaneRequest(dict[str, Any]):
    """The part of `web.Request` the chat endpoints and aiohttp's StreamResponse use. Its item storage is the
    dict it is (aiohttp's `request[KEY]`), keyed by the same RequestKey objects."""

    __slots__ = ("_connection", "_writer", "content", "content_length", "headers", "keep_alive", "method", "path")
    __slots__ += ("remote", "version")

    def __init__(
        self,
        path: str,
        headers: CIMultiDictProxy[str],
        remote: str,
        body: bytes,
        content_length: int | None,
        connection: BaseProtocol,
    ) -> None:
        super().__init__()
        self.method = "POST"
        self.path = path
        self.version = HttpVersion11
        self.headers = headers
        self.remote = remote
        self.keep_alive = True
        self.content_length = content_length
        self.content = _Body(body)
        self._connection = connection
        self._writer: StreamWriter | None = None

    @property
    def _payload_writer(self) -> StreamWriter:
        """aiohttp's writer on this connection, for an answer only aiohttp knows how to send (compressed)."""
        if self._writer is None:
            self._writer = StreamWriter(self._connection, self._connection._loop)
        return self._writer

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        """aiohttp's on_response_prepare signal: only CORS uses it, and CORS requests never take the lane."""


def _head(response: web.StreamResponse, framing: str, keep_alive: bool) -> bytes:
    """The status line and header fields of `response`; `framing` is its Content-Length or Transfer-Encoding
    field."""
    headers = response.headers
    fields = "".join([f"{field}\r\n" for field in map(": ".join, headers.items())])
    # Never let a value start a header (or a response) of its own: one CR LF per field, at its end.
    if fields.count("\n") != len(headers) or fields.count("\r") != len(headers):
        raise ValueError("a newline in a response header")
    date = "" if "Date" in headers else f"Date: {rfc822_formatted_time()}\r\n"
    server = "" if "Server" in headers else _SERVER
    close = "" if keep_alive else "Connection: close\r\n"
    status = f"HTTP/1.1 {response.status} {response.reason}\r\n"
    return f"{status}{fields}{framing}\r\n{date}{server}{close}\r\n".encode()


_SERVER = f"Server: {SERVER_SOFTWARE}\r\n"


class LaneStreamResponse(web.StreamResponse):
    """A chunked answer (an event stream) written straight to a lane connection's socket. Its head is rendered
    when prepared and leaves with the first chunk, in one write; each chunk is one write; a client that stops
    reading pauses the writer. aiohttp's StreamResponse sends its head in a write (a packet) of its own before
    the first token, and renders it through its signal and writer machinery: ~40 µs more on a cold first token,
    measured."""

    def __init__(self, request: LaneRequest, *, headers: dict[str, str]) -> None:
        super().__init__(status=200, headers=headers)
        self._connection = request._connection
        self._started = False
        self._unsent_head = b""
        self._rendered_at = -HEAD_FRESH_SECS  # when the unsent head was rendered before prepare (loop time)

    @property
    def prepared(self) -> bool:
        return self._started

    def render_head(self, request: LaneRequest) -> None:
        """Render the head from the headers as they are now; `prepare` sends it as rendered if it comes within
        HEAD_FRESH_SECS (its Date stays true to the second), unless `forget_head` is called first."""
        self._unsent_head = _head(self, "Transfer-Encoding: chunked", request.keep_alive)
        self._rendered_at = self._connection._loop.time()

    def forget_head(self) -> None:
        self._unsent_head = b""

    async def prepare(self, request: Any) -> None:
        if not self._started:
            self._keep_alive = request.keep_alive
            if not self._unsent_head or self._connection._loop.time() - self._rendered_at > HEAD_FRESH_SECS:
                self._unsent_head = _head(self, "Transfer-Encoding: chunked", request.keep_alive)
            self._started = True

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof_sent or not self._started:
            raise RuntimeError("write() outside a started stream")
        if data:  # an empty chunk would end a chunked body
            self._send(_chunk(data))
        connection = self._connection
        if connection.writing_paused:  # the client reads slower than the stream comes: wait for it
            await connection._drain_helper()

    async def write_eof(self, data: bytes | bytearray | memoryview = b"") -> None:
        if self._eof_sent:
            return
        if not self._started:
            raise RuntimeError("write_eof() before prepare()")
        self._send((_chunk(data) if data else b"") + b"0\r\n\r\n")
        self._eof_sent = True

    def _send(self, data: bytes) -> None:
        transport = self._connection.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client's connection is closed")
        head, self._unsent_head = self._unsent_head, b""
        transport.write(head + data if head else data)


def _chunk(data: bytes | bytearray | memoryview) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n" % len(data) + bytes(data) + b"\r\n"


class LaneConnection(BaseProtocol):
    """One client connection: requests parsed here, answered in order, one at a time; a request for aiohttp
    moves the whole connection to it. A client that goes away cancels the request it was waiting for
    (aiohttp's `handler_cancellation`), the provider call included."""

    def __init__(self, server: LaneServer) -> None:
        super().__init__(server.loop)
        self._server = server
        self._lane = server.lane
        # None once the connection is closed or handed over: it holds this protocol's callbacks, a reference
        # cycle that only the collector's rare full pass would free otherwise.
        self._parser: Any = httptools.HttpRequestParser(self)
        # The current message's bytes from its first one, while it may still be handed over; None once not.
        self._raw: list[bytes] | None = []
        self._in_message = False
        self._completed_in_feed = False
        self._hand_over = False
        # Close once the answers are written: a request for aiohttp whose first byte is unknown (pipelined), or
        # a body over the limit left unread.
        self._give_up = False
        self._url: list[bytes] = []
        self._headers: list[tuple[str, str]] = []
        self._odd = False
        self._taken = False
        self._body: list[bytes] = []
        self._body_size = 0
        self._queue: collections.deque[tuple[Handler, LaneRequest]] = collections.deque()
        self._answering: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._closing = False
        self._remote = ""
        self._keep_alive = True
        self._request: tuple[Handler, bytes, CIMultiDictProxy[str], int | None] | None = None

    # --- the socket

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self._remote = peer[0] if isinstance(peer, tuple) else ""
        self._server.connections.add(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self._parser = None
        self._server.connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()
        self._queue.clear()
        if self._answering is not None:
            self._answering.cancel()  # the client is gone: stop its request, upstream call included

    def data_received(self, data: bytes) -> None:
        if self._hand_over:  # aiohttp takes the connection once the answers before it are written
            if self._raw is not None:
                self._raw.append(data)
            return
        if not self._in_message:
            self._raw = [data]  # a new message begins at this chunk's first byte
        elif self._raw is not None:
            self._raw.append(data)
        self._completed_in_feed = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._hand_over = True  # aiohttp answers a malformed request its own way (400)
        if self._hand_over:
            self._hand_over_when_idle()

    def eof_received(self) -> bool:
        return False  # a half-closed client is gone: close (aiohttp does the same)

    # --- httptools' callbacks

    def on_message_begin(self) -> None:
        if self._hand_over:  # what follows a request for aiohttp is aiohttp's to parse
            return
        if self._completed_in_feed:
            self._raw = None  # pipelined behind another request: where it began is not known
        self._in_message = True
        self._url.clear()
        self._headers = []
        self._odd = self._taken = False
        self._body = []
        self._body_size = 0
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def on_url(self, url: bytes) -> None:
        if not self._hand_over:
            self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._hand_over:
            return
        if len(name) > self._lane.max_field_bytes or len(value) > self._lane.max_field_bytes:
            self._odd = True
        # Not UTF-8: the decode raises, the parser stops with an error, and aiohttp gets the request.
        self._headers.append((name.decode(), value.decode()))

    def on_headers_complete(self) -> None:
        if self._hand_over:
            return
        url = b"".join(self._url)
        parser = self._parser
        handler = None
        if len(self._headers) > self._lane.max_headers:
            self._odd = True
        if not self._odd and parser.get_method() == b"POST" and parser.get_http_version() == "1.1":
            handler = self._lane.handlers.get(url)
        headers = CIMultiDictProxy(CIMultiDict(self._headers))
        length = self._content_length(headers)
        if (
            handler is None
            or len(url) > self._lane.max_line_bytes
            or parser.should_upgrade()
            or "Expect" in headers
            or length == -1
            or (length is not None and length > self._lane.max_body_bytes)
            or (self._lane.cors and "Origin" in headers)
        ):
            self._hand_over = True
            return
        self._taken = True
        self._raw = None  # the lane answers this one: no copy of its bytes needed
        self._request = (handler, url, headers, length)

    def on_body(self, body: bytes) -> None:
        if not self._taken:
            return
        limit = self._lane.max_body_bytes + 1  # one byte over tells the endpoint the body is too large
        self._body.append(body[: limit - self._body_size])
        self._body_size += len(body)
        if self._body_size >= limit:
            # A chunked body over the limit: answer now (the endpoint's 413), read no more of it, then close.
            self._give_up = True
            if self.transport is not None:
                self.transport.pause_reading()
            self._take(keep_alive=False)

    def on_message_complete(self) -> None:
        if self._hand_over:
            return
        self._in_message = False
        self._completed_in_feed = True
        if self._taken:
            self._take(keep_alive=self._parser.should_keep_alive())

    def _take(self, *, keep_alive: bool) -> None:
        assert self._request is not None
        handler, url, headers, length = self._request
        self._taken = False
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        path = url.decode("ascii", "surrogateescape")
        request = LaneRequest(path, headers, self._remote, body, length, self)
        request.keep_alive = keep_alive
        self._queue.append((handler, request))
        if self._answering is None:
            self._answer_next()
        elif len(self._queue) >= _QUEUED_MAX and self.transport is not None:
            self.transport.pause_reading()

    @staticmethod
    def _content_length(headers: CIMultiDictProxy[str]) -> int | None:
        """The Content-Length header's value; None without one; -1 for one that is not a plain number."""
        value = headers.get("Content-Length")
        if value is None:
            return None
        return int(value) if value.isdigit() and value.isascii() else -1

    # --- answers

    def _answer_next(self) -> None:
        handler, request = self._queue.popleft()
        # The request does not refer to its task: a task that ends in an exception keeps its frames, and so the
        # request, in the traceback, and the two would be a reference cycle.
        task = self._answering = self._loop.create_task(self._answer(handler, request))
        task.add_done_callback(self._answered)

    async def _answer(self, handler: Handler, request: LaneRequest) -> None:
        # The endpoint inside the middleware aiohttp would run it in: request ids, JSON errors.
        response = await request_id_and_errors(cast(web.Request, request), handler)
        transport = self.transport
        if transport is None:
            return
        if not response.prepared and type(response) is web.Response:
            body = response.body
            if (body is None or isinstance(body, bytes)) and not response.chunked and not response.compression:
                data = body or b""
                transport.write(_head(response, f"Content-Length: {len(data)}", request.keep_alive) + data)
                self._keep_alive = request.keep_alive
                return
        # A stream (its sink wrote it: this ends it if the sink could not), or an answer only aiohttp's
        # writer knows how to send.
        try:
            await response.prepare(cast(web.Request, request))
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            self._keep_alive = False
            return
        self._keep_alive = request.keep_alive and response.keep_alive is not False

    def _answered(self, task: asyncio.Task[None]) -> None:
        self._answering = None
        transport = self.transport
        if transport is None:
            return
        if task.cancelled() or task.exception() is not None:
            if not task.cancelled():
                log.error("lane_answer_failed", error=repr(task.exception()))
            transport.close()
        elif not self._keep_alive or self._closing or self._give_up:
            transport.close()
        elif self._queue:
            if not self._hand_over:  # else reading stays paused until aiohttp takes the connection
                transport.resume_reading()
            self._answer_next()
        elif self._hand_over:
            self._hand_over_when_idle()
        else:
            self._idle = self._loop.call_later(KEEPALIVE_SECS, self._close_idle)

    def _close_idle(self) -> None:
        if self.transport is not None and self._answering is None and not self._queue and not self._in_message:
            self.transport.close()

    def close_when_done(self) -> None:
        """Shutdown: answer what was taken, then close."""
        self._closing = True
        self._close_idle()

    # --- the hand-over to aiohttp

    def _hand_over_when_idle(self) -> None:
        transport = self.transport
        if transport is None:
            return
        if self._raw is None:  # its first byte is lost in an earlier read: let the client retry it
            self._give_up = True
            transport.pause_reading()
            if self._answering is None and not self._queue:
                transport.close()
            return
        if self._answering is not None or self._queue:
            transport.pause_reading()  # handed over once the answers before it are written
            return
        raw, self._raw = b"".join(self._raw), None
        self._parser = None
        self._server.connections.discard(self)
        handler = self._server.aiohttp()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        transport.resume_reading()
        handler.data_received(raw)


class LaneServer:
    """The protocol factory the sites listen with: lane connections, and aiohttp's server beside them for the
    requests handed over. Shuts down like aiohttp's (requests in flight get the drain time, idle
    connections close at once)."""

    def __init__(self, aiohttp_server: Any, lane: Lane) -> None:
        self.aiohttp = aiohttp_server
        self.lane = lane
        self.loop = asyncio.get_running_loop()
        self.connections: set[LaneConnection] = set()

    def __call__(self) -> LaneConnection:
        return LaneConnection(self)

    def pre_shutdown(self) -> None:
        """Idle connections close now, busy ones once their answers are written (as aiohttp's)."""
        self.aiohttp.pre_shutdown()
        for connection in list(self.connections):
            connection.close_when_done()

    async def shutdown(self, timeout: float | None = None) -> None:
        await asyncio.gather(self.aiohttp.shutdown(timeout), self._drain(timeout))

    async def _drain(self, timeout: float | None) -> None:
        deadline = self.loop.time() + (timeout or 0)
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.connections):  # past the drain time: cancel and close
            if connection.transport is not None:
                connection.transport.abort()


class LaneRunner(web.AppRunner):
    """aiohttp's AppRunner whose sites listen through the lane, when the app has one (app[LANE])."""

    async def _make_server(self) -> Any:
        server = await super()._make_server()
        lane = self.app.get(LANE)
        return server if lane is None else LaneServer(server, lane)
