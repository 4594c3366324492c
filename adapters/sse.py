"""Server-Sent Events read from an upstream response body, with an idle limit on every read."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from adapters.coarse_timeout import CoarseTimeouts

__all__ = [
    "MAX_EVENT_CHARS",
    "MAX_LINE_BYTES",
    "ByteStream",
    "SseEvent",
    "StreamStalled",
    "StreamTooLong",
    "read_events",
]

# A single SSE line, or an event's data, longer than this is not a chat chunk: the stream is treated as broken.
MAX_LINE_BYTES = 8 * 1024 * 1024
MAX_EVENT_CHARS = MAX_LINE_BYTES
_LINE_TOO_LONG = f"an upstream SSE line exceeded {MAX_LINE_BYTES} bytes"
_EVENT_TOO_LONG = f"an upstream SSE event exceeded {MAX_EVENT_CHARS} characters of data"
_CR, _LF = ord("\r"), ord("\n")


class ByteStream(Protocol):
    """A response body read as it arrives (adapters/lean_http.LeanStream; aiohttp's StreamReader fits too)."""

    async def readany(self) -> bytes:
        """Whatever has arrived, waiting for some when nothing has; b"" at the end."""
        ...


class StreamStalled(Exception):
    """No byte arrived from the upstream within the idle limit."""


class StreamTooLong(Exception):
    """One SSE line exceeded MAX_LINE_BYTES, or one event's data MAX_EVENT_CHARS."""


@dataclass(slots=True)
class SseEvent:
    event: str  # "" when the event had no `event:` field
    data: str


async def read_events(content: ByteStream, idle_timeout: float, timeouts: CoarseTimeouts) -> AsyncIterator[SseEvent]:
    """Yield each complete event; return at end of body (a trailing event without its blank line is still
    yielded). Raises StreamStalled, StreamTooLong, or OSError when the connection breaks.

    The idle limit is checked by `timeouts` (one timer per tick for everything in flight), with one deadline
    for the whole stream that is due only while a read waits: a timer armed and cancelled per read would cost
    ~6 µs a token. A stall is found up to a tick (50 ms) late; time the consumer spends between reads (a slow
    client) never counts.

    The events are the same however the body is cut into chunks (tests/test_fuzz_parsers.py): a line is
    decoded only once whole, and the limits apply to whole lines and events, not to what one read returned.
    Each byte is searched for a line end once, so a long line arriving in small pieces costs linear time."""
    loop = asyncio.get_running_loop()
    buffer = bytearray()  # the line being received: no newline in it
    builder = _EventBuilder()
    try:
        with timeouts.idle_watch() as watch:  # one registration for every read of the stream
            while True:
                watch.deadline = loop.time() + idle_timeout  # due only while waiting for the upstream
                chunk = await content.readany()  # whatever has arrived: usually several lines at once
                watch.deadline = math.inf
                if not chunk:
                    if buffer.strip():
                        builder.line(buffer.rstrip(b"\r").decode("utf-8", "replace"))
                    if (event := builder.line("")) is not None:
                        yield event
                    return
                searched = len(buffer)  # the line held back has no newline: search only what arrived
                start = 0
                buffer += chunk
                while (end := buffer.find(b"\n", searched)) >= 0:
                    if end - start > MAX_LINE_BYTES:
                        raise StreamTooLong(_LINE_TOO_LONG)
                    if (
                        not builder.pending
                        and buffer.startswith(b"data: ", start)
                        and buffer[end - 1] != _CR
                        and end + 1 < len(buffer)
                        and buffer[end + 1] == _LF
                    ):
                        # The usual event whole in the buffer, one data line and its blank line: what the two
                        # lines make through the builder (the fuzz tests compare it with byte-by-byte reads).
                        data = buffer[start + 6 : end].decode("utf-8", "replace")
                        if len(data) + 1 > MAX_EVENT_CHARS:
                            raise StreamTooLong(_EVENT_TOO_LONG)
                        start = searched = end + 2
                        yield SseEvent("", data)
                        continue
                    event = builder.line(buffer[start:end].rstrip(b"\r").decode("utf-8", "replace"))
                    start = searched = end + 1
                    if event is not None:
                        yield event
                del buffer[:start]
                if len(buffer) > MAX_LINE_BYTES:
                    raise StreamTooLong(_LINE_TOO_LONG)
    except TimeoutError:
        raise StreamStalled(f"no data from the upstream for {idle_timeout:g}s") from None


class _EventBuilder:
    """Accumulates the fields of one event; a blank line completes it."""

    __slots__ = ("data", "event", "size")

    def __init__(self) -> None:
        self.event = ""
        self.data: list[str] = []
        self.size = 0  # characters of data so far: an event that never ends must not grow without bound

    @property
    def pending(self) -> bool:
        """Fields of an unfinished event are held."""
        return bool(self.data) or bool(self.event)

    def line(self, line: str) -> SseEvent | None:
        if not line:
            if not self.data:
                self.event = ""
                return None
            done = SseEvent(self.event, "\n".join(self.data))
            self.event, self.data, self.size = "", [], 0
            return done
        if line.startswith(":"):  # comment / keep-alive
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self.size += len(value) + 1
            if self.size > MAX_EVENT_CHARS:
                raise StreamTooLong(_EVENT_TOO_LONG)
            self.data.append(value)
        elif name == "event":
            self.event = value
        return None
