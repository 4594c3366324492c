"""Server-Sent Events read from an upstream response body, with an idle limit on every read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

__all__ = ["MAX_LINE_BYTES", "SseEvent", "StreamStalled", "StreamTooLong", "read_events"]

# A single SSE line longer than this is not a chat chunk: the stream is treated as broken.
MAX_LINE_BYTES = 8 * 1024 * 1024


class StreamStalled(Exception):
    """No byte arrived from the upstream within the idle limit."""


class StreamTooLong(Exception):
    """One SSE line exceeded MAX_LINE_BYTES."""


@dataclass(slots=True)
class SseEvent:
    event: str  # "" when the event had no `event:` field
    data: str


async def read_events(content: aiohttp.StreamReader, idle_timeout: float) -> AsyncIterator[SseEvent]:
    """Yield each complete event; return at end of body (a trailing event without its blank line is still
    yielded). Raises StreamStalled, StreamTooLong, or aiohttp/OS errors when the connection breaks."""
    buffer = b""
    builder = _EventBuilder()
    while True:
        try:
            async with asyncio.timeout(idle_timeout):
                chunk = await content.readany()  # whatever has arrived: usually several lines at once
        except TimeoutError:
            raise StreamStalled(f"no data from the upstream for {idle_timeout:g}s") from None
        if not chunk:
            if buffer.strip():
                builder.line(buffer.rstrip(b"\r").decode("utf-8", "replace"))
            if (event := builder.line("")) is not None:
                yield event
            return
        buffer += chunk
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            event = builder.line(buffer[start:end].rstrip(b"\r").decode("utf-8", "replace"))
            start = end + 1
            if event is not None:
                yield event
        buffer = buffer[start:]
        if len(buffer) > MAX_LINE_BYTES:
            raise StreamTooLong(f"an upstream SSE line exceeded {MAX_LINE_BYTES} bytes")


class _EventBuilder:
    """Accumulates the fields of one event; a blank line completes it."""

    __slots__ = ("data", "event")

    def __init__(self) -> None:
        self.event = ""
        self.data: list[str] = []

    def line(self, line: str) -> SseEvent | None:
        if not line:
            if not self.data:
                self.event = ""
                return None
            done = SseEvent(self.event, "\n".join(self.data))
            self.event, self.data = "", []
            return done
        if line.startswith(":"):  # comment / keep-alive
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self.data.append(value)
        elif name == "event":
            self.event = value
        return None
