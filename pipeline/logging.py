"""structlog JSON logging with secret redaction and a per-request ``request_id`` context variable."""

from __future__ import annotations

import functools
import logging
import queue
import sys
import threading
from collections.abc import MutableMapping
from typing import Any

import structlog

REDACTED = "[REDACTED]"
_EXACT = {"authorization", "x-api-key", "proxy-authorization", "cookie", "set-cookie", "body", "request_body"}
_PARTS = ("key", "token", "secret", "password")
_SAFE = {
    "api_key_id",
    "key_prefix",
    "tokens",
    "input_tokens",
    "output_tokens",
}  # counters and ids, not secrets
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "warning": logging.WARNING}


@functools.lru_cache(maxsize=4096)
def is_sensitive(name: str) -> bool:
    """Attribute names are a small, fixed set, so the decision is cached: this runs on every log line."""
    lowered = name.lower()
    if lowered in _SAFE:
        return False
    return lowered in _EXACT or any(part in lowered for part in _PARTS)


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace the value of any attribute whose name suggests a secret."""
    for name in [name for name in event if is_sensitive(name)]:
        event[name] = REDACTED
    return event


class QueuedStream:
    """A file-like object whose writes are queued and done by a background thread, so logging one
    line per request never blocks the event loop on a slow stdout pipe or disk."""

    def __init__(self, target: Any) -> None:
        self._target = target
        self._lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._drain, name="log-writer", daemon=True)
        self._thread.start()

    def write(self, text: str) -> None:
        self._lines.put(text)

    def flush(self) -> None:  # the drain thread flushes after each burst
        return None

    def close(self) -> None:
        """Write everything queued, then stop the thread."""
        self._lines.put(None)
        self._thread.join(timeout=5)

    def _drain(self) -> None:
        while (text := self._lines.get()) is not None:
            try:
                self._target.write(text)
                while not self._lines.empty():
                    more = self._lines.get()
                    if more is None:
                        self._target.flush()
                        return
                    self._target.write(more)
                self._target.flush()
            except (OSError, ValueError):  # closed or broken stdout: drop the line, keep serving
                continue


def configure_logging(level: str = "info", stream: Any = None) -> QueuedStream:
    """Configure structlog; returns the queued stream so shutdown can flush it."""
    out = QueuedStream(stream or sys.stdout)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
            structlog.processors.format_exc_info,
            redact,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.ERROR)),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    return out
