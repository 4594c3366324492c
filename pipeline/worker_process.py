"""What a worker of ``tokenhub serve --workers N`` does beyond a single server (pipeline/supervisor.py runs them).

Every worker binds the shared port with SO_REUSEPORT (the kernel spreads connections over them). Worker 0 owns
the DuckDB file and also listens on a Unix socket in the data directory, for the other workers' records and
reads (pipeline/edge/owner.py). A worker whose supervisor is gone (killed with SIGKILL, so it could not stop
its workers) stops itself gracefully rather than serve on unsupervised.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import structlog
from aiohttp import web

from pipeline.settings import Settings
from store.owner_wire import OWNER_SOCKET

__all__ = ["PARENT_CHECK_SECS", "owner_socket", "run_options", "stop_without_parent"]

log = structlog.get_logger("tokenhub.worker")
PARENT_CHECK_SECS = 1.0


def owner_socket(settings: Settings) -> Path:
    """The owner's Unix socket. Its folder is private (0700): only this user can connect."""
    return settings.data_dir.resolve() / OWNER_SOCKET


def run_options(settings: Settings) -> dict[str, object]:
    """Extra ``web.run_app`` arguments: SO_REUSEPORT for every worker, the Unix socket for the owner."""
    if settings.worker_index < 0:
        return {}
    options: dict[str, object] = {"reuse_port": True}
    if settings.worker_index == 0:
        path = owner_socket(settings)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        path.parent.chmod(0o700)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # the socket of an owner that was killed: nobody listens on it
        options["path"] = str(path)
    return options


def stop_without_parent(app: web.Application) -> None:
    """Stop gracefully (SIGTERM to itself) once the process that started this worker is gone."""
    parent = os.getppid()

    async def watch(app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while os.getppid() == parent:
                await asyncio.sleep(PARENT_CHECK_SECS)
            log.warning("supervisor_gone", parent_pid=parent, action="stopping")
            os.kill(os.getpid(), signal.SIGTERM)

        task = asyncio.create_task(loop(), name="parent-watch")
        yield
        task.cancel()

    app.cleanup_ctx.insert(0, watch)
