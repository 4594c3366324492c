"""Admin routes that need the DuckDB file itself, forwarded whole to the owner (``serve --workers N``).

Most analytics endpoints run anywhere: their queries travel to the owner (store/owner_link.py). A few need
what only the owning process has: a backup copies the file, a prune deletes on the writer's connection, the
time series' retention lives in the owner's memory (it runs the prunes), analyst SQL opens its own cursors.
On any other worker these requests go, as they came (method, path, headers, body), to the owner's Unix
socket, and its answer comes back streamed. The owner checks the admin token again; this worker's audit
middleware runs after this one, so the change is audited once, by the owner.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from admin_ui import backup, observability
from store.owner_link import OwnerLink, OwnerUnavailable

__all__ = ["OWNER_HANDLERS", "forward_to_owner"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OWNER_HANDLERS: frozenset[Handler] = frozenset(
    {
        backup.create_backup,
        observability.get_retention,
        observability.put_retention,
        observability.prune_tsdb,
        observability.analytics_query,
    }
)
_HOP_BY_HOP = frozenset(
    {"host", "connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer", "upgrade"}
)
_CHUNK = 1 << 16


def forward_to_owner(link: OwnerLink) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def forward(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.handler not in OWNER_HANDLERS:
            return await handler(request)
        return await _proxy(link, request)

    return forward


async def _proxy(link: OwnerLink, request: web.Request) -> web.StreamResponse:
    headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP)
    body = await request.read()
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=link.wait_secs)
    try:
        async with link.session.request(
            request.method, link.url(request.path_qs), headers=headers, data=body, timeout=timeout
        ) as upstream:
            response = web.StreamResponse(
                status=upstream.status,
                reason=upstream.reason,
                headers=CIMultiDict((k, v) for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP),
            )
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(_CHUNK):
                await response.write(chunk)
            await response.write_eof()
            return response
    except aiohttp.ClientConnectionError:
        raise OwnerUnavailable("the analytics owner (worker 0) is not answering; retry shortly") from None
