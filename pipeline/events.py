"""In-process event bus behind ``GET /admin/v1/events`` (Server-Sent Events).

Publishing never waits: each event is encoded once into an SSE frame and appended to every subscriber's
bounded buffer. A subscriber whose buffer is full has fallen behind; it is dropped (its stream ends with
a ``dropped`` event) instead of slowing the publisher, which is usually a request on its way out. With
no subscriber, ``active`` is False and callers skip building the event at all.

Scaled out (Redis configured), the bus also has an outlet to the other workers and replicas
(stages/shared_events.py): while some other process has subscribers, ``remote_listeners`` is True, events
(but heartbeats, which are each process's own) go to the outlet as well, and what the others publish arrives
through ``deliver``.

Everything here runs on the event loop thread.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog

__all__ = ["LOCAL_EVENTS", "SUBSCRIBER_BUFFER", "EventBus", "Subscriber", "sse_frame"]

log = structlog.get_logger("tokenhub.events")
SUBSCRIBER_BUFFER = 64  # events; the original's per-subscriber channel size
LOCAL_EVENTS = frozenset({"heartbeat"})  # never sent to other processes: each has its own


def sse_frame(event_type: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event_type.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class Subscriber:
    __slots__ = ("_frames", "_limit", "_wake", "closed", "dropped")

    def __init__(self, limit: int) -> None:
        self._frames: deque[bytes] = deque()
        self._limit = limit
        self._wake = asyncio.Event()
        self.closed = False
        self.dropped = False  # closed because it fell behind, not because the server is stopping

    def offer(self, frame: bytes) -> bool:
        """Queue a frame; False when the buffer is full."""
        if len(self._frames) >= self._limit:
            return False
        self._frames.append(frame)
        self._wake.set()
        return True

    def close(self, *, dropped: bool = False) -> None:
        self.closed = True
        self.dropped = self.dropped or dropped
        self._wake.set()

    async def next_frames(self) -> list[bytes]:
        """Wait for frames and take them all, in publish order; [] once closed and drained."""
        while not self._frames and not self.closed:
            self._wake.clear()
            await self._wake.wait()
        frames = list(self._frames)
        self._frames.clear()
        return frames


class EventBus:
    def __init__(
        self, *, buffer: int = SUBSCRIBER_BUFFER, on_subscriber_dropped: Callable[[], None] = lambda: None
    ) -> None:
        self._buffer = buffer
        self._subscribers: list[Subscriber] = []
        self._on_dropped = on_subscriber_dropped
        self._closed = False
        self._outlet: Callable[[bytes], None] | None = None
        self.remote_listeners = False  # another process has subscribers (set by the outlet's owner)

    @property
    def active(self) -> bool:
        """True when someone is listening: check it before building an event on a hot path."""
        return bool(self._subscribers) or self.remote_listeners

    def connect_outlet(self, outlet: Callable[[bytes], None] | None) -> None:
        """Frames for the other processes go to `outlet` while ``remote_listeners`` is set; None disconnects."""
        self._outlet = outlet
        if outlet is None:
            self.remote_listeners = False

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def subscribe(self) -> Subscriber:
        subscriber = Subscriber(self._buffer)
        if self._closed:
            subscriber.close()
        else:
            self._subscribers.append(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)
        subscriber.close()

    def publish(self, event_type: str, **fields: Any) -> None:
        """Send one event to every subscriber. Empty, zero and None fields are left out of the payload;
        ``timestamp`` (RFC 3339, UTC) is set when missing."""
        if not self.active:
            return
        data: dict[str, Any] = {"type": event_type}
        data.update((k, v) for k, v in fields.items() if v)
        data.setdefault("timestamp", datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"))
        frame = sse_frame(event_type, data)
        self.deliver((frame,))
        if self.remote_listeners and self._outlet is not None and event_type not in LOCAL_EVENTS:
            self._outlet(frame)

    def deliver(self, frames: Sequence[bytes]) -> None:
        """Frames to every subscriber of this process: its own events, and the other processes' (the outlet)."""
        for subscriber in list(self._subscribers):
            for frame in frames:
                if not subscriber.offer(frame):
                    self._drop(subscriber)
                    break

    def close(self) -> None:
        """End every stream (server shutdown); later subscribers are closed at once."""
        self._closed = True
        for subscriber in self._subscribers:
            subscriber.close()
        self._subscribers.clear()

    def _drop(self, subscriber: Subscriber) -> None:
        self._subscribers.remove(subscriber)
        subscriber.close(dropped=True)
        self._on_dropped()
        log.warning("event_subscriber_dropped", reason="buffer full", buffer=self._buffer)
