"""The workflows' activities: each runs the same stages the direct path runs, in this process.

A chat or a plan step goes through the rest of its tenant's chain after `orchestrate` (policy, shape,
escalate, dispatch) inside `recorded`, exactly as on the direct path: one request-log row, with the key's
budget checks, rewards, health and per-key accounting, under the request id the direct path would use. No
routing happens anywhere else.

Idempotent: an outcome is stored (`StepCache`) under the step's request id before the activity returns, so
a retried activity (the worker died after the provider answered, or Temporal lost the completion) returns it
without calling the provider or recording a second row; and the activity returns only once its row is in
DuckDB, so a crash after a step completed never loses that step's row.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from temporalio import activity

from pipeline.context import Policy, RequestContext
from pipeline.errors import Conflict, OutputSchemaMismatch, PlanPipelineMissing, RequestCancelled, TokenHubError
from pipeline.output_format import OutputFormat
from pipeline.output_schema import validate_output
from pipeline.stage import Next, chain_after
from pipeline.types import ApiKeyInfo, ChatRequest
from stages.auth import key_in_force
from stages.durable.step_cache import StepCache
from stages.durable.wire import (
    ChatInput,
    ChatOutcome,
    Origin,
    PlanFinish,
    PlanResult,
    RankCall,
    StepCall,
    StepOutcome,
    from_wire,
    to_wire,
)
from stages.orchestrate import Orchestrate, rank_models
from stages.plan_modes import plan_reason
from stages.plan_steps import BudgetExhausted, StepRunner
from stages.policy import policy_options_of
from stages.record import recorded

if TYPE_CHECKING:
    from pipeline.services import Services

__all__ = ["HEARTBEAT_EVERY", "DurableActivities", "abandoned_key"]

log = structlog.get_logger("tokenhub.temporal")
T = TypeVar("T")
HEARTBEAT_EVERY = 1.0  # seconds; the workflows' heartbeat timeout is 5 s


def abandoned_key(request_id: str) -> str:
    """The marker the edge stores when it gave up on a workflow and served the request directly: the
    workflow's later activities must not run (nor charge) the request a second time."""
    return f"abandoned:{request_id}"


