"""The circuit breaker in front of Temporal: 3 failures in a row open it for 30 s, then one probe is let
through (half-open); its success closes the breaker, its failure opens it again. While open, requests take
the direct path at once instead of waiting on a Temporal that keeps failing."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Breaker"]


class Breaker:
    def __init__(
        self, *, failures: int = 3, open_secs: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._threshold = failures
        self._open_secs = open_secs
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half_open" if self._clock() - self._opened_at >= self._open_secs else "open"

    def allow(self) -> bool:
        """May this request use Temporal? In half-open, only the one probe may (until it reports)."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._probing:
            self._probing = True
            return True
        return False

    def success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def failure(self) -> None:
        self._probing = False
        self._failures += 1
        if self._opened_at is not None or self._failures >= self._threshold:
            self._opened_at = self._clock()
