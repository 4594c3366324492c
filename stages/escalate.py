"""escalate: when dispatch fails, re-run the inner chain on the next candidate, by error class, bounded.

- context_overflow: the smallest larger-context model (>= 2x the input, > the failed model's window)
- rate_limited, transient, fatal: the next ranked candidate (transient errors were already retried with
  backoff by the shared HTTP helper)
If every attempt was rate limited, the client gets 429 with the shortest Retry-After; otherwise 502
naming the last error class; if the latency budget runs out, 504.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from pydantic import Field

from pipeline.context import Candidate, RequestContext
from pipeline.errors import RateLimited, TokenHubError, UpstreamFailed
from pipeline.stage import Next, StageOptions, StageSpec
from pipeline.types import ErrorClass
from stages.dispatch import DispatchFailed
from stages.scoring import estimate_cost

if TYPE_CHECKING:
    from pipeline.services import Services


class DeadlineExceeded(TokenHubError):
    status = 504
    type = "deadline_exceeded"


class EscalateOptions(StageOptions):
    max_attempts: int = Field(4, ge=1, le=20, description="provider calls per request, first one included")


class Escalate:
    def __init__(self, services: Services, options: EscalateOptions) -> None:
        self._services = services
        self._max_attempts = options.max_attempts

    async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
        decision = ctx.decision
        assert decision is not None, "policy runs before escalate (checked when the pipeline is built)"
        queue = list(decision.candidates)
        tried: set[str] = set()
        failures: list[DispatchFailed] = []
        steps: list[str] = []
        while queue and len(failures) < self._max_attempts:
            if time.monotonic() >= decision.deadline:
                raise DeadlineExceeded(f"max_latency_ms exceeded after {len(failures)} attempt(s): {'; '.join(steps)}")
            candidate = queue.pop(0)
            if candidate.model.id in tried:
                continue
            tried.add(candidate.model.id)
            ctx.target = candidate
            try:
                await call_next(ctx)
            except DispatchFailed as failure:
                failures.append(failure)
                error_class = failure.cause.error_class
                steps.append(f"{candidate.model.id} failed ({error_class})")
                if error_class is ErrorClass.CONTEXT_OVERFLOW and (bigger := self._larger_context(ctx, candidate)):
                    queue.insert(0, bigger)
                    steps.append(f"escalated-context-overflow to {bigger.model.id}")
                continue
            if failures:
                ctx.routing_reason = f"escalated: {'; '.join(steps)}; served by {candidate.model.id}"
            return
        raise _give_up(failures, steps)

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
