"""policy: the routing decision for the request, made by the shared Router under this pipeline's options."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from pipeline.context import RequestContext, RoutingDecision
from pipeline.errors import BudgetExceeded
from pipeline.stage import Next, StageOptions, StageSpec
from stages.aliases import AliasChooser
from stages.auth import budget_refused, key_budget_left
from stages.router import RoutingOptions

if TYPE_CHECKING:
    from pipeline.services import Services

__all__ = ["SPEC", "Policy", "PolicyOptions", "policy_options_of"]


class PolicyOptions(RoutingOptions, StageOptions):
    """The policy stage's options are the Router's routing options."""


class Policy:
    def __init__(self, services: Services, options: PolicyOptions) -> None:
        self._router = services.router
        self._ledger = services.key_ledger
        self._reservations = services.reservations
        self._metrics = services.metrics
        self._options = options
        # round-robin counters: they belong to this tenant's pipeline (and replica: stages/aliases.py)
        self._aliases = AliasChooser(salt=services.replica_id if services.redis is not None else "")

    async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
        try:
            decision = self._decide(ctx)
        except BudgetExceeded as exc:
            budget_refused(ctx, self._metrics, "key", exc.message)
            raise
        if decision.alias_from:  # the rest of the chain (and the response headers) see the chosen variant
            ctx.alias_from = decision.alias_from
            ctx.request.model_hint = decision.model_hint
        ctx.decision = decision
        await call_next(ctx)

    def _decide(self, ctx: RequestContext) -> RoutingDecision:
        api_key = ctx.api_key
        # Checked per decision, so each /v1/plan step sees what the earlier steps spent (429 once spent).
        key_left = key_budget_left(self._ledger, api_key, time.time(), self._reservations)
        return self._router.decide(
            ctx.request,
            ctx.policy,
            self._options,
            # a client resending its own id keeps its alias variant (sticky by request)
            request_id=ctx.client_request_id or ctx.request_id,
            api_key_id=api_key.id if api_key else "",
            key_budget_usd=api_key.monthly_budget_usd if api_key and key_left else 0.0,
            key_left_usd=key_left,
            only_models=ctx.only_models,
            directives=ctx.directives_applied,
            aliases=self._aliases,
        )


def policy_options_of(definition: Any) -> PolicyOptions:
    """The options of the policy step in a stored pipeline definition (the same list or `{"stages": [...]}`
    the builder reads); the defaults when there is none. Saved definitions were validated; one that no
    longer validates (an upgrade changed a stage) is served by the default chain, so it gets the defaults."""
    steps = definition.get("stages") if isinstance(definition, dict) else definition
    for step in steps if isinstance(steps, list) else ():
        if isinstance(step, dict) and step.get("stage") == SPEC.name:
            try:
                return PolicyOptions.model_validate(step.get("with") or {})
            except ValidationError:
                break
    return PolicyOptions()


SPEC = StageSpec(
    name="policy",
    factory=Policy,
    options=PolicyOptions,
    summary="Filters models by budget, context, weight and health, ranks them for the mode, applies model_hint.",
    required=True,
    # orchestrate runs each /v1/plan step through the rest of the chain, which must route it
    after=("auth", "directives", "orchestrate"),
)
