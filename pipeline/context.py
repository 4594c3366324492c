"""The request context: the data that flows through a pipeline of stages."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pipeline.errors import TokenHubError
from pipeline.objective import DEFAULT_REWARD, RewardConfig
from pipeline.types import ApiKeyInfo, ChatRequest, ChatResult, ModelInfo, StreamDelta

if TYPE_CHECKING:
    from stages.expected_reward import Outlook
    from store.reservations import BudgetAccount

__all__ = ["Attempt", "Candidate", "PlanSpec", "Policy", "RequestContext", "RoutingDecision", "StreamSink"]


class StreamSink(Protocol):
    """Where a streamed answer goes: the edge's encoder for the client's wire format. Dispatch opens it
    when the first token is in hand (so failover before that point is invisible to the client)."""

    @property
    def opened(self) -> bool: ...

    def expect(self, ctx: RequestContext, candidate: Candidate) -> None:
        """`candidate`'s stream is open upstream and its first token awaited: prepare what `open` sends with it
        now, in time the request spends waiting anyway. `open` for another candidate prepares afresh."""
        ...

    async def open(self, ctx: RequestContext) -> None: ...

    async def send(self, delta: StreamDelta) -> None: ...


@dataclass(slots=True)
class Policy:
    """Routing constraints. Zero / empty means "not set": a later layer (directive, stage option,
    routing defaults) fills it in."""

    mode: str = ""
    max_budget_usd: float = 0.0
    max_latency_ms: int = 0
    min_weight: int = 0


@dataclass(frozen=True, slots=True)
class Candidate:
    model: ModelInfo
    score: float
    estimated_cost_usd: float


@dataclass(slots=True)
class RoutingDecision:
    mode: str
    candidates: list[Candidate]  # ranked, best first
    estimated_input_tokens: int
    # Renders the routing reason from values fixed at decision time (safe on any thread). Called when the reason
    # is first read (`reason`): for most requests by the request-log writer, in batches, off the request path.
    render_reason: Callable[[], str]
    exclusions: dict[str, str] = field(default_factory=dict)  # model id -> why it was not eligible
    deadline: float = 0.0  # monotonic seconds; the whole escalate/dispatch loop must finish by then
    latency_budget_ms: int = 0  # the max_latency_ms the deadline came from (the reward's latency scale)
    fallbacks: tuple[str, ...] = ()  # the first candidate's explicit fallback chain, placed right after it
    alias_from: str = ""  # the alias the request named, replaced by one of its variants ...
    model_hint: str = ""  # ... this one (the hint after alias resolution)
    objective: RewardConfig = DEFAULT_REWARD  # what the request's reward values (pipeline/objective.py)
    cost_ref_usd: float = 0.0  # the candidates' largest expected cost and latency: relative terms' references
    latency_ref_ms: float = 0.0
    # P(the routing policy picks the first candidate), for counterfactual evaluation; None when the policy
    # did not choose it (a model hint, a named model's fallback chain)
    propensity: float | None = None
    outlook: Outlook | None = None  # every candidate's expected reward, term by term (simulator, reason)
    _reason: str | None = field(default=None, init=False, repr=False)

    @property
    def reason(self) -> str:
        """The routing reason, rendered once (two threads rendering at once both get the same text)."""
        if self._reason is None:
            self._reason = self.render_reason()
        return self._reason

    def pending_reason(self) -> Callable[[], str] | None:
        """What renders the reason, while nothing has read it (a record takes it instead of the decision)."""
        return self.render_reason if self._reason is None else None


@dataclass(slots=True)
class Attempt:
    model_id: str
    provider_id: str
    error_class: str  # "" on success
    message: str
    latency_ms: float
    rescued: bool = False  # it continued a stream another model broke off (stream rescue)
    hedged_out: bool = False  # a hedged call cancelled because the other one answered first (not a failure)

    @property
    def outcome(self) -> str:
        """How it went, as the attempts column and header say it: "ok", "rescued", "hedged_out" or the error
        class."""
        if self.error_class:
            return self.error_class
        return "rescued" if self.rescued else "hedged_out" if self.hedged_out else "ok"


@dataclass(slots=True)
class PlanSpec:
    """A /v1/plan request's orchestration (orchestration.md); `mode` "" is a single planning pass."""

    mode: str = ""
    iterations: int = 0
    primary_min_weight: int = 0
    review_min_weight: int = 0
    primary_model_id: str = ""
    review_model_id: str = ""
    return_plan_only: bool = False
    output_schema: Any = None  # a parsed, checked JSON Schema


