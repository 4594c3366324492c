"""orchestrate: on /v1/plan, run the plan's steps, each an ordinary pass through the rest of the chain.

For every other request it only passes through. Each step is a child request (its own request id, linked to
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
from stages.plan_modes import InProcessOrchestrator, Orchestrator
from stages.plan_steps import StepRunner
from stages.policy import policy_options_of
from stages.router import RoutingOptions

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
        if plan is None:
            await call_next(ctx)
            return
        services = self._services
        routing = policy_options_of(services.snapshot.pipelines.get(ctx.tenant_id))
        budget = self._router.limits(ctx.policy, routing).max_budget_usd  # a tenant's ceiling caps the whole plan
        runner = StepRunner(services, ctx, call_next, budget_usd=budget, on_event=ctx.plan_events or _ignore)
        ctx.policy.mode = plan.mode or "planning"  # the plan's own row names its orchestration mode
        rank = functools.partial(self._rank, routing, ctx.request_id)
        outcome = await self.orchestrator.run(plan, ctx.request, runner, rank)
        ctx.plan_outcome = outcome
        ctx.plan_steps = runner.steps
        ctx.routing_reason = (
            f"{outcome.reason}: {len(runner.steps)} step(s), ${runner.spent_usd:.6f} of ${budget:g}"
            + (f"; stopped: {outcome.stop_reason}" if outcome.stop_reason else "")
            + "".join(f"; {note}" for note in (*runner.notes, *outcome.notes))
        )
        if plan.output_schema is not None:
            validate_output(plan.output_schema, outcome.composite)

    def _rank(
        self,
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
            decision = self._router.decide(
                question, policy, routing, request_id=request_id, observe=False, explore=False
            )
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
