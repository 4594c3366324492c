"""Timeouts for many short calls at once, checked by one timer per tick instead of one timer per call.

`asyncio.timeout` arms and cancels an event-loop timer for every call: ~6 µs on this VM, on every provider call
of the hot path. Here a call registers its deadline in a set, and one timer, armed only while calls are in
flight, looks every TICK seconds for calls past their deadline and cancels their tasks: ~1 µs a call. A call
times out up to TICK late, which is nothing against provider timeouts of seconds.
"""

from __future__ import annotations

import asyncio
import math
from types import TracebackType

__all__ = ["CoarseTimeouts"]

TICK_SECS = 0.05


class _Call:
    """One call's deadline; `with` it around the awaited call. Its expiry raises TimeoutError, as
    asyncio.timeout's does; a cancellation from elsewhere stays a cancellation."""

    __slots__ = ("_book", "_task", "deadline", "expired")

    def __init__(self, book: CoarseTimeouts, task: asyncio.Task[object], deadline: float) -> None:
        self._book = book
        self._task = task
        self.deadline = deadline
        self.expired = False

    def __enter__(self) -> _Call:
        self._book._enter(self)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._book.calls.discard(self)
        if self.expired and kind is asyncio.CancelledError and self._task.uncancel() == 0:
            raise TimeoutError from exc

    def expire(self) -> None:
        self.expired = True
        self._task.cancel()


class CoarseTimeouts:
    def __init__(self) -> None:
        self.calls: set[_Call] = set()
        self._timer: asyncio.TimerHandle | None = None

    def within(self, seconds: float) -> _Call:
        """A deadline `seconds` from now for the current task."""
        loop = asyncio.get_running_loop()  # once: each call is a getpid system call (asyncio's fork check)
        return self._watch(loop, loop.time() + seconds)

    def idle_watch(self) -> _Call:
        """A deadline for the current task that starts disarmed (never due), for a loop of waits such as a
        stream's reads: set `deadline` before each wait and back to `math.inf` after it. One registration for
        the whole loop instead of one per wait; `with` it around the loop, as `within`'s."""
        return self._watch(asyncio.get_running_loop(), math.inf)

    def _watch(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Call:
        task = asyncio.current_task(loop)
        assert task is not None, "a timeout needs a task to cancel"
        return _Call(self, task, deadline)

    def _enter(self, call: _Call) -> None:
        self.calls.add(call)
        if self._timer is None:
            loop = asyncio.get_running_loop()
            # A call shorter than a tick would wait a whole one: fire at its deadline when that comes sooner.
            self._timer = loop.call_at(min(call.deadline, loop.time() + TICK_SECS), self._tick)

    def _tick(self) -> None:
        self._timer = None
        if not self.calls:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        soonest = now + TICK_SECS
        for call in list(self.calls):
            if call.expired:
                continue
            if call.deadline <= now:
                call.expire()
            else:
                soonest = min(soonest, call.deadline)
        if any(not call.expired for call in self.calls):
            self._timer = loop.call_at(max(soonest, now + 0.001), self._tick)