class DurableActivities:
    def __init__(self, services: Services, chains: Callable[[str], Next], cache: StepCache) -> None:
        self._services = services
        self._chains = chains
        self._cache = cache

    def all(self) -> list[Callable[..., Any]]:
        return [self.run_chat, self.run_step, self.rank_voters, self.finish_plan]

    # --- the activities ------------------------------------------------------------------------------------

    @activity.defn(name="run_chat")
    async def run_chat(self, job: ChatInput) -> ChatOutcome:
        origin = job.origin
        if await self._cache.has(abandoned_key(origin.request_id)):
            return ChatOutcome(error=to_wire(_taken_over()))
        outcome = await self._cache.once(origin.request_id, ChatOutcome, lambda: _heartbeating(self._chat(job)))
        await self._services.records.settle()
        return outcome

    @activity.defn(name="run_step")
    async def run_step(self, call: StepCall) -> StepOutcome:
        plan_id = call.origin.request_id
        if await self._cache.has(abandoned_key(plan_id)):
            return StepOutcome(error=to_wire(_taken_over()))
        key = f"{plan_id}.{call.index}-{call.role}"  # the step's request id (StepRunner's)
        outcome = await self._cache.once(key, StepOutcome, lambda: _heartbeating(self._step(call)))
        await self._services.records.settle()
        return outcome

    @activity.defn(name="rank_voters")
    async def rank_voters(self, call: RankCall) -> list[str]:
        services = self._services
        routing = policy_options_of(services.snapshot.pipelines.get(call.origin.tenant_id))
        question = ChatRequest(messages=call.messages, model_hint=call.model_hint, parameters=dict(call.parameters))
        return rank_models(
            services.router,
            routing,
            call.origin.request_id,
            question,
            call.mode,
            call.min_weight,
            call.budget_usd,
            frozenset(call.excluded),
        )

    @activity.defn(name="finish_plan")
    async def finish_plan(self, end: PlanFinish) -> PlanResult:
        result = await self._cache.once(f"{end.origin.request_id}#plan", PlanResult, lambda: self._finish(end))
        await self._services.records.settle()
        return result

    # --- what they do --------------------------------------------------------------------------------------

    async def _chat(self, job: ChatInput) -> ChatOutcome:
        fmt = OutputFormat(**job.output_format) if job.output_format else None
        request = ChatRequest(
            messages=job.messages,
            model_hint=job.model_hint,
            estimated_input_tokens=job.estimated_input_tokens,
            parameters=dict(job.parameters),
            output_schema=job.output_schema,
            output_format=fmt,
        )
        ctx = self._context(job.origin, request, job.policy)
        try:
            await recorded(self._services, ctx, self._rest(job.origin))
        except TokenHubError as exc:
            self._published("workflow_failed", f"chat-{ctx.request_id}", error=exc.message)
            return ChatOutcome(error=to_wire(exc), attempts=list(ctx.attempts))
        result, served = ctx.result, ctx.served_by
        assert result is not None and served is not None
        reason = ctx.routing_reason or (ctx.decision.reason if ctx.decision else "")
        self._published(
            "workflow_completed",
            f"chat-{ctx.request_id}",
            model=served.model.id,
            provider=served.model.provider_id,
            latency_ms=round(result.latency_ms, 3),
            cost_usd=ctx.cost_usd,
        )
        return ChatOutcome(
            model_id=served.model.id,
            provider_id=served.model.provider_id,
            body=result.body,
            usage=result.usage,
            latency_ms=result.latency_ms,
            format=result.format,
            cost_usd=ctx.cost_usd,
            attempts=list(ctx.attempts),
            routing_reason=reason,
            alias_from=ctx.alias_from,
        )

    async def _step(self, call: StepCall) -> StepOutcome:
        origin = call.origin
        parent = self._context(origin, ChatRequest(messages=[]), Policy("", call.plan_budget_usd, call.max_latency_ms))
        try:
            runner = StepRunner(
                self._services,
                parent,
                self._rest(origin),
                budget_usd=call.plan_budget_usd,
                on_event=_ignore,
                first_index=call.index,
                spent_usd=call.spent_usd,
                steps_done=call.steps_done,
            )
            result = await runner.run(
                call.role,
                call.messages,
                mode=call.mode,
                min_weight=call.min_weight,
                model_hint=call.model_hint,
                only_models=frozenset(call.only_models) if call.only_models is not None else None,
                parameters=call.parameters,
                budget_usd=call.budget_usd,
            )
        except BudgetExhausted as exc:
            return StepOutcome(budget_exhausted=str(exc))
        except TokenHubError as exc:
            return StepOutcome(error=to_wire(exc))
        return StepOutcome(result=result)

    async def _finish(self, end: PlanFinish) -> PlanResult:
        """Record the plan's own row (status, reason, mode; its steps have theirs) and publish its end."""
        origin = end.origin
        ctx = self._context(origin, ChatRequest(messages=[]), Policy(end.mode or "planning"))
        outcome, steps = end.outcome, end.steps
        error: TokenHubError | None = from_wire(end.error) if end.error is not None else None
        if end.cancelled:
            error = RequestCancelled("plan cancelled (DELETE /v1/plans/{id}); steps in flight were cancelled")
        reason = ""
        if outcome is not None:
            reason = plan_reason(outcome, len(steps), sum(s.cost_usd for s in steps), end.budget_usd)
            if error is None and end.output_schema is not None:
                try:
                    validate_output(end.output_schema, outcome.composite)
                except OutputSchemaMismatch as exc:
                    error = exc
        ctx.routing_reason, ctx.error = reason, error
        ctx.plan_outcome, ctx.plan_steps = outcome, list(steps)
        self._services.recorder.emit(ctx)
        status = "cancelled" if end.cancelled else "failed" if error is not None else "completed"
        workflow_id = f"plan-{origin.request_id}"
        if error is None and outcome is not None:
            self._published(
                "workflow_completed",
                workflow_id,
                model=outcome.final_model,
                steps=len(steps),
                cost_usd=round(sum(s.cost_usd for s in steps), 10),
            )
        else:
            self._published("workflow_failed", workflow_id, error=error.message if error else status)
        return PlanResult(status, list(steps), outcome, reason, to_wire(error) if error is not None else None)

    # --- helpers -------------------------------------------------------------------------------------------

    def _context(self, origin: Origin, request: ChatRequest, policy: Policy) -> RequestContext:
        """The request's context, rebuilt: its latency counts from when the edge received it."""
        waited = max(0.0, time.time() - origin.received_at)
        return RequestContext(
            request_id=origin.request_id,
            scope=origin.scope,
            client_ip=origin.client_ip,
            request=request,
            endpoint=origin.endpoint,
            policy=policy,
            presented_key=origin.presented_key,
            api_key=self._key(origin.api_key_id),
            tenant_id=origin.tenant_id,
            client_request_id=origin.client_request_id,
            started_at=time.perf_counter() - waited,
        )

    def _key(self, key_id: str) -> ApiKeyInfo | None:
        if not key_id:
            return None
        return next((k for k in self._services.snapshot.keys_by_digest.values() if k.id == key_id), None)

    def _rest(self, origin: Origin) -> Next:
        """The tenant's chain after `orchestrate`, behind a check that the key is still in force (a key
        disabled or deleted while its plan runs stops the plan's spending at the next step)."""
        rest = chain_after(self._chains(origin.tenant_id), Orchestrate)
        if rest is None:
            raise PlanPipelineMissing(f"tenant {origin.tenant_id!r} has no 'orchestrate' stage any more")

        async def in_force(ctx: RequestContext) -> None:
            if origin.api_key_id:
                key_in_force(True, ctx.api_key, time.time())
            await rest(ctx)

        return in_force

    def _published(self, event: str, workflow_id: str, **fields: Any) -> None:
        self._services.events.publish(event, workflow_id=workflow_id, **fields)


def _taken_over() -> TokenHubError:
    return Conflict("this request was served by the direct path after Temporal stopped answering")


async def _heartbeating(work: Awaitable[T]) -> T:
    """Heartbeat while `work` runs: Temporal notices a dead worker by the missing beats, and delivers a
    cancellation (DELETE /v1/plans/{id}) through them, which cancels the provider call in flight."""

    async def beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(HEARTBEAT_EVERY)

    beater = asyncio.create_task(beat())
    try:
        return await work
    finally:
        beater.cancel()


async def _ignore(event: str, data: dict[str, Any]) -> None:
    return None
