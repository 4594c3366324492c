"""escalate: when dispatch fails, re-run the inner chain on the next candidate, by error class, bounded.

Polite to providers, fast for the client:
- context_overflow: the smallest larger-context model (>= 2x the input, > the failed model's window)
- rate_limited: a short Retry-After (<= `wait_retry_after_secs`) is waited out and the same model retried
  once; a longer one fails over (the provider is also backed off by the health tracker)
- transient: already retried with backoff by the shared HTTP helper (except a call that was accepted and
  never answered: that route is not retried), so the next candidate
- rejected on its merits (400/413/422 that is not a context overflow): returned to the client, no failover
- other fatal errors (401/403/404: the provider's configuration): the next candidate
If every attempt was rate limited, the client gets 429 with the shortest Retry-After; otherwise 502
naming the last error class; if the latency budget runs out, 504.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from pydantic import Field

from pipeline.context import Candidate, RequestContext
from pipeline.errors import DeadlineExceeded, RateLimited, TokenHubError, UpstreamFailed, UpstreamRejected
from pipeline.stage import Next, StageOptions, StageSpec
from pipeline.types import ErrorClass
from stages.dispatch import DispatchFailed
from stages.scoring import estimate_cost

if TYPE_CHECKING:
    from pipeline.services import Services


class EscalateOptions(StageOptions):
    max_attempts: int = Field(4, ge=1, le=20, description="provider calls per request, first one included")
    wait_retry_after_secs: float = Field(
        2.0, ge=0, le=30, description="a 429 whose Retry-After is at most this is waited out on the same model"
    )


class Escalate:
    def __init__(self, services: Services, options: EscalateOptions) -> None:
        self._services = services
        self._max_attempts = options.max_attempts
        self._max_wait = options.wait_retry_after_secs

    async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
        decision = ctx.decision
        assert decision is not None, "policy runs before escalate (checked when the pipeline is built)"
        queue = list(decision.candidates)
        chain = {id(c) for c in queue if c.model.id in decision.fallbacks}  # explicit fallbacks policy placed
        tried: set[str] = set()
        waited: set[str] = set()  # models already retried after a short Retry-After
        failures: list[DispatchFailed] = []
        steps: list[str] = []
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
                failures.append(failure)
                cause = failure.cause
                steps.append(f"{model.id} failed ({cause.error_class})")
                if cause.rejected:
                    raise UpstreamRejected(
                        f"{model.provider_id} rejected the request ({model.id}): {cause.message}",
                        status=cause.status or 400,
                    ) from None
                if cause.error_class is ErrorClass.CONTEXT_OVERFLOW and (
                    bigger := self._larger_context(ctx, candidate)
                ):
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
            if failures:
                ctx.routing_reason = f"escalated: {'; '.join(steps)}; served by {model.id}"
            return
        raise _give_up(failures, steps)

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
