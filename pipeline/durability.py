"""What the request path and the APIs ask of durable orchestration, and the default: none.

`Services.temporal` is a `Durable`. Off (the default), it is `NotDurable`: nothing is taken off the direct
path and the Temporal-only APIs say Temporal is required. The composition root installs the Temporal
runtime (stages/durable/runtime.py) when TOKENHUB_TEMPORAL_ENABLED is set; it is not imported here, so the
services never depend on the stages that depend on them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from pipeline.context import RequestContext
from pipeline.errors import InvalidRequest

__all__ = ["TEMPORAL_REQUIRED", "Durable", "NotDurable"]

Next = Callable[[RequestContext], Awaitable[None]]  # pipeline.stage.Next (not imported: it names the services)

TEMPORAL_REQUIRED = (
    "this needs Temporal (durable orchestration): set TOKENHUB_TEMPORAL_ENABLED=true and run a Temporal "
    "server (docs/temporal.md)"
)


class Durable(Protocol):
    enabled: bool

    @property
    def name(self) -> str: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def status(self) -> dict[str, Any]: ...

    def takes(self, ctx: RequestContext) -> bool: ...

    async def run_chat(self, ctx: RequestContext, direct: Next) -> None: ...

    async def run_plan(self, ctx: RequestContext, budget_usd: float, direct: Callable[[], Awaitable[None]]) -> None: ...

    async def plan_status(self, plan_id: str, api_key_id: str) -> dict[str, Any]: ...

    async def cancel_plan(self, plan_id: str, api_key_id: str) -> dict[str, Any]: ...

    async def list_workflows(
        self, *, status: str | None, limit: int, page_token: bytes | None
    ) -> tuple[list[dict[str, Any]], bytes | None]: ...

    async def describe(self, workflow_id: str) -> dict[str, Any]: ...

    async def history(self, workflow_id: str) -> dict[str, Any]: ...


class NotDurable:
    """Temporal off: every request takes the direct path."""

    name = "temporal"
    enabled = False

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def status(self) -> dict[str, Any]:
        return {"enabled": False}

    def takes(self, ctx: RequestContext) -> bool:
        return False

    async def run_chat(self, ctx: RequestContext, direct: Next) -> None:
        await direct(ctx)

    async def run_plan(self, ctx: RequestContext, budget_usd: float, direct: Callable[[], Awaitable[None]]) -> None:
        if ctx.plan_async:
            raise InvalidRequest(TEMPORAL_REQUIRED, field="async")
        await direct()

    async def plan_status(self, plan_id: str, api_key_id: str) -> dict[str, Any]:
        raise InvalidRequest(TEMPORAL_REQUIRED)

    async def cancel_plan(self, plan_id: str, api_key_id: str) -> dict[str, Any]:
        raise InvalidRequest(TEMPORAL_REQUIRED)

    async def list_workflows(
        self, *, status: str | None, limit: int, page_token: bytes | None
    ) -> tuple[list[dict[str, Any]], bytes | None]:
        return [], None

    async def describe(self, workflow_id: str) -> dict[str, Any]:
        raise InvalidRequest(TEMPORAL_REQUIRED)

    async def history(self, workflow_id: str) -> dict[str, Any]:
        raise InvalidRequest(TEMPORAL_REQUIRED)
