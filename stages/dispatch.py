"""dispatch: call the adapter for the chosen candidate and put its answer on the context; a stream that breaks
after its first token is continued on another model when one can (stream rescue, stages/stream_rescue.py).

Before the call the request reserves the candidate's worst-case cost against its key's monthly budget and its
plan's budget (store/reservations.py); a failover reserves again at the next candidate's price. Whatever way
the call ends (answer, failure, a stream cut or abandoned, a rescue, cancellation) the hold becomes the cost
actually charged, which the key-accounting sink moves into the spend when the request is recorded.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pydantic import Field

from adapters.errors import ProviderError
from adapters.provider import EmbeddingProvider
from pipeline.context import Attempt, Candidate, RequestContext
from pipeline.errors import BudgetExceeded, PlanBudgetReserved, StreamBroken, UpstreamFailed
from pipeline.stage import Next, StageOptions, StageSpec
from pipeline.types import ChatResult, ErrorClass, ModelInfo, Usage
from stages.auth import budget_refused, key_account
from stages.scoring import estimate_cost, requested_output
from stages.stream_relay import StreamLimits, relay_stream
from stages.stream_rescue import prefill_request, rescue_candidates, unrescuable
from stages.stream_splice import Delivered, RecordingSink, SpliceSink
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
    max_stream_rescues: int = Field(
        1,
        ge=0,
        le=5,
        description="continuations of a stream that broke after its first token (on a model that continues a"
        " prefill); 0 = a broken stream ends with an error event",
    )


class Dispatch:
    def __init__(self, services: Services, options: DispatchOptions) -> None:
        self._services = services
        self._count_attempt = services.metrics.count_attempt
        self._rescues = services.metrics.stream_rescues
        self._max_rescues = options.max_stream_rescues
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
        """One provider call (and, for a stream that breaks, its rescue); the answer and price go on the context."""
        services = self._services
        decision = ctx.decision
        assert decision is not None
        model = candidate.model
        adapter = services.adapters.get(model.provider_id)
        settings = services.settings
        try:
            if adapter is None:
                raise ProviderError(ErrorClass.FATAL, f"provider {model.provider_id} is no longer configured")
            services.health.begin_call(model.provider_id)  # a half-open breaker's trial call
            if ctx.sink is not None:
                delivered = Delivered()
                sink = RecordingSink(ctx.sink, delivered)
                result = await relay_stream(ctx, adapter, candidate, sink=sink, limits=self._limits(model))
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
        except StreamBroken as exc:  # part of the answer reached the client: no failover, maybe a rescue
            self._failed(ctx, model, ErrorClass(exc.cause_class), exc.message, None)
            await self._rescue(ctx, exc, delivered)
        else:
            self._succeeded(ctx, candidate, result)
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

    def _limits(self, model: ModelInfo) -> StreamLimits:
        settings, metrics = self._services.settings, self._services.metrics
        return StreamLimits(
            first_token_secs=settings.stream_first_token_secs,
            attempt_timeout=settings.provider_timeout_secs,
            idle_timeout=settings.stream_idle_secs,
            on_malformed=metrics.stream_malformed.labels(provider=model.provider_id).inc,
        )

    def _succeeded(
        self, ctx: RequestContext, candidate: Candidate, result: ChatResult, *, rescued: bool = False
    ) -> None:
        model = candidate.model
        self._services.health.success(model.provider_id, result.latency_ms)
        self._count_attempt(model.provider_id, "ok")
        ctx.attempts.append(Attempt(model.id, model.provider_id, "", "", result.latency_ms, rescued=rescued))
        ctx.served_by = candidate

    async def _rescue(self, ctx: RequestContext, broken: StreamBroken, delivered: Delivered) -> None:
        """Continue a stream that broke after its first token on models that continue a prefill, spliced into
        the client's stream; returns once the answer is complete, else raises the last break (the client then
        gets the error event). Each break is charged; the continuations' charges add to it."""
        services = self._services
        decision = ctx.decision
        assert decision is not None and ctx.sink is not None
        rescues_left = self._max_rescues
        tried_one = False
        first_break = ctx.attempts[-1]
        failure = ""  # the last rescue attempt's error, for the client's error event
        while (why_not := unrescuable(delivered.tool_calls, rescues_left, self._max_rescues)) is None:
            text = delivered.text
            candidates = rescue_candidates(ctx, services.adapters, services.health, len(text))
            if not candidates:
                why_not = "no_capable_fallback"
                break
            rescues_left -= 1
            tried_one = True
            used = ctx.result.usage.output_tokens if ctx.result and ctx.result.usage else 0
            request = prefill_request(ctx.request, text, used)
            for rescuer in candidates:
                model = rescuer.model
                adapter = services.adapters[model.provider_id]
                splice = SpliceSink(ctx.sink, delivered)
                try:
                    services.health.begin_call(model.provider_id)
                    result = await relay_stream(
                        ctx,
                        adapter,
                        rescuer,
                        sink=splice,
                        limits=self._limits(model),
                        request=request,
                        charge=_adding_to(ctx),
                        estimated_input_tokens=decision.estimated_input_tokens + -(-len(text) // 4),
                    )
                    await splice.flush()
                except ProviderError as exc:  # before its first token: nothing spliced, the next one may
                    self._failed(ctx, model, exc.error_class, exc.message, exc.retry_after)
                    failure = f"{model.id}: {exc.message}"
                    continue
                except StreamBroken as exc:  # it broke too, after adding to the answer
                    self._failed(ctx, model, ErrorClass(exc.cause_class), exc.message, None)
                    broken, failure = exc, f"{model.id}: {exc.message}"
                    break
                self._succeeded(ctx, rescuer, result, rescued=True)
                _adding_to(ctx)(rescuer, result)
                self._rescues.labels("rescued").inc()
                ctx.rescue_note = _note(first_break, "rescued", len(text), model.id)
                return
            else:
                break  # every capable model failed before its first token
        outcome = "failed" if tried_one else why_not or "failed"
        self._rescues.labels(outcome).inc()
        ctx.rescue_note = _note(first_break, outcome, len(delivered.text), failure)
        message = f"{broken.message}; {_why_not_rescued(outcome, failure)}"
        raise StreamBroken(message, cause_class=broken.cause_class) from broken

    def _failed(
        self, ctx: RequestContext, model: ModelInfo, error_class: ErrorClass, message: str, retry_after: float | None
    ) -> None:
        self._services.health.error(
            model.provider_id, message, retry_after=retry_after if error_class is ErrorClass.RATE_LIMITED else None
        )
        self._count_attempt(model.provider_id, str(error_class))
        ctx.attempts.append(Attempt(model.id, model.provider_id, str(error_class), message, 0.0))


_NOT_RESCUED = {
    "no_capable_fallback": "not rescued: no other model that continues a prefill is available",
    "tool_calls": "not rescued: a tool-call stream cannot be continued",
    "disabled": "not rescued: stream rescue is off (max_stream_rescues 0)",
}


def _adding_to(ctx: RequestContext) -> Callable[[Candidate, ChatResult], None]:
    """A charge that adds a continuation's usage and price to what the request was charged so far."""
    before, cost = (ctx.result.usage if ctx.result else None) or Usage(), ctx.cost_usd

    def charge(candidate: Candidate, result: ChatResult) -> None:
        ctx.charge(candidate, result)
        usage = result.usage or Usage()
        total = Usage(before.input_tokens + usage.input_tokens, before.output_tokens + usage.output_tokens)
        ctx.result = dataclasses.replace(result, usage=total)
        ctx.cost_usd = round(cost + ctx.cost_usd, 10)

    return charge


def _why_not_rescued(outcome: str, failure: str) -> str:
    return f"the rescue failed ({failure})" if outcome == "failed" else _NOT_RESCUED[outcome]


def _note(broke: Attempt, outcome: str, chars: int, detail: str) -> str:
    """The routing reason's account of a break: which model broke off, after how much, and what followed
    (`detail`: the rescuing model, or the rescue's last failure)."""
    head = f"stream broke after {chars} chars ({broke.model_id}: {broke.error_class})"
    if outcome == "rescued":
        return f"{head}; rescued: {detail} continued the answer from a prefill"
    return f"{head}; {_why_not_rescued(outcome, detail)}"


SPEC = StageSpec(
    name="dispatch",
    factory=Dispatch,
    options=DispatchOptions,
    summary="Sends the request to the chosen model's provider adapter.",
    required=True,
    after=("policy",),
)
