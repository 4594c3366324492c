"""`tokenhub serve`'s run loop: aiohttp's `web.run_app`, with the lane's runner (run_app builds its own)."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from pipeline.edge.lane import LaneRunner

__all__ = ["run_app"]


def run_app(
    app: web.Application,
    *,
    loop: asyncio.AbstractEventLoop,
    host: str,
    port: int,
    shutdown_timeout: float,
    reuse_port: bool | None = None,
    path: str | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM, then drain (aiohttp's order: stop listening, close idle connections,
    run on_shutdown, give requests in flight `shutdown_timeout`, run the cleanup contexts)."""
    main = loop.create_task(_serve(app, host, port, shutdown_timeout, reuse_port, path))
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(main)
        finally:
            _cancel_the_rest(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            asyncio.set_event_loop(None)


async def _serve(
    app: web.Application, host: str, port: int, shutdown_timeout: float, reuse_port: bool | None, path: str | None
) -> None:
    runner = LaneRunner(
        app,
        handle_signals=True,  # SIGINT/SIGTERM raise GracefulExit here
        shutdown_timeout=shutdown_timeout,
        access_log=None,
        handler_cancellation=True,  # a client that disconnects cancels its request, upstream call included
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_port=reuse_port).start()
        if path is not None:
            await web.UnixSite(runner, path).start()
        while True:
            await asyncio.sleep(3600)
    finally:
        await runner.cleanup()


def _cancel_the_rest(loop: asyncio.AbstractEventLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler(
                {"message": "unhandled exception during shutdown", "exception": task.exception(), "task": task}
            )
