"""One /v1/plan step: a child request through the rest of the tenant's chain, recorded as its own row.

The step runner also owns the plan's budget: each step may spend only what is left, so the policy stage's
own budget filter is what stops a plan that cannot afford its next step. The API key's monthly budget is
checked again for every step the same way (policy refuses a step the key can no longer afford, with what the
earlier steps spent already counted): after the first step that stops the plan like its own budget does.
Steps that run at once (vote voters) reserve their worst-case cost on the plan's budget before they call a
provider (store/reservations.py), so together they cannot spend past it either.

A step that names a model (primary_model_id, review_model_id, the request's model) is routed like any request
with a hint: when that model is not eligible or fails, another answers. The runner says so in `notes` (which
id, why, who answered), and the plan's routing reason lists them: never silently replaced.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

from adapters.answer import answer_text
from pipeline.context import Policy, RequestContext
from pipeline.errors import BudgetExceeded, NoEligibleModel, PlanBudgetReserved
from pipeline.model_ids import resolve_model_id
from pipeline.stage import Next
from pipeline.types import ChatRequest, Message
from stages.record import recorded
from store.reservations import BudgetAccount

if TYPE_CHECKING:
    from pipeline.services import Services

__all__ = ["BudgetExhausted", "EventSink", "StepResult", "StepRunner", "Steps"]

EventSink = Callable[[str, dict[str, Any]], Awaitable[None]]


class BudgetExhausted(Exception):
    """The plan's budget cannot pay for the next step: stop and return what was done."""


@dataclass(slots=True)
class StepResult:
    index: int
    role: str
    request_id: str
    model_id: str
    provider_id: str
    content: str
    latency_ms: float
    input_tokens: int
    output_tokens: int
    cost_usd: float

    def summary(self) -> dict[str, Any]:
        """The step as the plan's response lists it (the content lives in the composite)."""
        data = asdict(self)
        del data["content"]
        return data


class Steps(Protocol):
    """What an orchestrator runs its steps through: the in-process `StepRunner`, or a durable workflow's
    proxy that runs each step as an activity (itself a `StepRunner.run` in the worker)."""

    @property
    def remaining_usd(self) -> float: ...

    async def run(
        self,
        role: str,
        messages: list[Message],
        *,
        mode: str,
        min_weight: int = 0,
        model_hint: str = "",
        only_models: frozenset[str] | None = None,
        parameters: dict[str, Any] | None = None,
        budget_usd: float | None = None,
    ) -> StepResult: ...


