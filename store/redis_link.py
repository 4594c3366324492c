"""The one Redis connection the shared hot state uses, and whether Redis answers right now.

Every shared backend (limits, budgets, bandit statistics, health, sessions, ...) goes through `RedisLink.run`
(redis-py), or for the request path's scripts `send_script` / `eval` (the lean pipe, store/redis_pipe.py); both
bound a round trip by `timeout` and turn any connection failure into `RedisDown`. The first failure
marks the link down (a metric, one log line, `/healthz` says so) and each backend falls back to its local
state; a background ping brings it back up, and `on_up` listeners re-sync what they kept locally meanwhile.
Keys are namespaced by `prefix` so one Redis can hold several clusters (and tests use a prefix each).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from store.redis_pipe import Done, PipeError, RedisPipe, Script

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = ["RedisDown", "RedisLink"]

log = structlog.get_logger("tokenhub.redis")
T = TypeVar("T")
RECONNECT_SECS = 1.0


class RedisDown(Exception):
    """Redis did not answer (refused, reset, timed out or errored); the caller falls back to local state."""


class RedisLink:
    def __init__(
        self,
        url: str,
        prefix: str,
        *,
        timeout_secs: float = 0.25,
        on_state: Callable[[bool], None] | None = None,
        client: aioredis.Redis | None = None,
    ) -> None:
        # redis-py (~9 MiB) loads only in a server that has Redis configured, i.e. here.
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError

        self._failures: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
        self.prefix = prefix.rstrip(":") + ":"
        self.timeout = timeout_secs
        # No retries inside redis-py: a dead Redis must cost one bounded wait, then the local fallback.
        self.client = client or aioredis.Redis.from_url(
            url, socket_timeout=timeout_secs, socket_connect_timeout=timeout_secs, retry_on_timeout=False
        )
        self.pipe = RedisPipe(url, timeout_secs=timeout_secs)  # the request path's scripts (store/redis_pipe.py)
        self.up = False
        self.down_since: float | None = time.time()
        self.last_error = "not connected yet"
        self._on_state = on_state
        self._up_listeners: list[Callable[[], Awaitable[None]]] = []
        self._watcher: asyncio.Task[None] | None = None

    def key(self, *parts: str) -> str:
        """A key in this cluster's namespace: key("rl", "ip", addr) -> "<prefix>:rl:ip:<addr>"."""
        return self.prefix + ":".join(parts)

    def on_up(self, listener: Callable[[], Awaitable[None]]) -> None:
        """Call `listener` each time Redis comes back (after start-up too): re-push what was kept locally."""
        self._up_listeners.append(listener)

    def script(self, lua: str) -> Any:
        """A registered Lua script (EVALSHA, loaded again by redis-py if Redis restarted empty)."""
        return self.client.register_script(lua)

    async def run(self, make: Callable[[], Awaitable[T]]) -> T:
        """One round trip, bounded; raises RedisDown (and marks the link down) when Redis does not answer.
        While the link is down calls fail at once: the background ping is the only one that waits."""
        if not self.up:
            raise RedisDown(self.last_error)
        try:
            async with asyncio.timeout(self.timeout):  # no extra task per call, unlike wait_for
                return await make()
        except self._failures as exc:
            self._mark_down(exc)
            raise RedisDown(self.last_error) from None

    def send_script(self, script: Script, args: tuple[bytes, ...], done: Done) -> None:
        """Run `script` on the pipe: sent now, nothing awaited (the request path's gate batches on this), with
        `done(reply, error)` called when it is answered. Raises RedisDown at once while the link is down; a
        caller whose call fails later hands the PipeError to `failed`."""
        if not self.up:
            raise RedisDown(self.last_error)
        self.pipe.send(script, args, done)

    async def eval(self, script: Script, *args: bytes) -> Any:
        """`send_script`, awaited (bounded by the pipe's timeout); RedisDown when Redis does not answer."""
        if not self.up:
            raise RedisDown(self.last_error)
        try:
            return await self.pipe.eval(script, *args)
        except PipeError as exc:
            raise self.failed(exc) from None

    def failed(self, exc: BaseException) -> RedisDown:
        """A pipe call failed: mark the link down (the watcher brings it back) and return the error to raise."""
        self._mark_down(exc)
        return RedisDown(self.last_error)

    async def start(self) -> None:
        """Connect now if Redis answers; either way keep watching it. Start-up never fails for Redis."""
        await self._ping()
        self._watcher = asyncio.create_task(self._watch(), name="redis-watch")

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        self.pipe.close()
        await self.client.aclose()

    def status(self) -> dict[str, Any]:
        """What /healthz reports (never the URL: it may hold a password)."""
        if self.up:
            return {"backend": "redis", "up": True}
        return {"backend": "redis", "up": False, "fallback": "local", "error": self.last_error}

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(RECONNECT_SECS)
            if not self.up:
                await self._ping()

    async def _ping(self) -> None:
        try:
            await asyncio.wait_for(self.client.ping(), self.timeout)
        except self._failures as exc:
            self._mark_down(exc)
            return
        await self._mark_up()

    def _mark_down(self, exc: BaseException) -> None:
        self.last_error = type(exc).__name__
        if not self.up:
            return
        self.up = False
        self.down_since = time.time()
        self.pipe.close("redis down")
        log.warning("redis_down", error=self.last_error, fallback="local state")
        if self._on_state is not None:
            self._on_state(False)

    async def _mark_up(self) -> None:
        if self.up:
            return
        self.up = True
        log.info("redis_up", down_secs=round(time.time() - (self.down_since or time.time()), 3))
        self.down_since = None
        if self._on_state is not None:
            self._on_state(True)
        for listener in self._up_listeners:
            try:
                await listener()
            except RedisDown:
                return  # down again; the next ping re-runs every listener
            except Exception:
                log.exception("redis_resync_failed")
