"""directives: apply ``@@tokenhub`` in-band overrides to the policy and strip them before forwarding."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.context import RequestContext
from pipeline.errors import InvalidRequest
from pipeline.modes import ORCHESTRATION_MODES, ROUTING_MODES
from pipeline.output_schema import check_schema
from pipeline.stage import Next, StageOptions, StageSpec
from stages.directive_syntax import DirectiveError, parse_directives, strip_directives

if TYPE_CHECKING:
    from pipeline.services import Services

__all__ = ["SPEC", "Directives", "DirectivesOptions"]


class DirectivesOptions(StageOptions):
    pass


class Directives:
    def __init__(self, services: Services, options: DirectivesOptions) -> None:
        pass

    async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
        request = ctx.request
        try:
            found = parse_directives(request.messages, ROUTING_MODES)
        except DirectiveError as exc:
            raise InvalidRequest(str(exc), field="directive.output_schema") from None
        if found is not None:
            # A directive value wins over the body's policy only when it is set (non-zero / non-empty).
            policy = ctx.policy
            policy.mode = found.mode or policy.mode
            policy.max_budget_usd = found.max_budget_usd or policy.max_budget_usd
            policy.max_latency_ms = found.max_latency_ms or policy.max_latency_ms
            policy.min_weight = found.min_weight or policy.min_weight
            if found.output_schema is not None:
                request.output_schema = check_schema(found.output_schema, "directive.output_schema")
            if ctx.plan is not None:  # on /v1/plan a directive picks the orchestration too
                if found.mode in ORCHESTRATION_MODES:
                    ctx.plan.mode = found.mode
                if found.iterations is not None:
                    ctx.plan.iterations = found.iterations
            request.messages = strip_directives(request.messages)
            ctx.directives_applied = found.as_dict()
        await call_next(ctx)


SPEC = StageSpec(
    name="directives",
    factory=Directives,
    options=DirectivesOptions,
    summary="Parses @@tokenhub directives in user messages into policy overrides and strips them.",
    after=("auth",),
)