class StepRunner:
    def __init__(
        self,
        services: Services,
        parent: RequestContext,
        call_next: Next,
        *,
        budget_usd: float,
        on_event: EventSink,
        first_index: int = 1,
        spent_usd: float = 0.0,
        steps_done: int = 0,
    ) -> None:
        """`first_index`, `spent_usd` and `steps_done` resume a plan part-way (a workflow runs each of its
        steps in its own runner: the step's number, and what the steps before it spent)."""
        self._services = services
        self._parent = parent
        self._call_next = call_next
        self._on_event = on_event
        self._counter = itertools.count(first_index)
        self._steps_before = steps_done
        self.budget_usd = budget_usd
        self.spent_usd = spent_usd
        self.steps: list[StepResult] = []
        self.notes: list[str] = []  # named models that did not answer their step, and why
        self._noted: set[tuple[str, str]] = set()  # (model named, why): each said once per plan
        self._account_id = f"plan:{parent.request_id}"

    @property
    def remaining_usd(self) -> float:
        """What the next step may spend: the budget less what finished steps spent and running ones reserved."""
        return self.budget_usd - self.spent_usd - self._services.reservations.reserved(self._account_id)

    def account(self) -> BudgetAccount:
        """The plan's budget as its steps reserve against it (no budget: a limit of 0, nothing reserved)."""
        return BudgetAccount(self._account_id, self.budget_usd, self.spent_usd)

    async def run(
        self,
        role: str,
        messages: list[Message],
        *,
        mode: str,
        min_weight: int = 0,
        model_hint: str = "",
        only_models: frozenset[str] | None = None,
        parameters: dict[str, Any] | None = None,
        budget_usd: float | None = None,
    ) -> StepResult:
        """Run one step. Raises BudgetExhausted when no model fits what is left of the budget, and the
        chain's own errors (UpstreamFailed, ...) when the step fails."""
        index = next(self._counter)
        budget = self.remaining_usd if budget_usd is None else budget_usd
        if self.budget_usd <= 0:  # the plan has no budget (it resolved to 0, "no budget filter"): nor its steps
            budget = max(budget_usd or 0.0, 0.0)
        elif budget <= 0:
            raise BudgetExhausted(f"the plan's budget (${self.budget_usd:g}) is spent before step {index} ({role})")
        parent = self._parent
        child = RequestContext(
            request_id=f"{parent.request_id}.{index}-{role}",
            scope=parent.scope,
            client_ip=parent.client_ip,
            request=ChatRequest(messages=messages, model_hint=model_hint, parameters=dict(parameters or {})),
            endpoint="plan_step",
            policy=Policy(mode, budget, parent.policy.max_latency_ms, min_weight),
            presented_key=parent.presented_key,
            api_key=parent.api_key,
            tenant_id=parent.tenant_id,
            parent_request_id=parent.request_id,
            only_models=only_models,
            plan_budget=self.account,
        )
        # the plan's own deferred rate limits (shared through Redis) go with its first step's round trip
        child.shared_takes, parent.shared_takes = parent.shared_takes, []
        child.shared_early, parent.shared_early = parent.shared_early, None
        await self._on_event("step_started", {"index": index, "role": role, "request_id": child.request_id})
        try:
            await recorded(self._services, child, self._call_next)
        except NoEligibleModel as exc:
            if "budget_exceeded" in exc.exclusions.values():
                raise BudgetExhausted(
                    f"step {index} ({role}) needs more than the ${budget:.6f} left of the plan's "
                    f"${self.budget_usd:g} budget"
                ) from None
            raise
        except PlanBudgetReserved as exc:
            raise BudgetExhausted(f"step {index} ({role}): {exc.message}") from None
        except BudgetExceeded as exc:
            if not self.steps and not self._steps_before:
                raise  # nothing done yet: the key's own 429, as for any request
            raise BudgetExhausted(f"step {index} ({role}): {exc.message}") from None
        result, served = child.result, child.served_by
        assert result is not None and served is not None
        usage = result.usage
        step = StepResult(
            index=index,
            role=role,
            request_id=child.request_id,
            model_id=served.model.id,
            provider_id=served.model.provider_id,
            content=answer_text(result),
            latency_ms=round(sum(a.latency_ms for a in child.attempts), 3),
            input_tokens=usage.input_tokens if usage else 0,
            output_tokens=usage.output_tokens if usage else 0,
            cost_usd=child.cost_usd,
        )
        self.spent_usd += step.cost_usd
        self.steps.append(step)
        if model_hint and (why := self._not_used(child, served.model.id)) and (model_hint, why) not in self._noted:
            self._noted.add((model_hint, why))
            self.notes.append(
                f"model {model_hint!r} not used in step {index} ({role}): {why}; {step.model_id} answered"
            )
        await self._on_event("step_completed", {**step.summary(), "content": step.content})
        return step

    def _not_used(self, child: RequestContext, served: str) -> str:
        """Why the model a step named did not answer it ("" when it did): not registered, the reason it was
        not eligible, or how its call failed before another model answered."""
        named = child.request.model_hint.strip()  # after policy: an alias's chosen variant
        wanted = resolve_model_id(named, self._services.snapshot.models) if named else None
        if wanted == served:
            return ""
        if wanted is None:
            return "not registered"
        decision = child.decision
        if decision is not None and (excluded := decision.exclusions.get(wanted)):
            return f"not eligible ({excluded})"
        failed = [a for a in child.attempts if a.model_id == wanted and a.error_class]
        return f"failed ({failed[-1].error_class})" if failed else "not eligible"