@dataclass(slots=True)
class RequestContext:
    request_id: str  # ours: unique and unguessable (pipeline/web.py)
    scope: str  # the API-key scope this endpoint needs, e.g. "chat"
    client_ip: str
    request: ChatRequest
    endpoint: str = "chat"  # which wire format / route served it, for the request log
    policy: Policy = field(default_factory=Policy)
    # Identity: resolved at the edge (it picks the tenant pipeline), enforced by the auth stage.
    presented_key: bool = False
    ip_admitted: bool = False  # the per-IP rate limit already counted this request (the edge, before the body)
    # Limits shared through Redis, deferred to the request's one round trip (stages/shared_gate.py): the groups
    # of buckets the edge and auth found to take, taken by dispatch together with the budget reservation.
    shared_takes: list[Any] = field(default_factory=list)
    # Auth sends the takes (and a key budget's hold, at a bound) as soon as it has added them, so the round trip
    # overlaps routing (SharedGate.send_early): the call in flight, for dispatch to await.
    shared_early: Any = None
    api_key: ApiKeyInfo | None = None
    tenant_id: str = "default"
    started_at: float = field(default_factory=time.perf_counter)
    ended_at: float = 0.0  # perf_counter() when the chain returned (the record is emitted after the answer)
    directives_applied: dict[str, Any] = field(default_factory=dict)
    decision: RoutingDecision | None = None
    target: Candidate | None = None  # the candidate dispatch calls next
    result: ChatResult | None = None
    served_by: Candidate | None = None  # the candidate whose answer is returned
    cost_usd: float = 0.0
    attempts: list[Attempt] = field(default_factory=list)
    routing_reason: str = ""
    rescue_note: str = ""  # what stream rescue did after a break, appended to the routing reason
    dispatch_note: str = ""  # what a hedged dispatch did, appended to the routing reason
    alias_from: str = ""  # the alias the client named, when policy replaced it by one of its variants
    error: TokenHubError | None = None
    sink: StreamSink | None = None  # set by the edge when the client asked for a stream
    ttft_ms: float = 0.0  # streams: from the start of the request to the first token handed to the sink
    plan: PlanSpec | None = None  # set on /v1/plan: the orchestrate stage runs the steps
    parent_request_id: str = ""  # set on each /v1/plan step: the plan's request id
    client_request_id: str = ""  # the client's well-formed X-Request-Id, kept for correlation only
    only_models: frozenset[str] | None = None  # a plan step pinned to these models (vote voters)
    plan_events: Any = None  # /v1/plan with stream: an async (event, data) callback for step progress
    plan_outcome: Any = None  # /v1/plan: what the orchestrator produced (stages.plan_modes.PlanOutcome)
    plan_steps: list[Any] = field(default_factory=list)  # /v1/plan: every step's StepResult, in order
    plan_budget: Callable[[], BudgetAccount] | None = None  # a /v1/plan step: its plan's budget, as it stands
    plan_async: bool = False  # /v1/plan with "async": start the plan's workflow and answer 202 at once
    # A Temporal activity recorded this request's row (or will): the record stage must not add a second one.
    recorded_elsewhere: bool = False

    def charge(self, candidate: Candidate, result: ChatResult) -> None:
        """What `candidate`'s call returned, and its price: the usage at the model's prices (the routing
        estimate when the provider reported no usage). A stream that ended early is charged the same way."""
        usage = result.usage
        model = candidate.model
        cost = model.cost_usd(usage.input_tokens, usage.output_tokens) if usage else candidate.estimated_cost_usd
        self.result = result
        self.cost_usd = round(cost, 10)  # drop float noise such as 7.500000000000001e-05
