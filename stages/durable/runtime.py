"""TokenHub's side of Temporal: the connection, the in-process worker, and the dispatch rules
(orchestration.md section 2) with the circuit breaker and the fallback to the direct path.

A lifecycle component that never blocks or fails start-up: it connects in the background and keeps
retrying, so a Temporal that is absent, unreachable at start or dying mid-run costs only the durability:
requests meanwhile run directly (`tokenhub_temporal_fallback_total{reason}`), `tokenhub_temporal_up` says
which, and /healthz reports it without failing. Off (the default), it does nothing and the orchestrate stage
never calls it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import Counter, Gauge
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import CancelledError as TemporalCancelled
from temporalio.service import RPCError
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from pipeline.context import Candidate, RequestContext
from pipeline.errors import NotFound, RequestCancelled, TokenHubError, UpstreamFailed
from pipeline.stage import Next
from pipeline.types import ChatResult, ModelInfo
from stages.durable.activities import DurableActivities, abandoned_key
from stages.durable.breaker import Breaker
from stages.durable.step_cache import StepCache
from stages.durable.wire import ChatInput, ChatOutcome, Origin, PlanInput, PlanResult, StepOutcome, from_wire
from stages.durable.workflows import WORKFLOWS, ChatWorkflow, PlanWorkflow
from stages.plan_modes import envelope

if TYPE_CHECKING:
    from pipeline.services import Services

__all__ = ["STATUSES", "TemporalRuntime", "TemporalUnavailable"]

log = structlog.get_logger("tokenhub.temporal")
DURABLE_ENDPOINTS = frozenset({"chat", "plan"})  # /v1/chat and /v1/plan; the other wire formats stay direct
START_TIMEOUT = 3.0  # seconds: a Temporal slower than this to accept a workflow is "slow to answer"
CHECK_EVERY = 1.0  # seconds between health checks (a dead server is noticed within about this)
# The admin's status filter (Temporal's enum names) -> the visibility query's value.
STATUSES = {s.name: "".join(part.title() for part in s.name.split("_")) for s in WorkflowExecutionStatus}
# Our packages are passed through the sandbox (imported once, not per workflow run): the converter resolves
# the wire dataclasses' postponed annotations in their modules, which a sandbox re-import leaves half-built.
# The workflow code itself stays deterministic by construction (stages/durable/workflows.py).
SANDBOX = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules("pipeline", "stages", "adapters", "store")
)


class TemporalUnavailable(TokenHubError):
    """503: an asynchronous plan needs Temporal and it is not reachable now."""

    status = 503
    type = "temporal_unavailable"


class _Lost(Exception):
    """Temporal stopped answering while a workflow ran."""


class TemporalRuntime:
    """The `Durable` (pipeline/durability.py) the composition root installs when Temporal is enabled."""

    name = "temporal"

    def __init__(self, services: Services, chains: Callable[[str], Next]) -> None:
        """`chains` is the composition root's `TenantPipelines.chain_for`: the activities run those chains."""
        settings = services.settings
        self.enabled = True  # built only when TOKENHUB_TEMPORAL_ENABLED is set
        self.host = settings.temporal_host
        self.namespace = settings.temporal_namespace
        self.task_queue = settings.temporal_task_queue
        self._services = services
        self.breaker = Breaker(failures=3, open_secs=30.0)
        registry = services.metrics.registry
        self._up_gauge = Gauge(
            "tokenhub_temporal_up", "1 while Temporal is reachable and the worker runs", registry=registry
        )
        self._fallbacks = Counter(
            "tokenhub_temporal_fallback",
            "Requests that took the direct path although Temporal is enabled, by reason",
            ["reason"],
            registry=registry,
        )
        self.cache = StepCache(settings.data_dir / "temporal-steps.sqlite")
        self.client: Client | None = None
        self._chains = chains
        self._worker: Worker | None = None
        self._worker_task: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._up = False
        self._down = asyncio.Event()
        self._down.set()
        self._background: set[asyncio.Future[None]] = set()
        self.state = "connecting"
        self.last_error = ""

    @property
    def up(self) -> bool:
        return self._up

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.cache.open()
        self._keeper = asyncio.create_task(self._keep_connected(), name="temporal-connect")

    async def stop(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
            self._keeper = None
        await self._stop_worker()
        self._set_up(False, "stopped")
        await self.cache.close()

    async def _keep_connected(self) -> None:
        delay = 1.0
        while True:
            try:
                if self.client is None:
                    self.client = await Client.connect(
                        self.host, namespace=self.namespace, connect_timeout=timedelta(seconds=5)
                    )
                if self._worker_task is None or self._worker_task.done():
                    self._start_worker(self.client)
                healthy = await asyncio.wait_for(self.client.service_client.check_health(), timeout=3.0)
                if not healthy:
                    raise RuntimeError("Temporal reports itself unhealthy")
                self._set_up(True)
                delay = 1.0
                await asyncio.sleep(CHECK_EVERY)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # unreachable, refused, timed out: retry with backoff, never give up
                self._set_up(False, str(exc) or type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _start_worker(self, client: Client) -> None:
        activities = DurableActivities(self._services, self._chains, self.cache)
        self._worker = Worker(
            client,
            task_queue=self.task_queue,
            workflows=WORKFLOWS,
            activities=activities.all(),
            workflow_runner=SANDBOX,
            # A workflow whose worker died moves to the plain task queue soon, so a restart resumes it soon.
            sticky_queue_schedule_to_start_timeout=timedelta(seconds=3),
            max_heartbeat_throttle_interval=timedelta(seconds=1),  # cancellations reach a step within ~1 s
            default_heartbeat_throttle_interval=timedelta(seconds=1),
        )
        self._worker_task = asyncio.create_task(self._run_worker(self._worker), name="temporal-worker")

    async def _run_worker(self, worker: Worker) -> None:
        try:
            await worker.run()
        except Exception as exc:  # e.g. the namespace does not exist: logged, retried by the keeper
            self._set_up(False, f"worker stopped: {exc}")

    async def _stop_worker(self) -> None:
        worker, task = self._worker, self._worker_task
        self._worker = self._worker_task = None
        if worker is not None and task is not None and not task.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(worker.shutdown(), timeout=10.0)
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    def _set_up(self, up: bool, error: str = "") -> None:
        if up != self._up:
            log.info("temporal_up" if up else "temporal_down", host=self.host, error=error or None)
        self._up = up
        self._up_gauge.set(1 if up else 0)
        if up:
            self._down.clear()
            self.state, self.last_error = "up", ""
        else:
            self._down.set()
            self.state, self.last_error = "down", error

    def status(self) -> dict[str, Any]:
        """For /healthz: reported, never a reason to fail it."""
        status: dict[str, Any] = {
            "enabled": True,
            "state": self.state,
            "host": self.host,
            "namespace": self.namespace,
            "task_queue": self.task_queue,
            "breaker": self.breaker.state,
        }
        if self.last_error:
            status["error"] = self.last_error
        return status

    # --- dispatch ------------------------------------------------------------------------------------------

    def takes(self, ctx: RequestContext) -> bool:
        """Whether this request is one Temporal runs when it can (streams and other formats never)."""
        return not ctx.request.stream and ctx.endpoint in DURABLE_ENDPOINTS

    def _refusal(self) -> str:
        """Why a request must take the direct path now ("" when Temporal may run it)."""
        if not self._up or self.client is None:
            return "unavailable"
        if not self.breaker.allow():
            return "breaker_open"
        return ""

    def _fallback(self, reason: str, request_id: str) -> None:
        self._fallbacks.labels(reason).inc()
        log.warning("temporal_fallback", reason=reason, request_id=request_id)

    async def run_chat(self, ctx: RequestContext, direct: Next) -> None:
        reason = self._refusal()
        if reason:
            self._fallback(reason, ctx.request_id)
            await direct(ctx)
            return
        workflow_id = f"chat-{ctx.request_id}"
        try:
            handle = await self._start(ChatWorkflow.run, _chat_input(ctx), workflow_id, ctx, "chat")
        except Exception:
            self.breaker.failure()
            self._fallback("start_failed", ctx.request_id)
            await direct(ctx)
            return
        ctx.recorded_elsewhere = True  # the activity records the row, success or error
        try:
            outcome: ChatOutcome = await self._result(handle)
        except _Lost:
            self.breaker.failure()
            self._fallback("result_failed", ctx.request_id)
            outcome_or_none = await self._take_over(ctx.request_id, ChatOutcome)
            if outcome_or_none is None:
                ctx.recorded_elsewhere = False
                await direct(ctx)
                return
            outcome = outcome_or_none
        except asyncio.CancelledError:  # the client went away: so does its chat
            self._cancel_soon(handle)
            raise
        self.breaker.success()
        _apply_chat(ctx, outcome, self._services.snapshot.models.get(outcome.model_id))

    async def run_plan(self, ctx: RequestContext, budget_usd: float, direct: Callable[[], Awaitable[None]]) -> None:
        if ctx.plan_async:
            if self._refusal():
                raise TemporalUnavailable("Temporal is not reachable now: retry later, or send the plan without async")
            try:
                await self._start(PlanWorkflow.run, self._plan_input(ctx, budget_usd), f"plan-{ctx.request_id}", ctx)
            except Exception as exc:
                self.breaker.failure()
                raise TemporalUnavailable(f"Temporal did not accept the plan: {type(exc).__name__}") from None
            self.breaker.success()
            ctx.recorded_elsewhere = True  # the workflow records the plan and its steps
            return
        reason = self._refusal()
        if reason:
            self._fallback(reason, ctx.request_id)
            await direct()
            return
        try:
            handle = await self._start(
                PlanWorkflow.run, self._plan_input(ctx, budget_usd), f"plan-{ctx.request_id}", ctx, "plan"
            )
        except Exception:
            self.breaker.failure()
            self._fallback("start_failed", ctx.request_id)
            await direct()
            return
        ctx.recorded_elsewhere = True
        try:
            result: PlanResult = await self._result(handle)
        except _Lost:
            self.breaker.failure()
            self._fallback("result_failed", ctx.request_id)
            await self.cache.mark(abandoned_key(ctx.request_id))  # its remaining steps must not run later
            ctx.recorded_elsewhere = False
            await direct()
            return
        # A client that disconnects does not stop a durable plan: GET /v1/plans/{request id} has its result.
        self.breaker.success()
        ctx.plan_outcome, ctx.plan_steps, ctx.routing_reason = result.outcome, result.steps, result.routing_reason
        if result.error is not None:
            raise from_wire(result.error)

    def _plan_input(self, ctx: RequestContext, budget_usd: float) -> PlanInput:
        plan = ctx.plan
        assert plan is not None
        return PlanInput(
            origin=_origin(ctx),
            spec=plan,
            messages=list(ctx.request.messages),
            policy=ctx.policy,
            budget_usd=budget_usd,
            model_hint=ctx.request.model_hint,
            parameters=dict(ctx.request.parameters),
            step_timeout_secs=_timeout_secs(ctx),
        )

    async def _start(
        self, run: Any, job: Any, workflow_id: str, ctx: RequestContext, event_kind: str = "plan"
    ) -> WorkflowHandle[Any, Any]:
        client = self.client
        assert client is not None
        memo = {"api_key_id": ctx.api_key.id if ctx.api_key else "", "tenant_id": ctx.tenant_id}
        handle = await asyncio.wait_for(
            client.start_workflow(run, job, id=workflow_id, task_queue=self.task_queue, memo=memo),
            timeout=START_TIMEOUT,
        )
        self._services.events.publish("workflow_started", workflow_id=workflow_id, request_id=ctx.request_id)
        return handle

    async def _result(self, handle: WorkflowHandle[Any, Any]) -> Any:
        """The workflow's result; `_Lost` when Temporal goes away first. A workflow that failed (it should
        not: errors are outcomes) or was cancelled is the request's error, not a reason to run it again."""
        result = asyncio.ensure_future(handle.result())
        down = asyncio.ensure_future(self._down.wait())
        try:
            await asyncio.wait({result, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            down.cancel()
        if not result.done():
            result.cancel()
            raise _Lost
        try:
            return result.result()
        except WorkflowFailureError as exc:
            if isinstance(exc.cause, TemporalCancelled):
                raise RequestCancelled("the workflow was cancelled") from None
            raise UpstreamFailed(f"workflow {handle.id} failed: {exc.cause}", error_class="workflow") from None
        except RPCError as exc:
            raise _Lost from exc

    async def _take_over(self, request_id: str, kind: type[ChatOutcome]) -> ChatOutcome | None:
        """After Temporal was lost: the activity's outcome if it ran (or runs) here; else mark the request
        abandoned, so a late activity refuses it, and None (the caller serves it directly)."""
        joined = await self.cache.joined(request_id, kind)
        if joined is None:
            await self.cache.mark(abandoned_key(request_id))
        return joined

    def _cancel_soon(self, handle: WorkflowHandle[Any, Any]) -> None:
        async def cancel() -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(handle.cancel(), timeout=START_TIMEOUT)

        task = asyncio.ensure_future(cancel())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- visibility: admin and /v1/plans -------------------------------------------------------------------

    def _client(self) -> Client:
        if self.client is None or not self._up:
            raise TemporalUnavailable("Temporal is not reachable now; retry later")
        return self.client

    async def list_workflows(
        self, *, status: str | None, limit: int, page_token: bytes | None
    ) -> tuple[list[dict[str, Any]], bytes | None]:
        query = f"ExecutionStatus = '{STATUSES[status]}'" if status else None
        iterator = self._client().list_workflows(query, page_size=limit, next_page_token=page_token)
        try:
            await iterator.fetch_next_page()
        except RPCError as exc:
            raise TemporalUnavailable(f"Temporal could not list workflows: {exc.message}") from None
        return [_execution_view(e) for e in iterator.current_page], iterator.next_page_token or None

    async def describe(self, workflow_id: str) -> dict[str, Any]:
        description = await self._describe(workflow_id)
        view = _execution_view(description)
        view["memo"] = await description.memo()
        return view

    async def _describe(self, workflow_id: str) -> Any:
        try:
            return await self._client().get_workflow_handle(workflow_id).describe()
        except RPCError as exc:
            if exc.status.name == "NOT_FOUND":
                raise NotFound(f"no workflow {workflow_id!r}") from None
            raise TemporalUnavailable(f"describe error: {exc.message}") from None

    async def history(self, workflow_id: str) -> dict[str, Any]:
        client = self._client()
        try:
            history = await client.get_workflow_handle(workflow_id).fetch_history()
        except RPCError as exc:
            if exc.status.name == "NOT_FOUND":
                raise NotFound(f"no workflow {workflow_id!r}") from None
            raise TemporalUnavailable(f"history error: {exc.message}") from None
        return {"workflow_id": workflow_id, **await _history_view(client, history.events)}

    async def plan_status(self, plan_id: str, api_key_id: str) -> dict[str, Any]:
        """GET /v1/plans/{id}: 404 unless this key started the plan (no one learns another key's plan ids)."""
        workflow_id = f"plan-{plan_id}"
        description = await self._owned(workflow_id, api_key_id)
        client = self._client()
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        view = await _history_view(client, history.events)
        status = _PLAN_STATUS.get(description.status.name if description.status else "", "failed")
        body: dict[str, Any] = {"plan_id": plan_id, "status": status, "steps": view["steps"]}
        if status == "completed":
            result: PlanResult = await client.get_workflow_handle(workflow_id, result_type=PlanResult).result()
            if result.error is not None:
                body["status"] = "failed"
                body["error"] = from_wire(result.error).body(plan_id)["error"]
            else:
                assert result.outcome is not None
                body["result"] = envelope(result.outcome, result.steps, result.routing_reason)
        return body

    async def cancel_plan(self, plan_id: str, api_key_id: str) -> dict[str, Any]:
        workflow_id = f"plan-{plan_id}"
        description = await self._owned(workflow_id, api_key_id)
        if description.status != WorkflowExecutionStatus.RUNNING:
            status = _PLAN_STATUS.get(description.status.name if description.status else "", "failed")
            return {"plan_id": plan_id, "status": status, "cancelled": False}
        await self._client().get_workflow_handle(workflow_id).cancel()
        return {"plan_id": plan_id, "status": "cancelling", "cancelled": True}

    async def _owned(self, workflow_id: str, api_key_id: str) -> Any:
        try:
            description = await self._describe(workflow_id)
        except NotFound:
            raise NotFound("no such plan") from None
        memo = await description.memo()
        if not api_key_id or memo.get("api_key_id") != api_key_id:
            raise NotFound("no such plan")
        return description


_PLAN_STATUS = {
    "RUNNING": "running",
    "COMPLETED": "completed",
    "CANCELED": "cancelled",
    "FAILED": "failed",
    "TERMINATED": "failed",
    "TIMED_OUT": "failed",
}


def _origin(ctx: RequestContext) -> Origin:
    return Origin(
        request_id=ctx.request_id,
        tenant_id=ctx.tenant_id,
        api_key_id=ctx.api_key.id if ctx.api_key else "",
        presented_key=ctx.presented_key,
        client_ip=ctx.client_ip,
        client_request_id=ctx.client_request_id,
        scope=ctx.scope,
        endpoint=ctx.endpoint,
        received_at=time.time() - (time.perf_counter() - ctx.started_at),
    )


def _timeout_secs(ctx: RequestContext) -> float:
    """An activity's limit: the request's latency budget (or the default's ceiling), plus time to record."""
    return (ctx.policy.max_latency_ms or 300_000) / 1000 + 30.0


def _chat_input(ctx: RequestContext) -> ChatInput:
    request = ctx.request
    fmt = request.output_format
    return ChatInput(
        origin=_origin(ctx),
        messages=list(request.messages),
        policy=ctx.policy,
        model_hint=request.model_hint,
        estimated_input_tokens=request.estimated_input_tokens,
        parameters=dict(request.parameters),
        output_schema=request.output_schema,
        output_format=asdict(fmt) if fmt is not None else None,
        timeout_secs=_timeout_secs(ctx),
    )


def _apply_chat(ctx: RequestContext, outcome: ChatOutcome, model: ModelInfo | None) -> None:
    """The activity's answer, into the edge's context for the codec (the row is recorded already)."""
    ctx.attempts = list(outcome.attempts)
    if outcome.error is not None:
        raise from_wire(outcome.error)
    served = model if model is not None else ModelInfo(outcome.model_id, outcome.provider_id)
    ctx.result = ChatResult(outcome.body, outcome.usage, outcome.latency_ms, b"", outcome.format)
    ctx.served_by = Candidate(served, 0.0, outcome.cost_usd)
    ctx.cost_usd = outcome.cost_usd
    ctx.routing_reason = outcome.routing_reason
    ctx.alias_from = outcome.alias_from


def _execution_view(e: Any) -> dict[str, Any]:
    view: dict[str, Any] = {
        "workflow_id": e.id,
        "run_id": e.run_id,
        "type": e.workflow_type,
        "status": e.status.name if e.status else "UNKNOWN",
        "start_time": e.start_time.isoformat() if e.start_time else None,
    }
    if e.close_time is not None:
        view["close_time"] = e.close_time.isoformat()
        if e.start_time is not None:
            view["duration_ms"] = round((e.close_time - e.start_time).total_seconds() * 1000, 3)
    return view


async def _history_view(client: Client, events: Any) -> dict[str, Any]:
    """The raw events, each activity with its timing (and, for a step or a chat, its model and cost), and
    the plan steps completed (their outcomes, decoded)."""
    raw: list[dict[str, Any]] = []
    activities: dict[int, dict[str, Any]] = {}  # scheduled event id -> activity
    steps: list[dict[str, Any]] = []
    for event in events:
        when = event.event_time.ToDatetime()
        kind = _event_name(event.event_type)
        raw.append({"event_id": event.event_id, "event_type": kind, "timestamp": when.isoformat() + "Z"})
        if event.HasField("activity_task_scheduled_event_attributes"):
            attrs = event.activity_task_scheduled_event_attributes
            activities[event.event_id] = {
                "activity": attrs.activity_type.name,
                "activity_id": attrs.activity_id,
                "scheduled_at": when.isoformat() + "Z",
                "status": "scheduled",
                "_t0": when,
            }
            continue
        for field, status in _ACTIVITY_ENDS.items():
            if event.HasField(field):
                attrs = getattr(event, field)
                entry = activities.get(attrs.scheduled_event_id)
                if entry is None:
                    break
                if status == "started":
                    entry["attempt"] = attrs.attempt
                    entry["started_at"] = when.isoformat() + "Z"
                    entry["status"] = "started"
                    break
                entry["status"] = status
                entry["closed_at"] = when.isoformat() + "Z"
                entry["duration_ms"] = round((when - entry["_t0"]).total_seconds() * 1000, 3)
                if status == "completed" and attrs.result.payloads:
                    await _describe_outcome(client, entry, attrs.result.payloads, steps)
                break
    for entry in activities.values():
        entry.pop("_t0", None)
    return {"events": raw, "activities": list(activities.values()), "steps": steps}


_ACTIVITY_ENDS = {
    "activity_task_started_event_attributes": "started",
    "activity_task_completed_event_attributes": "completed",
    "activity_task_failed_event_attributes": "failed",
    "activity_task_timed_out_event_attributes": "timed_out",
    "activity_task_canceled_event_attributes": "cancelled",
}


async def _describe_outcome(client: Client, entry: dict[str, Any], payloads: Any, steps: list[dict[str, Any]]) -> None:
    kind = {"run_step": StepOutcome, "run_chat": ChatOutcome}.get(entry["activity"])
    if kind is None:
        return
    (outcome,) = await client.data_converter.decode(list(payloads), [kind])
    if isinstance(outcome, StepOutcome) and outcome.result is not None:
        step = outcome.result
        entry.update(request_id=step.request_id, model=step.model_id, provider=step.provider_id, cost_usd=step.cost_usd)
        steps.append(step.summary())
    elif isinstance(outcome, ChatOutcome) and outcome.error is None:
        entry.update(model=outcome.model_id, provider=outcome.provider_id, cost_usd=outcome.cost_usd)
    error = getattr(outcome, "error", None)
    if error is not None:
        entry["error"] = error.message


def _event_name(event_type: int) -> str:
    return EventType.Name(event_type).removeprefix("EVENT_TYPE_")
