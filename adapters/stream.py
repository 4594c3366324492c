"""An open upstream stream, read as normalized deltas whatever the provider's wire format."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol

import structlog

from adapters.coarse_timeout import CoarseTimeouts
from adapters.errors import ProviderError, excerpt
from adapters.lean_http import LeanStream
from adapters.sse import SseEvent, StreamStalled, StreamTooLong, read_events
from pipeline.types import ErrorClass, StreamDelta

__all__ = ["ChunkParser", "MalformedChunk", "UpstreamStream", "malformed"]

log = structlog.get_logger("tokenhub.stream")


class MalformedChunk(Exception):
    """One upstream event could not be understood: it is skipped, logged and counted, not fatal."""


class ChunkParser(Protocol):
    """Turns one upstream SSE event into deltas. Stateful (one per stream); raises MalformedChunk for garbage
    and ProviderError for an error the upstream reports inside the stream."""

    @property
    def done(self) -> bool:
        """The upstream said the answer is complete ([DONE], message_stop)."""
        ...

    @property
    def finished(self) -> bool:
        """A finish reason was seen: a close after it is a clean end even without a done marker."""
        ...

    def feed(self, event: SseEvent) -> list[StreamDelta]: ...


class UpstreamStream:
    """Iterate to get deltas. Ends normally only when the upstream completed the answer; a cut, a stall or an
    in-stream error raises ProviderError. `close()` aborts the connection (never reused half-read)."""

    def __init__(
        self,
        response: LeanStream,
        parser: ChunkParser,
        *,
        provider_id: str,
        idle_timeout: float,
        timeouts: CoarseTimeouts,
        on_malformed: Callable[[], None],
        secret: str = "",
    ) -> None:
        self._response = response
        self._timeouts = timeouts
        self._parser = parser
        self._provider_id = provider_id
        self._idle_timeout = idle_timeout
        self._on_malformed = on_malformed
        self._secret = secret

    async def __aiter__(self) -> AsyncIterator[StreamDelta]:
        parser = self._parser
        try:
            async for event in read_events(self._response, self._idle_timeout, self._timeouts):
                try:
                    deltas = parser.feed(event)
                except MalformedChunk as exc:
                    self._on_malformed()
                    log.warning("malformed_stream_chunk", provider=self._provider_id, detail=str(exc))
                    continue
                for delta in deltas:
                    yield delta
                if parser.done:
                    return
        except StreamStalled as exc:
            raise ProviderError(ErrorClass.TRANSIENT, f"stream stalled: {exc}") from None
        except StreamTooLong as exc:
            raise ProviderError(ErrorClass.TRANSIENT, f"stream broken: {exc}") from None
        except OSError as exc:  # LeanHttpError: cut, reset, undecodable
            detail = excerpt(str(exc) or type(exc).__name__, self._secret)
            raise ProviderError(ErrorClass.TRANSIENT, f"stream dropped: {detail}", secret=self._secret) from None
        if not parser.finished:
            raise ProviderError(ErrorClass.TRANSIENT, "the upstream closed the stream before the answer finished")

    def close(self) -> None:
        """Abort: the upstream sees its connection close, which cancels generation on the provider."""
        self._response.close()

    def release(self) -> None:
        """Complete: return the connection to the pool."""
        self._response.release()


def malformed(detail: str, data: str) -> MalformedChunk:
    return MalformedChunk(f"{detail}: {excerpt(data, limit=120)}")
