"""The values workflows and activities exchange: small dataclasses, JSON on the wire, never a secret.

An activity rebuilds its request context from an `Origin` (the API key by id from the current snapshot, so a
key revoked mid-plan stops spending); an error crosses the wire as a `WireError` and comes back as a
`RemoteError` with the same status, type, message and extra fields, so the client sees what the direct path
would have answered.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pipeline.context import Attempt, PlanSpec, Policy
from pipeline.errors import TokenHubError
from pipeline.types import Message, Usage
from stages.plan_modes import PlanOutcome
from stages.plan_steps import StepResult

__all__ = [
    "ChatInput",
    "ChatOutcome",
    "Origin",
    "PlanFinish",
    "PlanInput",
    "PlanResult",
    "RankCall",
    "RemoteError",
    "StepCall",
    "StepOutcome",
    "WireError",
    "from_wire",
    "to_wire",
]


@dataclass
class Origin:
    """The request a workflow serves: who asked, under which id. Every activity rebuilds its context from it."""

    request_id: str
    tenant_id: str
    api_key_id: str  # "" for a key-less request; the key itself never travels
    presented_key: bool
    client_ip: str
    client_request_id: str
    scope: str
    endpoint: str
    received_at: float  # unix seconds: a row's latency covers the whole request, Temporal included


@dataclass
class WireError:
    status: int
    type: str
    message: str
    field: str | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


class RemoteError(TokenHubError):
    """A TokenHubError raised in an activity, as the client would have seen it from the direct path."""

    def __init__(self, wire: WireError) -> None:
        super().__init__(wire.message, field=wire.field, headers=wire.headers)
        self.status = wire.status
        self.type = wire.type
        self._extra = dict(wire.extra)
        self.error_class = str(wire.extra.get("error_class", "")) or wire.type

    def extra(self) -> dict[str, Any]:
        return dict(self._extra)


def to_wire(exc: TokenHubError) -> WireError:
    return WireError(exc.status, exc.type, exc.message, exc.field, dict(exc.headers), exc.extra())


def from_wire(wire: WireError) -> RemoteError:
    return RemoteError(wire)


@dataclass
class ChatInput:
    origin: Origin
    messages: list[Message]
    policy: Policy  # after directives: what the policy stage starts from
    model_hint: str = ""
    estimated_input_tokens: int = 0
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    output_schema: Any = None
    output_format: dict[str, Any] | None = None  # pipeline.output_format.OutputFormat's fields
    timeout_secs: float = 150.0


@dataclass
class ChatOutcome:
    """What the edge needs to answer (the row is already recorded): the answer, or the error."""

    error: WireError | None = None
    model_id: str = ""
    provider_id: str = ""
    body: dict[str, Any] = dataclasses.field(default_factory=dict)
    usage: Usage | None = None
    latency_ms: float = 0.0
    format: str = "openai"
    cost_usd: float = 0.0
    attempts: list[Attempt] = dataclasses.field(default_factory=list)
    routing_reason: str = ""
    alias_from: str = ""


@dataclass
class PlanInput:
    origin: Origin
    spec: PlanSpec
    messages: list[Message]
    policy: Policy
    budget_usd: float  # the plan's whole budget (the tenant's ceiling applied)
    model_hint: str = ""
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    max_parallel: int = 4
    step_timeout_secs: float = 150.0


@dataclass
class StepCall:
    """One plan step: `StepRunner.run`'s arguments, and where the plan stands (for its budget checks)."""

    origin: Origin
    plan_budget_usd: float
    max_latency_ms: int
    index: int
    role: str
    messages: list[Message]
    mode: str
    min_weight: int = 0
    model_hint: str = ""
    only_models: list[str] | None = None
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    budget_usd: float | None = None
    spent_usd: float = 0.0
    steps_done: int = 0


@dataclass
class StepOutcome:
    result: StepResult | None = None
    budget_exhausted: str = ""  # the plan's budget stopped this step (BudgetExhausted's message)
    error: WireError | None = None


@dataclass
class RankCall:
    origin: Origin
    messages: list[Message]
    mode: str
    min_weight: int
    budget_usd: float
    excluded: list[str] = dataclasses.field(default_factory=list)
    model_hint: str = ""
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass
class PlanFinish:
    """The plan's end, handed to the activity that records the plan's own row."""

    origin: Origin
    mode: str
    budget_usd: float
    output_schema: Any = None
    outcome: PlanOutcome | None = None
    steps: list[StepResult] = dataclasses.field(default_factory=list)
    error: WireError | None = None
    cancelled: bool = False


@dataclass
class PlanResult:
    status: str  # "completed", "failed" or "cancelled"
    steps: list[StepResult] = dataclasses.field(default_factory=list)
    outcome: PlanOutcome | None = None
    routing_reason: str = ""
    error: WireError | None = None
