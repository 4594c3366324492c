"""A worker's side of the DuckDB owner (``tokenhub serve --workers N``, docs/scaling.md).

One process per machine owns the DuckDB file (worker 0); it listens for HTTP on a Unix socket in the data
directory as well as on the shared port. Every other worker reaches it through an ``OwnerLink``: its records go
there in batches (store/record_relay.py) and its analytics reads run there (``RemoteAnalytics``, the
``AnalyticsStore`` interface the rest of the code already calls: ``read(query, *args)`` and
``call(store.set_feedback, ...)``). While the owner restarts, a call waits for it (bounded), then fails 503.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from pipeline.errors import TokenHubError
from store.owner_wire import dumps, function_ref, loads

__all__ = ["OWNER_METHODS", "OwnerFailed", "OwnerLink", "OwnerOnly", "OwnerUnavailable", "RemoteAnalytics"]

T = TypeVar("T")
OWNER_HOST = "http://duckdb-owner"  # the host part is ignored on a Unix socket; it names the peer in errors
# AnalyticsStore methods a worker may have the owner run on its writer thread (through ``call``).
OWNER_METHODS = frozenset({"set_feedback"})


class OwnerUnavailable(TokenHubError):
    """503: the DuckDB owner did not answer in time (it is restarting, or gone)."""

    status = 503
    type = "analytics_owner_unavailable"


class OwnerFailed(TokenHubError):
    """The owner ran the call and it failed: its status and type, passed on."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.type = kind


class OwnerOnly(RuntimeError):
    """Something only the owning process can do (a direct DuckDB handle); the caller must be forwarded."""


class OwnerLink:
    """HTTP over the owner's Unix socket. ``wait_secs`` bounds how long a call waits for an owner that is
    not accepting connections; ``timeout_secs`` bounds one answer once connected."""

    def __init__(self, socket_path: Path, *, wait_secs: float = 10.0, timeout_secs: float = 120.0) -> None:
        self.socket_path = socket_path
        self.wait_secs = wait_secs
        self.timeout_secs = timeout_secs
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the owner link is not started")
        return self._session

    def start(self) -> None:
        connector = aiohttp.UnixConnector(path=str(self.socket_path), limit=32)
        self._session = aiohttp.ClientSession(connector=connector)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, path_qs: str) -> str:
        return OWNER_HOST + path_qs

    async def post(
        self, route: str, value: Any, *, wait_secs: float | None = None, timeout_secs: float | None = None
    ) -> Any:
        """POST ``value`` (pickled) to an internal route; the owner's pickled answer. A connection refused
        (the owner restarting) is retried until ``wait_secs``; the request is then sent again whole, so the
        owner may see a batch twice if it died after taking it and before answering (at least once).
        ``wait_secs`` and ``timeout_secs`` default to the link's."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.wait_secs if wait_secs is None else wait_secs)
        body = dumps(value)
        timeout = aiohttp.ClientTimeout(total=self.timeout_secs if timeout_secs is None else timeout_secs)
        while True:
            try:
                async with self.session.post(self.url(route), data=body, timeout=timeout) as response:
                    answer = await response.read()
                    status = response.status
                break
            except aiohttp.ClientConnectionError:
                if loop.time() >= deadline:
                    raise OwnerUnavailable("the analytics owner (worker 0) is not answering; retry shortly") from None
                await asyncio.sleep(0.1)
            except TimeoutError:
                raise OwnerUnavailable("the analytics owner (worker 0) did not answer in time") from None
        if status == 200:
            return loads(answer)
        try:
            kind, message = loads(answer)
        except Exception:
            kind, message = "internal_error", f"the analytics owner answered {status}"
        raise OwnerFailed(status, str(kind), str(message))


class RemoteAnalytics:
    """``AnalyticsStore`` for a worker that does not own the DuckDB file: reads and feedback updates run on
    the owner. Direct handles (``db``, ``new_cursor``: backups, prunes, analyst SQL) exist only on the owner;
    the admin routes that need them are forwarded whole (admin_ui/owner_forward.py)."""

    export_dir = ""  # the owner exports the request log (store/log_export.py), never a worker
    reopens = 0  # the owner reopens the DuckDB file (store/analytics.py) and counts it in its own metrics

    def __init__(self, link: OwnerLink) -> None:
        self.link = link

    def open(self) -> None:
        """Nothing to open: the link starts with the other components."""

    def close(self) -> None:
        """Nothing to close here: the link closes with the other components."""

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(cursor, *args)`` on one of the owner's reader threads, after it has written what it holds."""
        return await self.link.post("/internal/v1/analytics/read", (function_ref(fn), args))  # type: ignore[no-any-return]

    async def read_cluster(self, fn: Callable[..., T], *args: Any) -> T:
        """``read`` over the cluster's request log and time series (the owner's ``read_cluster``)."""
        return await self.link.post("/internal/v1/analytics/read", (function_ref(fn), args, True))  # type: ignore[no-any-return]

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """One of OWNER_METHODS (``call(store.set_feedback, ...)``) on the owner's writer thread."""
        name = getattr(fn, "__name__", "")
        if getattr(fn, "__self__", None) is not self or name not in OWNER_METHODS:
            raise OwnerOnly(f"{name or fn!r} needs the DuckDB file, which only worker 0 opens")
        return await self.link.post("/internal/v1/analytics/call", (name, args))  # type: ignore[no-any-return]

    def set_feedback(
        self, api_key_id: str, request_id: str, since: float, reward: float, score: float, comment: str | None
    ) -> int:
        raise OwnerOnly("set_feedback runs on the owner: use call(analytics.set_feedback, ...)")

    @property
    def db(self) -> Any:
        raise OwnerOnly("the DuckDB connection exists only in worker 0")

    async def call_with_db(self, fn: Callable[..., T], *args: Any) -> T:
        raise OwnerOnly("the DuckDB connection exists only in worker 0")

    def new_cursor(self) -> Any:
        raise OwnerOnly("DuckDB cursors exist only in worker 0")
