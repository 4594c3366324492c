"""A bare aiohttp reverse proxy, the floor any aiohttp-based gateway is measured against, for the first-token
probe (scripts/first_token_probe.py): one shared client session, the body forwarded, an event stream relayed
chunk by chunk as it arrives. No parsing, auth, routing or recording.

With --hold-head, a stream's response head and everything before its first token are held back and leave
together with that token, in one write, as TokenHub sends them: it can only name the model that streams, and
fail over invisibly (or answer an ordinary JSON error) before it, by not answering until then. Running both
forms side by side shows what holding the head costs a client's time to the first token, apart from what
TokenHub does to a request (docs/benchmark.md).

    python scripts/bench_passthrough.py --port 18082 --upstream http://127.0.0.1:18081 [--hold-head]
"""

from __future__ import annotations

import argparse
import re
from collections.abc import AsyncIterator

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}
# An OpenAI chunk that carries a token: the role chunk's content is "".
TOKEN = re.compile(rb'"content": ?"[^"]')

SESSION: web.AppKey[ClientSession] = web.AppKey("session", ClientSession)
UPSTREAM: web.AppKey[str] = web.AppKey("upstream", str)
HOLD_HEAD: web.AppKey[bool] = web.AppKey("hold_head", bool)


async def proxy(request: web.Request) -> web.StreamResponse:
    app = request.app
    body = await request.read()
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    async with app[SESSION].request(
        request.method, app[UPSTREAM] + request.path_qs, data=body, headers=headers
    ) as upstream:
        out = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
        if not upstream.content_type.startswith("text/event-stream"):
            return web.Response(status=upstream.status, body=await upstream.read(), headers=out)
        response = web.StreamResponse(status=upstream.status, headers=out)
        held = bytearray()
        if not app[HOLD_HEAD]:
            await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            if not response.prepared:
                held += chunk
                if not TOKEN.search(held):
                    continue
                await response.prepare(request)
                chunk = bytes(held)
            await response.write(chunk)
        if not response.prepared:  # a stream without a token: what came, at its end
            await response.prepare(request)
            await response.write(bytes(held))
        await response.write_eof()
        return response


def build_app(upstream: str, *, hold_head: bool) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[UPSTREAM] = upstream.rstrip("/")
    app[HOLD_HEAD] = hold_head

    async def session(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = ClientSession(
            connector=TCPConnector(limit=0),
            timeout=ClientTimeout(total=None),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )
        yield
        await app[SESSION].close()

    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=18082)
    parser.add_argument("--upstream", default="http://127.0.0.1:18081")
    parser.add_argument("--hold-head", action="store_true", help="hold a stream's head until its first token")
    options = parser.parse_args()
    app = build_app(options.upstream, hold_head=options.hold_head)
    web.run_app(app, host="127.0.0.1", port=options.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
