"""A fast fake OpenAI-compatible provider for the scale-out benchmark (scripts/bench_scale.py).

It answers every chat completion at once with the same small body, so a benchmark measures TokenHub and not the
provider. It runs in its own process (the benchmark's load generator and TokenHub must not share its event
loop) and can be started several times on one port (`--reuse-port`, SO_REUSEPORT) when one process is not
fast enough to keep many TokenHub processes busy.

    python scripts/bench_fake_provider.py --port 18081
    python scripts/bench_fake_provider.py --port 18081 --reuse-port    # run it K times for K processes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

from aiohttp import web

ANSWER = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "bench-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
    }
).encode()
MODELS = json.dumps({"object": "list", "data": [{"id": "bench-model", "object": "model"}]}).encode()


async def _chat(request: web.Request) -> web.Response:
    await request.read()  # a real provider reads the body; so does this one
    return web.Response(body=ANSWER, content_type="application/json")


async def _models(request: web.Request) -> web.Response:
    return web.Response(body=MODELS, content_type="application/json")


def app() -> web.Application:
    application = web.Application()
    application.router.add_post("/v1/chat/completions", _chat)
    application.router.add_get("/v1/models", _models)
    return application


async def serve(port: int, reuse_port: bool) -> None:
    runner = web.AppRunner(app(), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_port=reuse_port or None).start()
    print(f"bench fake provider: listening on http://127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="the port on 127.0.0.1 to listen on")
    parser.add_argument("--reuse-port", action="store_true", help="bind with SO_REUSEPORT (several processes)")
    options = parser.parse_args()
    asyncio.run(serve(options.port, options.reuse_port))
