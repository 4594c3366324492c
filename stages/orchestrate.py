"""orchestrate: on /v1/plan, run the plan's steps, each an ordinary pass through the rest of the chain.

For every other request it only passes through. Each step is a child request (its own request id, linked to
the plan's by `parent_request_id`) recorded as its own request-log row; the plan's budget covers them all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from pipeline.context import Policy, RequestContext
from pipeline.errors import NoEligibleModel
from pipeline.output_schema import validate_output
from pipeline.stage import Next, StageOptions, StageSpec
from pipeline.types import ChatRequest
from stages.plan_modes import InProcessOrchestrator, Orchestrator
from stages.plan_steps import StepRunner
from stages.policy import Policy as PolicyStage
from stages.policy import PolicyOptions

if TYPE_CHECKING:
    from pipeline.services import Services


class OrchestrateOptions(StageOptions):
    max_parallel_steps: int = Field(4, ge=1, le=32, description="vote voters running at once")


class Orchestrate:
    def __init__(self, services: Services, options: OrchestrateOptions) -> None:
        self._services = services
        self._ranker = PolicyStage(services, PolicyOptions())
        self.orchestrator: Orchestrator = InProcessOrchestrator(self._rank, max_parallel=options.max_parallel_steps)

    async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
        plan = ctx.plan
        if plan is None:
            await call_next(ctx)
            return
        services = self._services
        budget = (
            ctx.policy.max_budget_usd
            or services.snapshot.routing.max_budget_usd
            or services.settings.default_max_budget_usd
        )
        runner = StepRunner(services, ctx, call_next, budget_usd=budget, on_event=ctx.plan_events or _ignore)
        ctx.policy.mode = plan.mode or "planning"  # the plan's own row names its orchestration mode
        outcome = await self.orchestrator.run(plan, ctx.request, runner)
        ctx.plan_outcome = outcome
        ctx.plan_steps = runner.steps
        ctx.routing_reason = (
            f"{outcome.reason}: {len(runner.steps)} step(s), ${runner.spent_usd:.6f} of ${budget:g}"
            + (f"; stopped: {outcome.stop_reason}" if outcome.stop_reason else "")
            + "".join(f"; {note}" for note in outcome.notes)
        )
        if plan.output_schema is not None:
            validate_output(plan.output_schema, outcome.composite)

    def _rank(
        self, question: ChatRequest, mode: str, min_weight: int, budget: float, excluded: frozenset[str]
    ) -> list[str]:
        """Models a vote may use, best first, by the same eligibility and scoring as any request."""
        probe = RequestContext(
            request_id="rank", scope="plan", client_ip="", request=question, policy=Policy(mode, budget, 0, min_weight)
        )
        try:
            decision = self._ranker.decide(probe)
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
