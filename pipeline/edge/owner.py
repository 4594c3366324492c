"""The DuckDB owner's internal routes (``tokenhub serve --workers N``: worker 0 owns the file).

The other workers post here over the owner's Unix socket (store/owner_link.py): their request records, in
batches, the analytics reads and feedback updates their endpoints need, and their metrics
(pipeline/worker_metrics.py). The routes answer only on the Unix socket: on the TCP port they do not exist
(404), so no client can reach them through the shared port.
Bodies and answers are restricted pickles (store/owner_wire.py); a failure answers its status with
``(type, message)``, which the worker raises again as the same status.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from pipeline.errors import InvalidRequest, NotFound, TokenHubError
from pipeline.services import Services
from pipeline.worker_metrics import METRICS_ROUTE
from store.owner_link import OWNER_METHODS
from store.owner_wire import WireRefused, dumps, loads, resolve_function

__all__ = ["owner_routes"]

log = structlog.get_logger("tokenhub.owner")
MAX_BATCH_BYTES = 256 * 1024 * 1024  # a full relay batch of large records; the socket is local


def owner_routes(services: Services) -> list[web.RouteDef]:
    async def records(value: Any) -> int:
        if not isinstance(value, list):
            raise InvalidRequest("expected a list of request records")
        # RecordWriter counts and logs what its full queue drops, as for this process's own records.
        return sum(1 for record in value if services.records.submit(record))

    async def settle(_: Any) -> None:
        await services.records.settle()

    async def read(value: Any) -> Any:
        ref, args, *cluster = value  # (function, args[, True: the cluster's views])
        fn = resolve_function(ref)
        await services.records.flush()  # the rows the workers just sent are part of the answer
        analytics = services.analytics
        return await (analytics.read_cluster if cluster == [True] else analytics.read)(fn, *args)

    async def call(value: Any) -> Any:
        name, args = value
        if name not in OWNER_METHODS:
            raise InvalidRequest(f"{name!r} is not a method workers may call")
        await services.records.flush()  # an update must find rows the workers sent a moment ago
        analytics = services.analytics
        return await analytics.call(getattr(analytics, name), *args)

    async def metrics(value: Any) -> bytes | None:
        return await services.worker_metrics.receive(value)

    return [
        web.post(METRICS_ROUTE, _handler(metrics)),
        web.post("/internal/v1/records", _handler(records)),
        web.post("/internal/v1/records/settle", _handler(settle)),
        web.post("/internal/v1/analytics/read", _handler(read)),
        web.post("/internal/v1/analytics/call", _handler(call)),
    ]


def _handler(run: Callable[[Any], Awaitable[Any]]) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        sock = request.transport.get_extra_info("socket") if request.transport is not None else None
        if sock is None or sock.family != socket.AF_UNIX:
            raise NotFound(f"no route {request.path}")  # the same answer as for a path that does not exist
        try:
            value = loads(await _body(request))
            return _answer(200, await run(value))
        except WireRefused as exc:
            return _answer(400, ("invalid_request", str(exc)))
        except TokenHubError as exc:
            return _answer(exc.status, (exc.type, exc.message))
        except Exception as exc:
            log.exception("owner_call_failed", path=request.path)
            return _answer(500, ("internal_error", f"the analytics owner failed: {type(exc).__name__}"))

    return handle


async def _body(request: web.Request) -> bytes:
    # Not request.read(): a relay batch may exceed the public client_max_size, and this socket is local.
    chunks, size = [], 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > MAX_BATCH_BYTES:
            raise InvalidRequest(f"an internal body is limited to {MAX_BATCH_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _answer(status: int, value: Any) -> web.Response:
    return web.Response(status=status, body=dumps(value), content_type="application/octet-stream")
