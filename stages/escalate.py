"""escalate: when dispatch fails, re-run the inner chain on the next candidate, by error class, bounded.

Polite to providers, fast for the client:
- context_overflow: first, when the model's window is known and lowering `max_tokens` makes room (window -
  estimated input - 256 >= 64 tokens, below the current cap or with none set), the same model once more with
  that smaller `max_tokens` (`reduced-max-tokens`); else, or if that fails too, the smallest larger-context
  model (>= 2x the input, > the failed model's window)
- budget_exceeded (the provider's quota or credit is used up): dispatch disabled the model; the next candidate
- rate_limited: a short Retry-After (<= `wait_retry_after_secs`) is waited out and the same model retried
  once; a longer one fails over (the provider is also backed off by the health tracker)
- transient: already retried with backoff by the shared HTTP helper (except a call that was accepted and
  never answered: that route is not retried), so the next candidate
- rejected on its merits (400/413/422 that is not a context overflow): returned to the client, no failover
- other fatal errors (401/403/404: the provider's configuration): the next candidate
When every eligible candidate has failed (not when `max_attempts` cut the list short), a last-resort pass
tries up to `last_resort_attempts` other enabled models, ignoring health, budget and weight, within the
deadline (`last-resort-fallback` in the reason; tokenhub_last_resort_total{outcome}). Streams take the same
path until their first token.
If every attempt was rate limited, the client gets 429 with the shortest Retry-After; otherwise 502
naming the last error class; if the latency budget runs out, 504.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import TYPE_CHECKING

from pydantic import Field

from pipeline.context import Candidate, RequestContext
from pipeline.errors import (
    BudgetExceeded,
    DeadlineExceeded,
    PlanBudgetReserved,
    RateLimited,
    TokenHubError,
    UpstreamFailed,
    UpstreamRejected,
)
from pipeline.stage import Next, StageOptions, StageSpec
from pipeline.types import ErrorClass
from stages.dispatch import DispatchFailed
from stages.scoring import estimate_cost, requested_output

if TYPE_CHECKING:
    from pipeline.services import Services

# routing.md §8: room kept for the provider's own token accounting when max_tokens is lowered to fit the
# window, and the smallest answer worth asking for.
SHRINK_MARGIN_TOKENS = 256
SHRINK_MIN_TOKENS = 64


class EscalateOptions(StageOptions):
    max_attempts: int = Field(4, ge=1, le=20, description="provider calls per request, first one included")
    wait_retry_after_secs: float = Field(
        2.0, ge=0, le=30, description="a 429 whose Retry-After is at most this is waited out on the same model"
    )
    last_resort_attempts: int = Field(
        3,
        ge=0,
        le=20,
        description="after every eligible candidate failed: other enabled models tried ignoring health, budget"
        " and weight; 0 = no last-resort pass",
    )


class Escalate:
    def __init__(self, services: Services, options: EscalateOptions) -> None:
        self._services = services
        self._max_attempts = options.max_attempts
        self._max_wait = options.wait_retry_after_secs
        self._last_resort = options.last_resort_attempts
        self._last_resort_metric = services.metrics.last_resort

    async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
        decision = ctx.decision
        assert decision is not None, "policy runs before escalate (checked when the pipeline is built)"
        queue = list(decision.candidates)
        chain = {id(c) for c in queue if c.model.id in decision.fallbacks}  # explicit fallbacks policy placed
        tried: set[str] = set()
        waited: set[str] = set()  # models already retried after a short Retry-After
        shrunk: set[str] = set()  # models already retried with a smaller max_tokens
        failures: list[DispatchFailed] = []
        steps: list[str] = []
        original = ctx.request
        while queue and len(failures) < self._max_attempts:
            if time.monotonic() >= decision.deadline:
                raise DeadlineExceeded(f"max_latency_ms exceeded after {len(failures)} attempt(s): {'; '.join(steps)}")
            candidate = queue.pop(0)
            model = candidate.model
            if model.id in tried:
                continue
            tried.add(model.id)
            if failures and id(candidate) in chain and (failed := failures[-1].candidate.model.id) != model.id:
                steps.append(f"fallback {failed} -> {model.id}")
            ctx.target = candidate
            try:
                await call_next(ctx)
            except DispatchFailed as failure:
                _note_failures(failure, tried, failures, steps)
                cause = failure.cause
                overflow = cause.error_class is ErrorClass.CONTEXT_OVERFLOW
                if overflow and model.id not in shrunk and (note := self._shrink(ctx, candidate)):
                    shrunk.add(model.id)
                    tried.discard(model.id)
                    queue.insert(0, candidate)
                    steps.append(note)
                    continue
                ctx.request = original  # a smaller max_tokens was for that model's window only
                if overflow and (bigger := self._larger_context(ctx, candidate)):
                    queue.insert(0, bigger)
                    steps.append(f"escalated-context-overflow to {bigger.model.id}")
                elif cause.error_class is ErrorClass.RATE_LIMITED and self._may_wait(
                    cause.retry_after, model.id, waited, decision.deadline
                ):
                    await asyncio.sleep(cause.retry_after or 0.0)
                    waited.add(model.id)
                    tried.discard(model.id)
                    queue.insert(0, candidate)
                    steps.append(f"waited {cause.retry_after:g}s (Retry-After) to retry {model.id}")
                continue
            self._served(ctx, steps if failures else None)
            return
        # every eligible candidate failed (not cut short by max_attempts): the last-resort pass
        if (
            not queue
            and failures
            and self._last_resort
            and await self._last_resort_pass(ctx, call_next, tried, failures, steps)
        ):
            return
        raise _give_up(failures, steps)

    async def _last_resort_pass(
        self,
        ctx: RequestContext,
        call_next: Next,
        tried: set[str],
        failures: list[DispatchFailed],
        steps: list[str],
    ) -> bool:
        """Try other enabled models, ignoring health, budget and weight, until one answers, the deadline
        passes or `last_resort_attempts` were made. True when one answered."""
        decision = ctx.decision
        assert decision is not None
        others = self._services.router.last_resort(ctx.request, decision, tried, ctx.only_models)
        if not others:
            return False
        steps.append(f"last-resort-fallback over {len(others)} other model(s) (ignoring health, budget and weight)")
        made = 0
        for candidate in others:
            if made >= self._last_resort or time.monotonic() >= decision.deadline:
                break
            model = candidate.model
            tried.add(model.id)
            ctx.target = candidate
            try:
                await call_next(ctx)
            except DispatchFailed as failure:
                made += 1
                _note_failures(failure, tried, failures, steps)
                continue
            except (BudgetExceeded, PlanBudgetReserved):  # the key's or the plan's own money: never ignored
                steps.append(f"{model.id} skipped (over the key's or the plan's budget)")
                continue
            self._last_resort_metric.labels("served").inc()
            self._served(ctx, steps, code="last-resort-fallback")
            return True
        self._last_resort_metric.labels("failed").inc()
        return False

    @staticmethod
    def _served(ctx: RequestContext, steps: list[str] | None, code: str = "escalated") -> None:
        """The routing reason of an answered request: the escalation's steps (when there were failures) and
        what dispatch noted (a hedge)."""
        served = ctx.served_by.model.id if ctx.served_by is not None else "?"
        if steps is not None:
            ctx.routing_reason = f"{code}: {'; '.join(steps)}; served by {served}"
        if ctx.dispatch_note:
            base = ctx.routing_reason or (ctx.decision.reason if ctx.decision else "")
            ctx.routing_reason = f"{base}; {ctx.dispatch_note}"

    def _shrink(self, ctx: RequestContext, failed: Candidate) -> str:
        """Lower `max_tokens` so the estimated input and the answer fit the failed model's window (retried on
        the same model); the step's note, or "" when that cannot help (window unknown, too little room, or
        the cap already fits)."""
        decision = ctx.decision
        assert decision is not None
        window = failed.model.max_context_tokens
        if window <= 0:
            return ""
        room = window - decision.estimated_input_tokens - SHRINK_MARGIN_TOKENS
        current, _ = requested_output(ctx.request.parameters)
        if room < SHRINK_MIN_TOKENS or 0 < current <= room:
            return ""
        parameters = dict(ctx.request.parameters)
        parameters["max_tokens"] = room
        if "max_completion_tokens" in parameters:  # it wins over max_tokens: lower it too
            parameters["max_completion_tokens"] = room
        ctx.request = dataclasses.replace(ctx.request, parameters=parameters)
        was = current or "unset"
        return (
            f"reduced-max-tokens on {failed.model.id}: {was} -> {room}"
            f" (window {window}, ~{decision.estimated_input_tokens} input tokens)"
        )

    def _may_wait(self, retry_after: float | None, model_id: str, waited: set[str], deadline: float) -> bool:
        """Wait out a short Retry-After once per model, when the deadline leaves room for the retry."""
        if retry_after is None or retry_after > self._max_wait or model_id in waited:
            return False
        return time.monotonic() + retry_after < deadline

    def _larger_context(self, ctx: RequestContext, failed: Candidate) -> Candidate | None:
        """The smallest enabled, routable model whose window is >= 2x the input and larger than the failed one."""
        decision = ctx.decision
        assert decision is not None
        if ctx.request.operation != "chat" and ctx.request.model_hint:
            return None  # a named embedding model is never replaced (policy pins it): vectors would not compare
        services = self._services
        needed = 2 * decision.estimated_input_tokens
        current = failed.model.max_context_tokens
        options = [
            m
            for m in services.snapshot.models.values()
            if m.enabled
            and m.kind == failed.model.kind  # a chat request never escalates to an embedding model, nor the reverse
            and m.id != failed.model.id
            and m.provider_id in services.adapters
            and m.max_context_tokens >= needed
            and (current == 0 or m.max_context_tokens > current)
            and services.router.unreadable(m, ctx.request) is None  # it reads the request's images, PDFs, audio
        ]
        if not options:
            return None
        best = min(options, key=lambda m: (m.max_context_tokens, m.id))
        return Candidate(best, 0.0, estimate_cost(best, decision.estimated_input_tokens))


def _note_failures(failure: DispatchFailed, tried: set[str], failures: list[DispatchFailed], steps: list[str]) -> None:
    """Count a failed dispatch (and the other half of a hedged one); a rejection on its merits goes to the
    client at once."""
    for one in (*failure.hedged, failure):
        model = one.candidate.model
        tried.add(model.id)
        # Kept without its traceback, which holds the frame that holds `failures`: a reference cycle otherwise.
        failures.append(one.with_traceback(None))
        cause = one.cause
        disabled = " (model disabled: quota used up)" if cause.error_class is ErrorClass.BUDGET_EXCEEDED else ""
        steps.append(f"{model.id} failed ({cause.error_class}){disabled}")
        if cause.rejected:
            raise UpstreamRejected(
                f"{model.provider_id} rejected the request ({model.id}): {cause.message}", status=cause.status or 400
            ) from None


def _give_up(failures: list[DispatchFailed], steps: list[str]) -> TokenHubError:
    if failures and all(f.cause.error_class is ErrorClass.RATE_LIMITED for f in failures):
        waits = [f.cause.retry_after for f in failures if f.cause.retry_after]
        return RateLimited(
            f"every candidate is rate limited: {'; '.join(steps)}", retry_after=min(waits) if waits else 1
        )
    if not failures:
        return UpstreamFailed("no candidate could be tried", error_class="fatal")
    last = failures[-1]
    return UpstreamFailed(
        f"all providers failed ({len(failures)} attempt(s)): {'; '.join(steps)}; last error: {last.message}",
        error_class=str(last.cause.error_class),
    )


SPEC = StageSpec(
    name="escalate",
    factory=Escalate,
    options=EscalateOptions,
    summary="On a failed dispatch, tries the next candidate (larger context on overflow), bounded.",
    after=("policy",),
)
