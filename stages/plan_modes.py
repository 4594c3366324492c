"""The orchestration modes of /v1/plan (orchestration.md §1), run in-process.

An orchestrator only decides which steps to run and how their answers feed each other; every step goes
through `StepRunner.run`, an ordinary pass through the tenant's chain. A durable (Temporal) orchestrator
implements the same `Orchestrator` protocol and runs the same steps as workflow activities.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.context import PlanSpec
from pipeline.errors import NoEligibleModel, TokenHubError, UpstreamFailed
from pipeline.types import ChatRequest, Message
from stages.plan_steps import BudgetExhausted, StepResult, Steps

__all__ = [
    "CRITIQUE_SYSTEM",
    "IMPROVE_SYSTEM",
    "JUDGE_SYSTEM",
    "PLAN_SYSTEM",
    "REFINE_PLAN_SYSTEM",
    "InProcessOrchestrator",
    "Orchestrator",
    "PlanOutcome",
    "Ranker",
    "envelope",
    "parse_choice",
    "plan_reason",
    "user_text",
]

PLAN_SYSTEM = "You are a planning assistant. Produce a detailed plan for the user's request."
CRITIQUE_SYSTEM = "You are a critical reviewer. Analyse the plan and give constructive criticism."
REFINE_PLAN_SYSTEM = "You are a planning assistant. Refine the plan using the critique."
JUDGE_SYSTEM = "You are a judge. Pick the best of several answers and reply with only its number."
IMPROVE_SYSTEM = "Review and improve the response: fix errors, add missing detail, improve clarity."

# Ranks the models a vote may use: (question, mode, min_weight, budget, excluded ids) -> model ids, best first.
# Awaitable: a durable orchestrator asks the Router through an activity.
Ranker = Callable[[ChatRequest, str, int, float, frozenset[str]], Awaitable[list[str]]]


@dataclass(slots=True)
class PlanOutcome:
    composite: Any  # the `response` of the plan envelope
    reason: str  # e.g. "adversarial-orchestration"
    final_model: str  # the model whose answer the composite rests on
    stop_reason: str = ""  # set when the budget stopped the plan before its last step
    notes: list[str] = field(default_factory=list)  # failed voters, a failed judge, ...


class Orchestrator(Protocol):
    async def run(self, spec: PlanSpec, question: ChatRequest, steps: Steps, rank: Ranker) -> PlanOutcome: ...


def envelope(outcome: PlanOutcome, steps: list[StepResult], routing_reason: str) -> dict[str, Any]:
    """The /v1/plan answer: the /v1/chat envelope with the composite as `response`, every step, the cost."""
    total = round(sum(step.cost_usd for step in steps), 10)
    return {
        "negotiated_model": outcome.final_model,
        "estimated_cost_usd": total,
        "routing_reason": routing_reason,
        "response": outcome.composite,
        "steps": [step.summary() for step in steps],
        "total_cost_usd": total,
        "complete": not outcome.stop_reason,
        "stop_reason": outcome.stop_reason or None,
    }


def plan_reason(
    outcome: PlanOutcome, steps: int, spent_usd: float, budget_usd: float, step_notes: Sequence[str] = ()
) -> str:
    """The plan's routing reason (its own request-log row and its envelope), whichever orchestrator ran it;
    `step_notes`: named models that did not answer their step, and why."""
    return (
        f"{outcome.reason}: {steps} step(s), ${spent_usd:.6f} of ${budget_usd:g}"
        + (f"; stopped: {outcome.stop_reason}" if outcome.stop_reason else "")
        + "".join(f"; {note}" for note in (*step_notes, *outcome.notes))
    )


def user_text(request: ChatRequest) -> str:
    return "\n".join(m.content for m in request.messages if m.role == "user")


def _prompt(system: str, user: str) -> list[Message]:
    return [Message("system", system), Message("user", user)]


class InProcessOrchestrator:
    def __init__(self, *, max_parallel: int) -> None:
        self._max_parallel = max_parallel

    async def run(self, spec: PlanSpec, question: ChatRequest, steps: Steps, rank: Ranker) -> PlanOutcome:
        """Run the plan; `rank` orders the models a vote may use, under the plan's tenant's routing options."""
        mode = spec.mode
        if mode == "adversarial":
            return await self._adversarial(spec, question, steps)
        if mode == "vote":
            return await self._vote(spec, question, steps, rank)
        if mode == "refine":
            return await self._refine(spec, question, steps)
        first = await _first_step(
            steps.run(
                "answer",
                question.messages,
                mode=mode or "",
                min_weight=spec.primary_min_weight,
                model_hint=spec.primary_model_id or question.model_hint,
                parameters=question.parameters,
            )
        )
        return PlanOutcome({"answer": first.content}, "planning", first.model_id)

    async def _adversarial(self, spec: PlanSpec, question: ChatRequest, steps: Steps) -> PlanOutcome:
        text = user_text(question)
        plan = await _first_step(
            _phase(
                "adversarial plan phase",
                steps.run(
                    "plan",
                    _prompt(PLAN_SYSTEM, text),
                    mode="planning",
                    min_weight=spec.primary_min_weight,
                    model_hint=spec.primary_model_id,
                ),
            )
        )
        if spec.return_plan_only:
            return PlanOutcome({"initial_plan": plan.content}, "adversarial-plan-only", plan.model_id)
        composite: dict[str, Any] = {"initial_plan": plan.content, "critique": None, "refined_plan": None}
        outcome = PlanOutcome(composite, "adversarial-orchestration", plan.model_id)
        current = plan.content
        try:
            for _ in range(spec.iterations or 1):
                critique = await _phase(
                    "adversarial critique phase",
                    steps.run(
                        "critique",
                        _prompt(
                            CRITIQUE_SYSTEM,
                            f"Original request:\n{text}\n\nProposed plan:\n{current}\n\nProvide your critique.",
                        ),
                        mode="adversarial",
                        min_weight=spec.review_min_weight,
                        model_hint=spec.review_model_id,
                    ),
                )
                composite["critique"] = critique.content
                refined = await _phase(
                    "adversarial refine phase",
                    steps.run(
                        "refine",
                        _prompt(
                            REFINE_PLAN_SYSTEM,
                            f"Original request:\n{text}\n\nCurrent plan:\n{current}\n\n"
                            f"Critique:\n{critique.content}\n\nProduce the refined plan.",
                        ),
                        mode="planning",
                        min_weight=spec.primary_min_weight,
                        model_hint=spec.primary_model_id,
                    ),
                )
                current = composite["refined_plan"] = refined.content
                outcome.final_model = refined.model_id
        except BudgetExhausted as exc:
            outcome.stop_reason = str(exc)
        return outcome

    async def _vote(self, spec: PlanSpec, question: ChatRequest, steps: Steps, rank: Ranker) -> PlanOutcome:
        excluded = frozenset({spec.review_model_id}) if spec.review_model_id else frozenset()
        ranked = await rank(question, "normal", spec.primary_min_weight, steps.remaining_usd, excluded)
        if not ranked:
            raise NoEligibleModel("no eligible models for vote", client_constraint=False)
        voters = ranked[: spec.iterations if spec.iterations >= 2 else 3]
        share = steps.remaining_usd / len(voters)  # concurrent voters split what is left
        gate = asyncio.Semaphore(self._max_parallel)
        notes: list[str] = []

        async def vote(model_id: str) -> StepResult | None:
            async with gate:
                try:
                    return await steps.run(
                        "vote",
                        question.messages,
                        mode="normal",
                        only_models=frozenset({model_id}),
                        parameters=question.parameters,
                        budget_usd=share,
                    )
                except (TokenHubError, BudgetExhausted) as exc:
                    notes.append(f"voter {model_id} failed: {getattr(exc, 'message', exc)}")
                    return None

        # gather: a client that disconnects cancels this task, and with it every outstanding voter.
        answers = [a for a in await asyncio.gather(*(vote(m) for m in voters)) if a is not None]
        if not answers:
            raise UpstreamFailed("all voters failed: " + "; ".join(notes), error_class="transient")
        if len(answers) == 1:
            only = answers[0]
            composite = {"responses": [{"model": only.model_id, "content": only.content}], "selected": 0}
            return PlanOutcome(composite, "vote-single-response", only.model_id, notes=notes)
        return await self._judge(spec, question, steps, answers, notes)

    async def _judge(
        self, spec: PlanSpec, question: ChatRequest, steps: Steps, answers: list[StepResult], notes: list[str]
    ) -> PlanOutcome:
        sections = "\n\n".join(f"Response {i} (model {a.model_id}):\n{a.content}" for i, a in enumerate(answers, 1))
        prompt = f"Question:\n{user_text(question)}\n\n{sections}\n\nWhich number is best (1-{len(answers)})?"
        outcome = PlanOutcome({}, "vote-orchestration", answers[0].model_id, notes=notes)
        judge_model: str | None = None
        selected = 0
        try:
            judge = await steps.run(
                "judge",
                _prompt(JUDGE_SYSTEM, prompt),
                mode="high_confidence",
                min_weight=spec.review_min_weight,
                model_hint=spec.review_model_id,
            )
            judge_model, selected = judge.model_id, parse_choice(judge.content, len(answers))
        except BudgetExhausted as exc:
            outcome.stop_reason = str(exc)
        except TokenHubError as exc:  # the answers are still worth returning: the first one wins
            notes.append(f"judge failed: {exc.message}")
            outcome.reason = "vote-judge-failed"
        outcome.composite = {
            "responses": [
                {"model": a.model_id, "content": a.content, "selected": i == selected} for i, a in enumerate(answers)
            ],
            "selected": selected,
            "judge": judge_model,
        }
        outcome.final_model = answers[selected].model_id
        return outcome

    async def _refine(self, spec: PlanSpec, question: ChatRequest, steps: Steps) -> PlanOutcome:
        initial = await _first_step(
            _phase(
                "refine initial phase",
                steps.run(
                    "initial",
                    question.messages,
                    mode="high_confidence",
                    min_weight=spec.primary_min_weight,
                    model_hint=spec.primary_model_id,
                    parameters=question.parameters,
                ),
            )
        )
        iterations = spec.iterations or 2
        composite = {"refined_response": initial.content, "iterations": iterations, "completed_iterations": 0}
        composite["model"] = initial.model_id
        outcome = PlanOutcome(composite, "refine-orchestration", initial.model_id)
        text = user_text(question)
        for _ in range(iterations):
            current = composite["refined_response"]
            try:
                improved = await steps.run(
                    "refine",
                    _prompt(
                        IMPROVE_SYSTEM,
                        f"Original request:\n{text}\n\nCurrent response:\n{current}\n\nOutput an improved version.",
                    ),
                    mode="high_confidence",
                    only_models=frozenset({initial.model_id}),  # same-model improvement
                )
            except BudgetExhausted as exc:
                outcome.stop_reason = str(exc)
                break
            except TokenHubError as exc:  # keep the best answer so far (spec)
                outcome.notes.append(f"refine iteration failed: {exc.message}")
                break
            composite["refined_response"] = improved.content
            composite["completed_iterations"] += 1
        return outcome


async def _phase(name: str, step: Awaitable[StepResult]) -> StepResult:
    """Name the phase in a failing step's error, so the client knows which part of the plan broke."""
    try:
        return await step
    except TokenHubError as exc:
        exc.message = f"{name}: {exc.message}"
        exc.args = (exc.message,)
        raise


async def _first_step(step: Awaitable[StepResult]) -> StepResult:
    """A plan that cannot afford even its first step is the request's own constraint: 422, nothing done."""
    try:
        return await step
    except BudgetExhausted as exc:
        raise NoEligibleModel(
            f"the plan's budget cannot pay for its first step: {exc}", client_constraint=True
        ) from None


_NUMBER = re.compile(r"\b(\d+)\b")


def parse_choice(text: str, count: int) -> int:
    """0-based index of the judge's pick: the first standalone integer in [1, count]; else (the original's
    rule) the highest number that appears anywhere in the text; else the first answer."""
    for match in _NUMBER.finditer(text):
        number = int(match.group(1))
        if 1 <= number <= count:
            return number - 1
    for number in range(count, 0, -1):
        if str(number) in text:
            return number - 1
    return 0
