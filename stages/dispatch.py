"""dispatch: call the adapter for the chosen candidate and put its answer on the context; a stream that breaks
after its first token is continued on another model when one can (stream rescue, stages/stream_rescue.py).

With `hedge_after_ms` set, a non-streaming chat call that has not answered by then gets a second candidate
started beside it (hedged dispatch): the first answer wins, the other call is cancelled (its HTTP request is
aborted), and the request is charged for both — the loser at its own usage when it answered too, else at its
routing estimate (a cancelled call reports no usage, and the provider may bill what it already generated).
Streams are never hedged (see docs/streaming.md).

A provider error saying the account's quota or credit is used up (budget_exceeded) disables the model in
memory (stages/model_disables.py) before escalate fails over.

Before the call the request reserves the candidate's worst-case cost against its key's monthly budget and its
plan's budget (store/reservations.py); a failover reserves again at the next candidate's price. Whatever way
the call ends (answer, failure, a stream cut or abandoned, a rescue, cancellation) the hold becomes the cost
actually charged, which the key-accounting sink moves into the spend when the request is recorded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pydantic import Field

from adapters.errors import ProviderError
from adapters.model_calls import for_model
from adapters.provider import EmbeddingProvider, Provider
from pipeline.context import Attempt, Candidate, RequestContext
from pipeline.errors import BudgetExceeded, PlanBudgetReserved, StreamBroken, StreamTooLarge, UpstreamFailed
from pipeline.model_ids import resolve_model_id
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
        self.hedged: tuple[DispatchFailed, ...] = ()  # the other call of a hedged dispatch, when it failed too


class DispatchOptions(StageOptions):
    max_stream_rescues: int = Field(
        1,
        ge=0,
        le=5,
        description="continuations of a stream that broke after its first token (on a model that continues a"
        " prefill); 0 = a broken stream ends with an error event",
    )
    hedge_after_ms: int = Field(
        0,
        ge=0,
        le=600_000,
        description="non-streaming chat: when the first candidate has not answered after this many ms, start the"
        " next one beside it; the first answer wins, the other call is cancelled; 0 = off",
    )


class Dispatch:
    def __init__(self, services: Services, options: DispatchOptions) -> None:
        self._services = services
        self._count_attempt = services.metrics.count_attempt
        self._rescues = services.metrics.stream_rescues
        self._max_rescues = options.max_stream_rescues
        self._reservations = services.reservations
        self._uncapped_output = services.settings.budget_reserve_output_tokens
        self._hedge_after = options.hedge_after_ms / 1000
        self._hedges = services.metrics.hedges
        self._first_token_timer = services.http.timeouts  # the provider calls' and stream reads' timer
        self._malformed = services.metrics.stream_malformed

    async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
        decision = ctx.decision
        assert decision is not None, "policy runs before dispatch (checked when the pipeline is built)"
        candidate = ctx.target or decision.candidates[0]
        partner = self._hedge_partner(ctx, candidate)
        if partner is not None and (held_both := await self._reserve_both(ctx, candidate, partner)) is not None:
            try:
                await self._hedged(ctx, candidate, partner)
            finally:
                if held_both:
                    self._reservations.settle(ctx.request_id, ctx.cost_usd)
            await call_next(ctx)
            return
        held = await self._reserve(ctx, candidate)
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
        settings = services.settings
        try:
            if ctx.sink is not None:
                adapter = self._adapter(ctx, model)
                services.health.begin_call(model.provider_id)  # a half-open breaker's trial call
                delivered = Delivered()
                sink = RecordingSink(ctx.sink, delivered)
                result = await relay_stream(ctx, adapter, candidate, sink=sink, limits=self._limits(model))
            elif ctx.request.operation == "embeddings":
                adapter = self._adapter(ctx, model)
                # policy filters these out; this guards a provider swapped since then
                if not isinstance(adapter, EmbeddingProvider):
                    raise ProviderError(ErrorClass.FATAL, f"provider {model.provider_id} does not support embeddings")
                services.health.begin_call(model.provider_id)
                result = await adapter.embed(
                    model.sent_as,
                    ctx.request.parameters,
                    request_id=ctx.request_id,
                    deadline=decision.deadline,
                    attempt_timeout=settings.provider_timeout_secs,
                )
            else:
                result = await self._send(ctx, candidate)
        except ProviderError as exc:  # nothing reached the client: escalate may try another candidate
            self._failed(ctx, model, exc.error_class, exc.message, exc.retry_after)
            raise DispatchFailed(candidate, exc) from None
        except StreamTooLarge as exc:  # the cap, not the provider's fault: no health error, no rescue
            ctx.attempts.append(Attempt(model.id, model.provider_id, "stream_too_large", exc.message, 0.0))
            raise
        except StreamBroken as exc:  # part of the answer reached the client: no failover, maybe a rescue
            self._failed(ctx, model, ErrorClass(exc.cause_class), exc.message, None)
            await self._rescue(ctx, exc, delivered)
        else:
            self._succeeded(ctx, candidate, result)
            ctx.charge(candidate, result)

    def _accounts(self, ctx: RequestContext) -> tuple[BudgetAccount, ...]:
        """The budgets this request draws on: its key's monthly budget, its plan's."""
        accounts: list[BudgetAccount] = []
        if key := key_account(self._services.key_ledger, ctx.api_key, time.time()):
            accounts.append(key)
        if ctx.plan_budget is not None and (plan := ctx.plan_budget()).limit_usd > 0:
            accounts.append(plan)
        return tuple(accounts)

    async def _shared_limits_only(self, ctx: RequestContext) -> None:
        """A request without a budget, scaled out: only its shared rate limits, deferred or already sent."""
        gate = self._services.shared_gate
        if gate is not None and (ctx.shared_takes or ctx.shared_early is not None):
            await gate.admit(ctx, (), 0.0, 0.0)

    async def _reserve(self, ctx: RequestContext, candidate: Candidate) -> bool:
        """Hold the call's worst-case cost on the key's and the plan's budgets; False when it has neither.
        Refused: the key's 429, or (a /v1/plan step) the plan's graceful stop. Scaled out, the shared gate does
        it in Redis with the request's deferred rate limits, in one round trip (stages/shared_gate.py)."""
        accounts = self._accounts(ctx)
        if not accounts:
            await self._shared_limits_only(ctx)
            return False
        gate = self._services.shared_gate
        amount, needed = self._worst_case(ctx, candidate.model)
        if gate is not None:
            outcome = await gate.admit(ctx, accounts, amount, needed)
            if outcome is None:
                return True
            refused, reserved = outcome
        else:
            refusal = self._reservations.reserve(ctx.request_id, accounts, amount, needed)
            if refusal is None:
                return True
            refused, reserved = refusal, self._reservations.reserved(refusal.id)
        is_key = refused.id.startswith("key:")
        left = refused.limit_usd - refused.spent_usd - reserved
        which = "key" if is_key else "plan"
        budget_refused(
            ctx,
            self._services.metrics,
            which,
            f"{candidate.model.id} is estimated at ${needed:.6f}; the {which}'s ${refused.limit_usd:g} budget has"
            f" ${max(0.0, left):.6f} left with ${reserved:.6f} reserved by requests in flight",
        )
        if is_key:
            spent = refused.spent_usd + reserved
            raise BudgetExceeded(budget_usd=refused.limit_usd, spent_usd=spent, too_costly=True, reserved_usd=reserved)
        raise PlanBudgetReserved(ctx.routing_reason)

    async def _reserve_both(self, ctx: RequestContext, first: Candidate, second: Candidate) -> bool | None:
        """Hold both hedged calls' worst case at once (both may be billed); False when the request has no
        budget, None when the pair does not fit (then only the first is called, reserved the usual way)."""
        accounts = self._accounts(ctx)
        if not accounts:
            await self._shared_limits_only(ctx)
            return False
        worst_first, needed_first = self._worst_case(ctx, first.model)
        worst_second, needed_second = self._worst_case(ctx, second.model)
        worst = worst_first + worst_second
        needed = max(worst, needed_first + needed_second)
        if (gate := self._services.shared_gate) is not None:
            return True if await gate.admit(ctx, accounts, worst, needed) is None else None
        refused = self._reservations.reserve(ctx.request_id, accounts, worst, needed)
        return True if refused is None else None

    def _hedge_partner(self, ctx: RequestContext, candidate: Candidate) -> Candidate | None:
        """The candidate a hedge would start beside `candidate`: the next ranked one not tried yet and not
        skipped by health. None when hedging is off, for streams and embeddings, or when the client named
        `candidate` (it asked for that model, not for the fastest answer)."""
        if self._hedge_after <= 0 or ctx.sink is not None or ctx.request.operation != "chat":
            return None
        services = self._services
        hint = ctx.request.model_hint.strip()
        if hint and resolve_model_id(hint, services.snapshot.models) == candidate.model.id:
            return None
        decision = ctx.decision
        assert decision is not None
        tried = {attempt.model_id for attempt in ctx.attempts}
        for other in decision.candidates:
            model = other.model
            if (
                model.id != candidate.model.id
                and model.id not in tried
                and model.provider_id in services.adapters
                and services.health.unavailable_reason(model.provider_id) is None
                and services.model_disables.reason(model.id) is None
            ):
                return other
        return None

    def _adapter(self, ctx: RequestContext, model: ModelInfo) -> Provider:
        """The model's provider adapter; for a chat, wrapped in the model's own conventions (tool_name_map,
        gemma4_output) when it has any."""
        adapter = self._services.adapters.get(model.provider_id)
        if adapter is None:
            raise ProviderError(ErrorClass.FATAL, f"provider {model.provider_id} is no longer configured")
        return for_model(adapter, model) if ctx.request.operation == "chat" else adapter

    async def _send(self, ctx: RequestContext, candidate: Candidate) -> ChatResult:
        """One non-streaming chat call to `candidate` (a hedged dispatch runs two of these)."""
        model = candidate.model
        adapter = self._adapter(ctx, model)
        decision = ctx.decision
        assert decision is not None
        self._services.health.begin_call(model.provider_id)  # a half-open breaker's trial call
        return await adapter.send(
            model.sent_as,
            ctx.request,
            request_id=ctx.request_id,
            deadline=decision.deadline,
            attempt_timeout=self._services.settings.provider_timeout_secs,
        )

    async def _hedged(self, ctx: RequestContext, first: Candidate, second: Candidate) -> None:
        """Call `first`; if it has not answered after hedge_after_ms, call `second` beside it. The first
        answer wins and the other call is cancelled; a failure waits for the other call. Raises DispatchFailed
        when every call made failed (the second's failure rides along in `hedged`), or at once when a call
        was rejected on its merits (the other would be too)."""
        started = time.monotonic()
        tasks = {asyncio.create_task(self._send(ctx, first)): first}
        pending: set[asyncio.Task[ChatResult]] = set(tasks)
        failures: list[DispatchFailed] = []
        won: tuple[Candidate, ChatResult] | None = None
        also: tuple[Candidate, ChatResult] | None = None  # the loser, when it answered in the same instant
        hedge_ms = 0.0
        try:
            done, pending = await asyncio.wait(pending, timeout=self._hedge_after)
            if not done:  # still waiting: start the second call
                hedge_ms = (time.monotonic() - started) * 1000
                tasks[asyncio.create_task(self._send(ctx, second))] = second
                pending = set(tasks)
            while won is None:
                for task in sorted(done, key=lambda t: tasks[t] is not first):
                    candidate = tasks[task]
                    if (error := task.exception()) is None:
                        if won is None:
                            won = (candidate, task.result())
                        else:
                            also = (candidate, task.result())
                        continue
                    if not isinstance(error, ProviderError):
                        raise error
                    self._failed(ctx, candidate.model, error.error_class, error.message, error.retry_after)
                    failures.append(DispatchFailed(candidate, error))
                    if error.rejected:
                        raise failures[-1]
                if won is not None or not pending:
                    break
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pending:
                task.cancel()  # aborts its HTTP call: the provider sees the connection close
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        hedged = len(tasks) > 1
        if won is None:
            if hedged:
                self._hedges.labels("none").inc()
            main = next((f for f in failures if f.candidate is first), failures[0])  # the call escalate asked for
            main.hedged = tuple(f for f in failures if f is not main)
            raise main
        candidate, result = won
        self._succeeded(ctx, candidate, result)
        ctx.charge(candidate, result)
        if not hedged:
            return
        self._hedges.labels("first" if candidate is first else "second").inc()
        loser = second if candidate is first else first
        if any(f.candidate is loser for f in failures):
            ctx.dispatch_note = (
                f"hedged-dispatch: {second.model.id} started after {hedge_ms:.0f} ms; {loser.model.id} failed;"
                f" {candidate.model.id} answered"
            )
            return
        self._charge_loser(ctx, loser, also[1] if also is not None else None, started)
        how = "at its usage" if also is not None else "at its routing estimate"
        ctx.dispatch_note = (
            f"hedged-dispatch: {second.model.id} started after {hedge_ms:.0f} ms; {candidate.model.id} answered"
            f" first; {loser.model.id} cancelled (charged {how})"
        )

    def _charge_loser(self, ctx: RequestContext, loser: Candidate, result: ChatResult | None, started: float) -> None:
        """Add the cancelled call to the request's cost: its usage when it answered too, else its estimate."""
        model = loser.model
        usage = result.usage if result is not None else None
        cost = model.cost_usd(usage.input_tokens, usage.output_tokens) if usage else loser.estimated_cost_usd
        ctx.cost_usd = round(ctx.cost_usd + cost, 10)
        elapsed = (time.monotonic() - started) * 1000
        note = "answered after the winner" if result is not None else "cancelled: the other call answered first"
        ctx.attempts.append(Attempt(model.id, model.provider_id, "", note, elapsed, hedged_out=True))
        self._count_attempt(model.provider_id, "hedged_out")

    def _worst_case(self, ctx: RequestContext, model: ModelInfo) -> tuple[float, float]:
        """(the most this call can be billed, the estimate it was routed on): both the input estimate plus the
        capped output; they differ only when neither the request nor the model caps the output, where the
        worst case takes the cautious TOKENHUB_BUDGET_RESERVE_OUTPUT_TOKENS per choice."""
        decision = ctx.decision
        assert decision is not None
        max_tokens, n = requested_output(ctx.request.parameters)
        tokens = decision.estimated_input_tokens
        routed_on = estimate_cost(model, tokens, max_tokens, n)
        if max_tokens > 0 or model.max_output_tokens > 0:  # capped: the cautious default never applies
            return routed_on, routed_on
        return estimate_cost(model, tokens, max_tokens, n, self._uncapped_output), routed_on

    def _limits(self, model: ModelInfo, delivered_bytes: int = 0) -> StreamLimits:
        settings = self._services.settings
        return StreamLimits(
            first_token_secs=settings.stream_first_token_secs,
            attempt_timeout=settings.provider_timeout_secs,
            idle_timeout=settings.stream_idle_secs,
            # the counter's series is looked up when a malformed event comes, not for every stream
            on_malformed=functools.partial(self._count_malformed, model.provider_id),
            max_bytes=settings.max_stream_bytes - delivered_bytes,  # a rescue continues the same client stream
            first_token_timer=self._first_token_timer,
        )

    def _count_malformed(self, provider_id: str) -> None:
        self._malformed.labels(provider=provider_id).inc()

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
                adapter = self._adapter(ctx, model)
                splice = SpliceSink(ctx.sink, delivered)
                try:
                    services.health.begin_call(model.provider_id)
                    result = await relay_stream(
                        ctx,
                        adapter,
                        rescuer,
                        sink=splice,
                        limits=self._limits(model, len(text.encode())),
                        request=request,
                        charge=_adding_to(ctx),
                        estimated_input_tokens=decision.estimated_input_tokens + -(-len(text) // 4),
                    )
                    await splice.flush()
                except ProviderError as exc:  # before its first token: nothing spliced, the next one may
                    self._failed(ctx, model, exc.error_class, exc.message, exc.retry_after)
                    failure = f"{model.id}: {exc.message}"
                    continue
                except StreamTooLarge:
                    self._rescues.labels("failed").inc()
                    raise
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
        if error_class is ErrorClass.BUDGET_EXCEEDED:  # the account is out of money: stop routing to the model
            self._services.model_disables.disable(model.id, model.provider_id, message)


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
