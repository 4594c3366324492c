"""A fast fake OpenAI-compatible provider for the scale-out benchmark (scripts/bench_scale.py).

It answers every chat completion at once with the same small body, so a benchmark measures TokenHub and not the
provider. It runs in its own process (the benchmark's load generator and TokenHub must not share its event
loop) and can be started several times on one port (`--reuse-port`, SO_REUSEPORT) when one process is not
fast enough to keep many TokenHub processes busy.

A request with `"stream": true` gets an event stream as OpenAI sends it: the role chunk at once, then after
`--stream-ttft-ms` the `--stream-tokens` content chunks, the finish chunk, the usage chunk and `[DONE]` (the
first-token probe, scripts/first_token_probe.py).

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


STREAM_TTFT: web.AppKey[float] = web.AppKey("stream_ttft", float)
STREAM_TOKENS: web.AppKey[int] = web.AppKey("stream_tokens", int)


async def _chat(request: web.Request) -> web.StreamResponse:
    body = await request.read()  # a real provider reads the body; so does this one
    if b'"stream"' in body and json.loads(body).get("stream") is True:
        return await _stream(request)
    return web.Response(body=ANSWER, content_type="application/json")


def _event(delta: dict[str, str], finish: str | None = None, usage: dict[str, int] | None = None) -> bytes:
    chunk = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": "bench-model"}
    chunk["choices"] = [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]
    if usage:
        chunk["usage"] = usage
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


async def _stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(_event({"role": "assistant", "content": ""}))
    await asyncio.sleep(request.app[STREAM_TTFT])
    tokens = request.app[STREAM_TOKENS]
    for index in range(tokens):
        await response.write(_event({"content": f"word{index} "}))
    await response.write(_event({}, "stop"))
    usage = {"prompt_tokens": 10, "completion_tokens": tokens, "total_tokens": 10 + tokens}
    await response.write(_event({}, usage=usage) + b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def _models(request: web.Request) -> web.Response:
    return web.Response(body=MODELS, content_type="application/json")


def app(stream_ttft_ms: float = 20.0, stream_tokens: int = 16) -> web.Application:
    application = web.Application()
    application[STREAM_TTFT] = stream_ttft_ms / 1000
    application[STREAM_TOKENS] = stream_tokens
    application.router.add_post("/v1/chat/completions", _chat)
    application.router.add_get("/v1/models", _models)
    return application


async def serve(port: int, reuse_port: bool, stream_ttft_ms: float, stream_tokens: int) -> None:
    runner = web.AppRunner(app(stream_ttft_ms, stream_tokens), access_log=None, shutdown_timeout=0.5)
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
    parser.add_argument("--stream-ttft-ms", type=float, default=20.0, help="a stream's wait before its first token")
    parser.add_argument("--stream-tokens", type=int, default=16, help="a stream's content chunks")
    options = parser.parse_args()
    asyncio.run(serve(options.port, options.reuse_port, options.stream_ttft_ms, options.stream_tokens))
