"""What every edge wire format provides, and the SSE writer their stream sinks share."""

from __future__ import annotations

import functools
from typing import Any, Protocol

from aiohttp import web
from pydantic import BaseModel

from pipeline.context import Candidate, Policy, RequestContext
from pipeline.edge.lane import LaneRequest, LaneStreamResponse
from pipeline.errors import ClientDisconnected, TokenHubError
from pipeline.types import ChatRequest, StreamDelta
from pipeline.web import id_headers

__all__ = ["STREAM_CAPTURE", "Codec", "EdgeSink", "SseWriter", "StreamCapture", "attempts_header"]


class EdgeSink(Protocol):
    """A StreamSink that also ends the client's stream, successfully or with an error event."""

    @property
    def response(self) -> web.StreamResponse: ...

    @property
    def opened(self) -> bool: ...

    def expect(self, ctx: RequestContext, candidate: Candidate) -> None: ...

    async def open(self, ctx: RequestContext) -> None: ...

    async def send(self, delta: StreamDelta) -> None: ...

    async def finish(self, ctx: RequestContext) -> None: ...

    async def fail(self, error: TokenHubError) -> None: ...


class Codec(Protocol):
    """One client wire format (native, OpenAI, Anthropic): decode the body, encode the answer and errors."""

    endpoint: str  # the request log's name for this route
    scope: str  # the API-key scope it needs
    strict_model: bool  # a `model` naming no registered model is a 404 (not silently re-routed)
    summary: str  # its OpenAPI summary (pipeline/openapi.py)
    body_model: type[BaseModel]  # the model `decode` validates the body with
    error_model: type[BaseModel]  # the shape of `error_body`
    streams: bool  # `stream: true` answers text/event-stream

    def decode(self, raw: bytes, *, max_messages: int) -> tuple[ChatRequest, Policy]: ...

    def encode(self, ctx: RequestContext) -> bytes: ...

    def error_body(self, error: TokenHubError, request_id: str) -> dict[str, Any]: ...

    def stream_sink(self, request: web.Request, ctx: RequestContext) -> EdgeSink: ...


class StreamCapture:
    """A copy of the stream a client received, for an `Idempotency-Key` replay (pipeline/edge/idempotency.py).
    `complete` stays False unless the stream ended normally; past `limit` bytes the copy is abandoned."""

    def __init__(self, limit: int) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.limit = limit
        self.complete = False
        self.overflowed = False

    def add(self, data: bytes) -> None:
        if self.overflowed:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.overflowed, self.chunks = True, []
        else:
            self.chunks.append(data)


STREAM_CAPTURE: web.RequestKey[StreamCapture] = web.RequestKey("stream_capture", StreamCapture)


class SseWriter:
    """Owns the client's text/event-stream response. A write to a client that went away raises
    ClientDisconnected, which cancels the upstream and is recorded as 499."""

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self.opened = False
        self._capture = request.get(STREAM_CAPTURE)  # set only when the request carries an Idempotency-Key
        # What `expect` prepared the headers for: the candidate, and how many attempts had ended before it.
        self._expected: tuple[Candidate, int] | None = None

    @functools.cached_property
    def response(self) -> web.StreamResponse:
        """Made when first needed, which for a stream is once its provider's stream is open: not on the way to
        the provider."""
        request = self._request
        headers = {
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx would otherwise hold tokens back
        }
        if isinstance(request, LaneRequest):
            return LaneStreamResponse(request, headers=headers)
        return web.StreamResponse(status=200, headers=headers)

    def expect(self, ctx: RequestContext, candidate: Candidate) -> None:
        """Set the headers for `candidate`'s stream, and render the lane's head, before its first token."""
        self._set_headers(ctx, candidate)
        self._expected = (candidate, len(ctx.attempts))
        if isinstance(self.response, LaneStreamResponse):
            self.response.render_head(self._request)

    async def start(self, ctx: RequestContext) -> None:
        served = ctx.served_by
        assert served is not None
        expected = self._expected
        if expected is None or expected[0] is not served or expected[1] != len(ctx.attempts):
            self._set_headers(ctx, served)
            if isinstance(self.response, LaneStreamResponse):
                self.response.forget_head()
        await self.begin()

    def _set_headers(self, ctx: RequestContext, served: Candidate) -> None:
        headers = self.response.headers
        headers.update(id_headers(self._request))  # the edge middleware's copy would come too late
        headers["X-Negotiated-Model"] = served.model.id
        headers["X-TokenHub-Attempts"] = attempts_header(ctx, served)
        headers["X-Provider"] = served.model.provider_id
        if ctx.alias_from:
            headers["X-Alias-From"] = ctx.alias_from

    async def begin(self) -> None:
        """Send the headers: from here on, errors can only be reported inside the stream."""
        try:
            await self.response.prepare(self._request)
        except (ConnectionError, RuntimeError) as exc:
            raise ClientDisconnected("client went away before the stream started") from exc
        self.opened = True

    async def write(self, data: bytes) -> None:
        """Awaits the socket's drain, so a slow client slows the upstream read instead of filling memory."""
        if self._capture is not None:
            self._capture.add(data)
        try:
            await self.response.write(data)
        except (ConnectionError, RuntimeError) as exc:  # aiohttp: ClientConnectionResetError / closing transport
            raise ClientDisconnected("client disconnected during the stream") from exc

    async def end(self, data: bytes, *, complete: bool = True) -> None:
        """The last bytes; `complete` False for a stream ended by an error event (never replayed)."""
        if self._capture is not None:
            self._capture.add(data)
            self._capture.complete = complete
        try:
            await self.response.write(data)
            await self.response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the answer was complete; a client that left during the last bytes changes nothing


def attempts_header(ctx: RequestContext, served: Candidate | None = None) -> str:
    """Every model tried, in order, and how it went: "gpt-a=transient, gpt-b=ok". `served`: the model whose
    stream starts (default: the one that served the request)."""
    parts = [f"{a.model_id}={a.outcome}" for a in ctx.attempts]
    served = served or ctx.served_by
    if served is not None and (not ctx.attempts or ctx.attempts[-1].error_class):
        parts.append(f"{served.model.id}=ok")  # a stream that just started: its success is logged at the end
    return ", ".join(parts)
