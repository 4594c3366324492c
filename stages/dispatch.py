"""dispatch: call the adapter for the chosen candidate and put its answer on the context.

Before the call the request reserves the candidate's worst-case cost against its key's monthly budget and its
plan's budget (store/reservations.py); a failover reserves again at the next candidate's price. Whatever way
the call ends (answer, failure, a stream cut or abandoned, cancellation) the hold shrinks to the cost actually
charged, which the key-accounting sink moves into the spend when the request is recorded.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from adapters.errors import ProviderError
from adapters.model_calls import for_model
from adapters.provider import EmbeddingProvider
from pipeline.context import Attempt, Candidate, RequestContext
from pipeline.errors import BudgetExceeded, PlanBudgetReserved, StreamBroken, UpstreamFailed
from pipeline.stage import Next, StageOptions, StageSpec
from pipeline.types import ErrorClass, ModelInfo
from stages.auth import budget_refused, key_account
from stages.scoring import estimate_cost, requested_output
from stages.stream_relay import relay_stream
from store.reservations import BudgetAccount

if TYPE_CHECKING:
    from pipeline.services import Services

__all__ = ["SPEC", "Dispatch", "DispatchFailed", "DispatchOptions"]


class DispatchFailed(UpstreamFailed):
    """One provider call failed; escalate decides what to try next, otherwise the client gets a 502."""

    def __init__(self, candidate: Candidate, cause: ProviderError) -> None:
        model = candidate.model
        super().__init__(
            f"{model.provider_id} ({model.id}) failed: {cause.message}", error_class=str(cause.error_class)
        )
        self.candidate = candidate
        self.cause = cause


class DispatchOptions(StageOptions):
    pass


class Dispatch:
    def __init__(self, services: Services, options: DispatchOptions) -> None:
        self._services = services
        self._count_attempt = services.metrics.count_attempt
        self._reservations = services.reservations
        self._uncapped_output = services.settings.budget_reserve_output_tokens

    async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
        decision = ctx.decision
        assert decision is not None, "policy runs before dispatch (checked when the pipeline is built)"
        candidate = ctx.target or decision.candidates[0]
        held = self._reserve(ctx, candidate)
        try:
            await self._call(ctx, candidate)
        finally:
            if held:  # every way out: keep only what was charged (0 for a failed call) until it is recorded
                self._reservations.settle(ctx.request_id, ctx.cost_usd)
        await call_next(ctx)

    async def _call(self, ctx: RequestContext, candidate: Candidate) -> None:
        """One provider call; its answer and price go on the context."""
        services = self._services
        settings = services.settings
        decision = ctx.decision
        assert decision is not None
        model = candidate.model
        adapter = services.adapters.get(model.provider_id)
        try:
            if adapter is None:
                raise ProviderError(ErrorClass.FATAL, f"provider {model.provider_id} is no longer configured")
            if ctx.request.operation == "chat":  # the model's tool_name_map and gemma4_output around the call
                adapter = for_model(adapter, model)
            services.health.begin_call(model.provider_id)  # a half-open breaker's trial call
            if ctx.sink is not None:
                result = await relay_stream(
                    ctx,
                    adapter,
                    candidate,
                    sink=ctx.sink,
                    first_token_secs=settings.stream_first_token_secs,
                    attempt_timeout=settings.provider_timeout_secs,
                    idle_timeout=settings.stream_idle_secs,
                    on_malformed=services.metrics.stream_malformed.labels(provider=model.provider_id).inc,
                )
            elif ctx.request.operation == "embeddings":
                # policy filters these out; this guards a provider swapped since then
                if not isinstance(adapter, EmbeddingProvider):
                    raise ProviderError(ErrorClass.FATAL, f"provider {model.provider_id} does not support embeddings")
                result = await adapter.embed(
                    model.sent_as,
                    ctx.request.parameters,
                    request_id=ctx.request_id,
                    deadline=decision.deadline,
                    attempt_timeout=settings.provider_timeout_secs,
                )
            else:
                result = await adapter.send(
                    model.sent_as,  # the provider's name for it; responses keep naming model.id
                    ctx.request,
                    request_id=ctx.request_id,
                    deadline=decision.deadline,
                    attempt_timeout=settings.provider_timeout_secs,
                )
        except ProviderError as exc:  # nothing reached the client: escalate may try another candidate
            self._failed(ctx, model, exc.error_class, exc.message, exc.retry_after)
            raise DispatchFailed(candidate, exc) from None
        except StreamBroken as exc:  # part of the answer reached the client: no failover
            self._failed(ctx, model, ErrorClass(exc.cause_class), exc.message, None)
            raise
        services.health.success(model.provider_id, result.latency_ms)
        self._count_attempt(model.provider_id, "ok")
        ctx.attempts.append(Attempt(model.id, model.provider_id, "", "", result.latency_ms))
        ctx.served_by = candidate
        ctx.charge(candidate, result)

    def _reserve(self, ctx: RequestContext, candidate: Candidate) -> bool:
        """Hold the call's worst-case cost on the key's and the plan's budgets; False when it has neither.
        Refused: the key's 429, or (a /v1/plan step) the plan's graceful stop."""
        accounts: list[BudgetAccount] = []
        if key := key_account(self._services.key_ledger, ctx.api_key, time.time()):
            accounts.append(key)
        if ctx.plan_budget is not None and (plan := ctx.plan_budget()).limit_usd > 0:
            accounts.append(plan)
        if not accounts:
            return False
        amount, needed = self._worst_case(ctx, candidate.model)
        refused = self._reservations.reserve(ctx.request_id, tuple(accounts), amount, needed)
        if refused is None:
            return True
        reserved = self._reservations.reserved(refused.id)
        left = refused.limit_usd - refused.spent_usd - reserved
        which = "plan" if refused is not key else "key"
        budget_refused(
            ctx,
            self._services.metrics,
            which,
            f"{candidate.model.id} is estimated at ${needed:.6f}; the {which}'s ${refused.limit_usd:g} budget has"
            f" ${max(0.0, left):.6f} left with ${reserved:.6f} reserved by requests in flight",
        )
        if refused is key:
            spent = refused.spent_usd + reserved
            raise BudgetExceeded(budget_usd=refused.limit_usd, spent_usd=spent, too_costly=True, reserved_usd=reserved)
        raise PlanBudgetReserved(ctx.routing_reason)

    def _worst_case(self, ctx: RequestContext, model: ModelInfo) -> tuple[float, float]:
        """(the most this call can be billed, the estimate it was routed on): both the input estimate plus the
        capped output; they differ only when neither the request nor the model caps the output, where the
        worst case takes the cautious TOKENHUB_BUDGET_RESERVE_OUTPUT_TOKENS per choice."""
        decision = ctx.decision
        assert decision is not None
        max_tokens, n = requested_output(ctx.request.parameters)
        tokens = decision.estimated_input_tokens
        return (
            estimate_cost(model, tokens, max_tokens, n, self._uncapped_output),
            estimate_cost(model, tokens, max_tokens, n),
        )

    def _failed(
        self, ctx: RequestContext, model: ModelInfo, error_class: ErrorClass, message: str, retry_after: float | None
    ) -> None:
        self._services.health.error(
            model.provider_id, message, retry_after=retry_after if error_class is ErrorClass.RATE_LIMITED else None
        )
        self._count_attempt(model.provider_id, str(error_class))
        ctx.attempts.append(Attempt(model.id, model.provider_id, str(error_class), message, 0.0))


SPEC = StageSpec(
    name="dispatch",
    factory=Dispatch,
    options=DispatchOptions,
    summary="Sends the request to the chosen model's provider adapter.",
    required=True,
    after=("policy",),
)
