"""Start-up and shutdown as data: a list of components, started in order and stopped in reverse.

A component is anything with an async `start` and `stop` and a `name` (a `Periodic` job is one); `Hooks`
turns a pair of plain callables into one. A component whose start fails stops the ones already started and
fails start-up; one whose stop fails is logged and the rest still stop, so the last flush and the store
closes always happen.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

__all__ = ["Component", "Hooks", "start_all", "stop_all"]

log = structlog.get_logger("tokenhub.lifecycle")


class Component(Protocol):
    @property
    def name(self) -> str: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def _nothing() -> None:
    return None


@dataclass(frozen=True, slots=True)
class Hooks:
    """A component made of two callables, each sync or async (e.g. a writer's `start` and a store's `close`)."""

    name: str
    on_start: Callable[[], Awaitable[None] | None] = _nothing
    on_stop: Callable[[], Awaitable[None] | None] = _nothing

    async def start(self) -> None:
        await _call(self.on_start)

    async def stop(self) -> None:
        await _call(self.on_stop)


async def _call(fn: Callable[[], Awaitable[None] | None]) -> None:
    result = fn()
    if inspect.isawaitable(result):
        await result


async def start_all(components: Sequence[Component]) -> None:
    """Start each in order; if one fails, stop those already started (in reverse) and re-raise."""
    started: list[Component] = []
    for component in components:
        try:
            await component.start()
        except BaseException:
            log.error("component_start_failed", component=component.name)
            await stop_all(started)
            raise
        started.append(component)


async def stop_all(components: Sequence[Component]) -> None:
    """Stop each in reverse order; a failure is logged and does not keep the others running."""
    for component in reversed(components):
        try:
            await component.stop()
        except Exception:
            log.exception("component_stop_failed", component=component.name)
