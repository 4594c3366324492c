"""`Idempotency-Key` on the public POST endpoints: a client that retries after a timeout gets the first
answer again instead of paying twice.

After the API key is checked and the body read, a request that carries the header is looked up by (API key,
Idempotency-Key): a stored answer with the same endpoint and body is replayed (status, headers, body, a
stream as the bytes the client received, plus `Idempotent-Replayed: true`) without calling a provider or
charging; another body is 422; a repeat while the first is still running waits for it (at most
TOKENHUB_IDEMPOTENCY_WAIT_SECS, then 409). What is kept: 2xx and 4xx answers (except 408/409/425/429, which
a retry may turn into something else) and streams that ended normally; never a 5xx, a 499 or a stream
ended by an error event, so those are retried for real.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from pipeline.context import RequestContext
from pipeline.edge.codec import STREAM_CAPTURE, StreamCapture
from pipeline.errors import IdempotencyInProgress, IdempotencyKeyReused, InvalidRequest, TokenHubError
from pipeline.services import Services
from pipeline.web import REQUEST_ID, error_response
from store.idempotency import InFlight, StoredResponse, fingerprint, scope_digest

__all__ = ["HEADER", "REPLAY_HEADERS", "Idempotency", "record_replay"]

HEADER = "Idempotency-Key"
MAX_KEY_CHARS = 255
# Ours, and the original's (spec api.md) for clients written against it.
REPLAY_HEADERS = {"Idempotent-Replayed": "true", "Idempotency-Replay": "true"}
_UNCACHED_4XX = frozenset({408, 409, 425, 429, 499})
# Headers that describe this exchange, not the answer: a replay gets its own.
_PER_RESPONSE = frozenset(
    {"x-request-id", "x-client-request-id", "content-length", "date", "server", "transfer-encoding", "connection"}
)

Serve = Callable[[], Awaitable[web.StreamResponse]]
OnReplay = Callable[[StoredResponse], None]


class Idempotency:
    def __init__(self, services: Services) -> None:
        self._services = services
        self._store = services.idempotency
        settings = services.settings
        self._window = settings.idempotency_window_secs
        self._wait = settings.idempotency_wait_secs
        self._replays = services.metrics.idempotent_replays
        self._conflicts = services.metrics.idempotency_conflicts

    def applies(self, request: web.Request) -> bool:
        """Whether `run` has anything to do: the request sent the header and answers are kept."""
        return HEADER in request.headers and self._store.max_bytes != 0

    async def run(
        self, request: web.Request, key_id: str, body: bytes, endpoint: str, serve: Serve, on_replay: OnReplay
    ) -> web.StreamResponse:
        """Serve the request, or replay its stored answer. Call after the API key is checked and the body read."""
        if not self.applies(request):
            return await serve()
        idempotency_key = request.headers[HEADER]
        _check(idempotency_key)
        scope = scope_digest(key_id, idempotency_key)
        print_ = fingerprint(request.method, request.path, body)
        deadline = time.monotonic() + self._wait
        while True:
            found = self._store.find(scope, time.time())
            if found is None:
                break
            if found.fingerprint != print_:
                self._conflicts.labels("reused").inc()
                raise IdempotencyKeyReused(
                    f"this {HEADER} was already used with another request body or endpoint; send a new key",
                    field=HEADER,
                )
            if isinstance(found, StoredResponse):
                self._replays.labels(endpoint).inc()
                on_replay(found)
                return _replay(request, found)
            await self._wait_for(found, deadline)  # then look again: stored, or not kept and ours to run
        return await self._first(request, scope, print_, serve)

    async def _wait_for(self, running: InFlight, deadline: float) -> None:
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            await asyncio.wait_for(asyncio.shield(running.done), left)
        except TimeoutError:
            self._conflicts.labels("in_progress").inc()
            raise IdempotencyInProgress(
                f"the first request with this {HEADER} is still running; retry later for its answer",
                retry_after=5,
            ) from None

    async def _first(self, request: web.Request, scope: bytes, print_: bytes, serve: Serve) -> web.StreamResponse:
        self._store.begin(scope, print_)
        capture = request[STREAM_CAPTURE] = StreamCapture(self._store.max_bytes)
        stored = None
        try:
            try:
                response = await serve()
            except TokenHubError as exc:  # answered by the middleware otherwise: the same body, kept the same way
                response = error_response(exc, request[REQUEST_ID])
            stored = self._storable(request, response, capture, print_)
            return response
        finally:  # also on cancellation: the waiters wake and run it themselves
            self._store.finish(scope, stored)

    def _storable(
        self, request: web.Request, response: web.StreamResponse, capture: StreamCapture, print_: bytes
    ) -> StoredResponse | None:
        status = response.status
        if status >= 500 or (status >= 400 and status in _UNCACHED_4XX):
            return None
        if response.prepared:  # a stream: its bytes as sent, when it ended normally
            if not capture.complete or capture.overflowed:
                return None
            body = b"".join(capture.chunks)
        elif isinstance(response, web.Response) and isinstance(response.body, bytes):
            body = response.body
        else:
            return None
        headers = tuple((k, v) for k, v in response.headers.items() if k.lower() not in _PER_RESPONSE)
        model = response.headers.get("X-Negotiated-Model", "")
        return StoredResponse(print_, status, headers, body, request[REQUEST_ID], model, time.time() + self._window)


def _check(value: str) -> None:
    if not 1 <= len(value) <= MAX_KEY_CHARS or not all("!" <= ch <= "~" for ch in value):
        raise InvalidRequest(
            f"{HEADER} must be 1 to {MAX_KEY_CHARS} printable ASCII characters without spaces (a UUID is typical)",
            field=HEADER,
        )


def _replay(request: web.Request, stored: StoredResponse) -> web.Response:
    response = web.Response(status=stored.status, body=stored.body)
    for name, value in stored.headers:
        response.headers.add(name, value)
    response.headers.update(REPLAY_HEADERS)
    response.headers["X-Idempotent-Request-Id"] = stored.request_id  # the request whose answer this is
    return response


def record_replay(services: Services, ctx: RequestContext, stored: StoredResponse) -> None:
    """A replay is a request of its own in the request log: no model called, nothing charged, its routing
    reason naming the request whose answer it got, its status that answer's."""
    ctx.routing_reason = (
        f"idempotent-replay: the answer of {stored.request_id}"
        + (f" ({stored.model_id})" if stored.model_id else "")
        + f" replayed for a repeated {HEADER}"
    )
    if stored.status >= 400:
        replayed = TokenHubError(f"replayed answer of {stored.request_id}")
        replayed.status, replayed.type = stored.status, "idempotent_replay"
        ctx.error = replayed
    services.recorder.emit(ctx)
