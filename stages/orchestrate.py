"""orchestrate: on /v1/plan, run the plan's steps, each an ordinary pass through the rest of the chain.

For every other request it only passes through, unless durable orchestration is on (docs/temporal.md): then
a non-streaming /v1/chat, and a /v1/plan, run as Temporal workflows whose activities run the rest of this same
chain (`services.temporal`, stages/durable/), falling back to the direct path here when Temporal is not there.
Each step is a child request (its own request id, linked to
the plan's by `parent_request_id`) recorded as its own request-log row; the plan's budget covers them all.
The plan routes under its tenant's routing options, the options of the policy step of the same tenant
pipeline: each step goes through that policy stage, and the plan's budget and the vote's ranking of voters
come from the same Router with the same options.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from pydantic import Field

from pipeline.context import Policy, RequestContext
from pipeline.errors import NoEligibleModel
from pipeline.output_schema import validate_output
from pipeline.stage import Next, StageOptions, StageSpec
from pipeline.types import ChatRequest
from stages.plan_modes import InProcessOrchestrator, Orchestrator, plan_reason
from stages.plan_steps import StepRunner
from stages.policy import policy_options_of
from stages.router import Router, RoutingOptions

if TYPE_CHECKING:
    from pipeline.services import Services


class OrchestrateOptions(StageOptions):
    max_parallel_steps: int = Field(4, ge=1, le=32, description="vote voters running at once")


class Orchestrate:
    def __init__(self, services: Services, options: OrchestrateOptions) -> None:
        self._services = services
        self._router = services.router
        self.orchestrator: Orchestrator = InProcessOrchestrator(max_parallel=options.max_parallel_steps)

    async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
        plan = ctx.plan
        durable = self._services.temporal
        if plan is None:
            if durable.takes(ctx):
                await durable.run_chat(ctx, call_next)  # falls back to call_next itself
            else:
                await call_next(ctx)
            return
        routing = policy_options_of(self._services.snapshot.pipelines.get(ctx.tenant_id))
        budget = self._router.limits(ctx.policy, routing).max_budget_usd  # a tenant's ceiling caps the whole plan
        ctx.policy.mode = plan.mode or "planning"  # the plan's own row names its orchestration mode
        direct = functools.partial(self._run_here, ctx, call_next, routing, budget)
        if ctx.plan_async or durable.takes(ctx):
            await durable.run_plan(ctx, budget, direct)  # an async plan needs Temporal; a synchronous one falls back
        else:
            await direct()

    async def _run_here(self, ctx: RequestContext, call_next: Next, routing: RoutingOptions, budget: float) -> None:
        plan = ctx.plan
        assert plan is not None
        runner = StepRunner(self._services, ctx, call_next, budget_usd=budget, on_event=ctx.plan_events or _ignore)
        rank = functools.partial(self._rank, routing, ctx.request_id)
        outcome = await self.orchestrator.run(plan, ctx.request, runner, rank)
        ctx.plan_outcome = outcome
        ctx.plan_steps = runner.steps
        ctx.routing_reason = plan_reason(outcome, len(runner.steps), runner.spent_usd, budget, runner.notes)
        if plan.output_schema is not None:
            validate_output(plan.output_schema, outcome.composite)

    async def _rank(
        self,
        routing: RoutingOptions,
        request_id: str,
        question: ChatRequest,
        mode: str,
        min_weight: int,
        budget: float,
        excluded: frozenset[str],
    ) -> list[str]:
        return rank_models(self._router, routing, request_id, question, mode, min_weight, budget, excluded)


def rank_models(
    router: Router,
    routing: RoutingOptions,
    request_id: str,
    question: ChatRequest,
    mode: str,
    min_weight: int,
    budget: float,
    excluded: frozenset[str],
) -> list[str]:
    """Models a vote may use, best first: the Router's decision under the tenant's options, in ranked
    order (no exploration) and without counting skips (each voter's own step is a real decision)."""
    policy = Policy(mode, budget, 0, min_weight)
    try:
        decision = router.decide(question, policy, routing, request_id=request_id, observe=False, explore=False)
    except NoEligibleModel:
        return []
    return [c.model.id for c in decision.candidates if c.model.id not in excluded]


async def _ignore(event: str, data: dict[str, Any]) -> None:
    return None


SPEC = StageSpec(
    name="orchestrate",
    factory=Orchestrate,
    options=OrchestrateOptions,
    summary="On /v1/plan, runs adversarial / vote / refine steps, each through the rest of the chain.",
    after=("auth", "directives"),
)
