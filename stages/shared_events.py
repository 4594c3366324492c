"""Live events (``GET /admin/v1/events``) from every worker and replica that shares Redis (docs/scaling.md).

A process sends its events to one Redis pub/sub channel only while some other process has subscribers (it asks
Redis, ``PUBSUB NUMSUB``, every CHECK_SECS): with nobody watching elsewhere, nothing more is built or sent than
before. A process subscribes to the channel while it has subscribers of its own and hands them what the others
send. Events travel in batches (one PUBLISH per FLUSH_SECS at most), each tagged with the process that sent it,
so that none comes back to it. Pub/sub delivers at most once: while Redis is down, and for up to two CHECK_SECS
after a subscriber connects (this process's check, then the others'), other processes' events can be missed; a
process's own never are.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
from typing import TYPE_CHECKING, Any

import structlog

from pipeline.events import EventBus
from store.redis_link import RedisDown

if TYPE_CHECKING:
    from store.redis_link import RedisLink

__all__ = ["CHECK_SECS", "FLUSH_SECS", "SharedEvents"]

log = structlog.get_logger("tokenhub.shared_events")
CHECK_SECS = 0.5
FLUSH_SECS = 0.05
MAX_PENDING = 1000  # frames waiting for their PUBLISH (Redis slow); past it, new ones are not sent
_FRAME_END = b"\n\n"


class SharedEvents:
    """The event bus's outlet to Redis, and the subscription that brings the other processes' events in."""

    def __init__(self, link: RedisLink, bus: EventBus) -> None:
        self._link = link
        self._bus = bus
        self._channel = link.key("events")
        self._origin = secrets.token_hex(8).encode()  # this process, in every batch it sends
        self._pending: list[bytes] = []
        self._flush: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._pubsub: Any = None  # redis-py's PubSub while this process has subscribers
        self._listen: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._bus.connect_outlet(self._send)
        self._watch = asyncio.create_task(self._watch_loop(), name="shared-events")

    async def stop(self) -> None:
        self._bus.connect_outlet(None)
        for task in (self._watch, self._flush):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self._unsubscribe()

    # --- out ----------------------------------------------------------------------------------------------

    def _send(self, frame: bytes) -> None:
        if len(self._pending) >= MAX_PENDING:
            return
        self._pending.append(frame)
        if self._flush is None:
            self._flush = asyncio.create_task(self._publish_soon(), name="shared-events-publish")

    async def _publish_soon(self) -> None:
        try:
            while self._pending:
                await asyncio.sleep(FLUSH_SECS)  # what else is published meanwhile goes in the same batch
                frames, self._pending = self._pending, []
                message = self._origin + b"\n" + b"".join(frames)
                with contextlib.suppress(RedisDown):  # down: the watch stops the sending until it is back
                    await self._link.run(functools.partial(self._link.client.publish, self._channel, message))
        finally:
            self._flush = None

    # --- in -----------------------------------------------------------------------------------------------

    async def _watch_loop(self) -> None:
        while True:
            try:
                await self._check()
            except RedisDown:
                self._bus.remote_listeners = False
                await self._unsubscribe()
            await asyncio.sleep(CHECK_SECS)

    async def _check(self) -> None:
        if not self._link.up:
            self._bus.remote_listeners = False
            await self._unsubscribe()
            return
        wanted = self._bus.subscribers > 0
        if wanted and self._pubsub is None:
            await self._subscribe()
        elif not wanted and self._pubsub is not None:
            await self._unsubscribe()
        [(_, count)] = await self._link.run(lambda: self._link.client.pubsub_numsub(self._channel))
        self._bus.remote_listeners = count - (1 if self._pubsub is not None else 0) > 0

    async def _subscribe(self) -> None:
        pubsub = self._link.client.pubsub(ignore_subscribe_messages=True)
        try:
            await self._link.run(lambda: pubsub.subscribe(self._channel))
        except RedisDown:
            await pubsub.aclose()
            raise
        self._pubsub = pubsub
        self._listen = asyncio.create_task(self._listen_loop(pubsub), name="shared-events-listen")

    async def _unsubscribe(self) -> None:
        pubsub, listen, self._pubsub, self._listen = self._pubsub, self._listen, None, None
        if listen is not None:
            listen.cancel()
            await asyncio.gather(listen, return_exceptions=True)
        if pubsub is not None:
            with contextlib.suppress(Exception):  # a connection Redis already dropped
                await pubsub.aclose()

    async def _listen_loop(self, pubsub: Any) -> None:
        while True:
            try:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except Exception as exc:  # the connection broke: the next check subscribes again
                log.warning("shared_events_unsubscribed", error=type(exc).__name__)
                self._pubsub = self._listen = None
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                return
            if message is None or message.get("type") != "message":
                continue
            origin, _, frames = bytes(message["data"]).partition(b"\n")
            if origin != self._origin:
                self._bus.deliver([frame + _FRAME_END for frame in frames.split(_FRAME_END) if frame])
