"""The workflows: deterministic code only (no clock, no I/O, no randomness), safe in Temporal's sandbox.

`PlanWorkflow` runs the very orchestrator the direct path runs (`InProcessOrchestrator`: adversarial, vote,
refine, planning) over a steps proxy whose every step is the `run_step` activity, so the modes exist once. A
step's result is in the workflow's history the moment it completes: a TokenHub that dies mid-plan resumes,
after a restart, at the step it was running, and the steps before it are neither sent nor charged again.
`ChatWorkflow` is one `run_chat` activity. Activities are named, not imported: this module imports no I/O.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError
from temporalio.exceptions import CancelledError as ActivityCancelled
from temporalio.workflow import ActivityCancellationType

# Passed through (imported once, outside the sandbox): the converter resolves the dataclasses' type hints in
# these modules, so every module that defines a value on the wire is named here.
with workflow.unsafe.imports_passed_through():
    from pipeline.errors import NoEligibleModel, TokenHubError
    from pipeline.types import ChatRequest, Message
    from stages.durable.wire import (
        ChatInput,
        ChatOutcome,
        PlanFinish,
        PlanInput,
        PlanResult,
        RankCall,
        StepCall,
        StepOutcome,
        from_wire,
        to_wire,
    )
    from stages.plan_modes import InProcessOrchestrator
    from stages.plan_steps import BudgetExhausted, StepResult

__all__ = ["HEARTBEAT_TIMEOUT", "WORKFLOWS", "ChatWorkflow", "PlanWorkflow"]

# A running activity heartbeats every second; a worker that died is noticed after this and its step retried
# (on this process after a restart, or on another TokenHub on the same task queue).
HEARTBEAT_TIMEOUT = timedelta(seconds=5)
# Only a lost worker (crash, timeout) retries a step: a step's own failure is an outcome, not an exception.
STEP_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=10), maximum_attempts=5
)
# A chat's client waits on the HTTP connection that died with the worker: re-running it would answer nobody.
CHAT_RETRY = RetryPolicy(maximum_attempts=1)
QUICK = timedelta(seconds=30)  # ranking and the plan's final record: no provider call


@workflow.defn(name="ChatWorkflow")
class ChatWorkflow:
    @workflow.run
    async def run(self, job: ChatInput) -> ChatOutcome:
        return await workflow.execute_activity(
            "run_chat",
            job,
            result_type=ChatOutcome,
            start_to_close_timeout=timedelta(seconds=job.timeout_secs),
            heartbeat_timeout=HEARTBEAT_TIMEOUT,
            retry_policy=CHAT_RETRY,
        )


class _ActivitySteps:
    """The orchestrator's `Steps`: each step is the `run_step` activity; the plan's budget is kept here."""

    def __init__(self, job: PlanInput) -> None:
        self._job = job
        self._index = 0
        self.spent_usd = 0.0
        self.steps: list[StepResult] = []

    @property
    def remaining_usd(self) -> float:
        return self._job.budget_usd - self.spent_usd

    async def run(
        self,
        role: str,
        messages: list[Message],
        *,
        mode: str,
        min_weight: int = 0,
        model_hint: str = "",
        only_models: frozenset[str] | None = None,
        parameters: dict[str, object] | None = None,
        budget_usd: float | None = None,
    ) -> StepResult:
        self._index += 1
        job = self._job
        call = StepCall(
            origin=job.origin,
            plan_budget_usd=job.budget_usd,
            max_latency_ms=job.policy.max_latency_ms,
            index=self._index,
            role=role,
            messages=list(messages),
            mode=mode,
            min_weight=min_weight,
            model_hint=model_hint,
            only_models=sorted(only_models) if only_models is not None else None,
            parameters=dict(parameters or {}),
            budget_usd=budget_usd,
            spent_usd=self.spent_usd,
            steps_done=len(self.steps),
        )
        outcome = await workflow.execute_activity(
            "run_step",
            call,
            result_type=StepOutcome,
            start_to_close_timeout=timedelta(seconds=job.step_timeout_secs),
            heartbeat_timeout=HEARTBEAT_TIMEOUT,
            retry_policy=STEP_RETRY,
            # A cancelled plan waits for its step's provider call to be cancelled (and its row recorded).
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        if outcome.result is not None:
            self.spent_usd += outcome.result.cost_usd
            self.steps.append(outcome.result)
            return outcome.result
        if outcome.budget_exhausted:
            raise BudgetExhausted(outcome.budget_exhausted)
        assert outcome.error is not None
        raise from_wire(outcome.error)

    async def rank(
        self, question: ChatRequest, mode: str, min_weight: int, budget: float, excluded: frozenset[str]
    ) -> list[str]:
        call = RankCall(
            origin=self._job.origin,
            messages=list(question.messages),
            mode=mode,
            min_weight=min_weight,
            budget_usd=budget,
            excluded=sorted(excluded),
            model_hint=question.model_hint,
            parameters=dict(question.parameters),
        )
        return await workflow.execute_activity(
            "rank_voters", call, result_type=list[str], start_to_close_timeout=QUICK, retry_policy=STEP_RETRY
        )


@workflow.defn(name="OrchestrationWorkflow")
class PlanWorkflow:
    def __init__(self) -> None:
        self._steps: _ActivitySteps | None = None

    @workflow.run
    async def run(self, job: PlanInput) -> PlanResult:
        steps = self._steps = _ActivitySteps(job)
        question = ChatRequest(messages=list(job.messages), model_hint=job.model_hint, parameters=dict(job.parameters))
        finish = PlanFinish(job.origin, job.spec.mode, job.budget_usd, job.spec.output_schema)
        try:
            finish.outcome = await InProcessOrchestrator(max_parallel=job.max_parallel).run(
                job.spec, question, steps, steps.rank
            )
        except TokenHubError as exc:
            finish.error = to_wire(exc)
        except BudgetExhausted as exc:  # the orchestrator turns these into outcomes; this is a safety net
            finish.error = to_wire(NoEligibleModel(str(exc), client_constraint=True))
        except asyncio.CancelledError:  # DELETE /v1/plans/{id}: in-flight steps are cancelled with the plan
            finish.cancelled = True
        except ActivityError as exc:  # how a step cancelled with the plan reports
            if not isinstance(exc.cause, ActivityCancelled):
                raise
            finish.cancelled = True
        finish.steps = list(steps.steps)
        result = await workflow.execute_activity(
            "finish_plan", finish, result_type=PlanResult, start_to_close_timeout=QUICK, retry_policy=STEP_RETRY
        )
        if finish.cancelled:
            raise asyncio.CancelledError("plan cancelled")  # the execution's status: CANCELED
        return result

    @workflow.query
    def progress(self) -> list[StepResult]:
        """The steps completed so far (GET /v1/plans/{id} while the plan runs)."""
        return list(self._steps.steps) if self._steps is not None else []


WORKFLOWS = [ChatWorkflow, PlanWorkflow]
