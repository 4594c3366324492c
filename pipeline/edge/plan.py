"""POST /v1/plan: decode, run the tenant's pipeline (its orchestrate stage runs the steps), answer with the
envelope, or, with `request.stream`, stream each step as it happens, or, with `"async": true` (durable
orchestration on), start the plan's workflow and answer 202 with where to follow it (pipeline/edge/plans.py)."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from pipeline.context import RequestContext
from pipeline.durability import TEMPORAL_REQUIRED
from pipeline.edge.codec import SseWriter
from pipeline.edge.context import BeforeBody, new_context
from pipeline.edge.idempotency import Idempotency, record_replay
from pipeline.edge.plan_codec import PlanBody, decode_plan, plan_envelope
from pipeline.errors import ClientDisconnected, InvalidRequest, PlanPipelineMissing, TokenHubError
from pipeline.openapi import Operation
from pipeline.services import Services
from pipeline.stage import Next
from pipeline.tenants import TenantPipelines
from pipeline.web import error_response, id_headers, read_body, trusted_networks

__all__ = ["PlanEndpoint"]


class PlanEndpoint:
    operation = Operation(
        "Several models on one task (adversarial, vote, refine); request.stream streams each step",
        "client API",
        body=PlanBody,
        security="api_key",
        media=("application/json", "text/event-stream"),
    )

    def __init__(self, services: Services, pipelines: TenantPipelines) -> None:
        self._services = services
        self._pipelines = pipelines
        self._trusted = trusted_networks(services)
        self._before_body = BeforeBody()
        self._idempotency = Idempotency(services)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        services = self._services
        ctx = new_context(request, services, self._trusted, scope="plan", endpoint="plan")
        chain = self._pipelines.chain_for(ctx.tenant_id)
        try:
            self._before_body(ctx, chain)
            raw = await read_body(request, services.settings.max_body_bytes, max_depth=services.settings.max_json_depth)
            ctx.request, ctx.policy, ctx.plan, ctx.plan_async = decode_plan(
                raw, max_messages=services.settings.max_messages
            )
            if ctx.plan_async:
                _check_async(services, ctx)
            if not self._pipelines.has_stage(ctx.tenant_id, "orchestrate"):
                raise PlanPipelineMissing(
                    f"tenant {ctx.tenant_id!r} has a custom pipeline without the 'orchestrate' stage; "
                    "add it (after 'directives') to serve /v1/plan"
                )
        except TokenHubError as exc:
            ctx.error = exc
            services.recorder.emit(ctx)
            return error_response(exc, ctx.request_id)
        try:
            return await self._idempotency.run(
                request,
                ctx.api_key.id if ctx.api_key else "",
                raw,
                "plan",
                lambda: self._serve(request, ctx, chain),
                lambda stored: record_replay(services, ctx, stored),
            )
        except TokenHubError as exc:  # the Idempotency-Key refused (400, 409, 422): nothing ran
            ctx.error = exc
            services.recorder.emit(ctx)
            return error_response(exc, ctx.request_id)

    async def _serve(self, request: web.Request, ctx: RequestContext, chain: Next) -> web.StreamResponse:
        if ctx.request.stream:
            return await self._stream(request, ctx, chain)
        try:
            await chain(ctx)
        except TokenHubError as exc:
            return error_response(exc, ctx.request_id)
        if ctx.plan_async:
            status_url = f"/v1/plans/{ctx.request_id}"
            return web.json_response(
                {"plan_id": ctx.request_id, "status": "running", "status_url": status_url},
                status=202,
                headers={"Location": status_url},
            )
        return web.json_response(plan_envelope(ctx), dumps=_dumps)

    async def _stream(self, request: web.Request, ctx: RequestContext, chain: Next) -> web.StreamResponse:
        """Step events as they happen: step_started, step_completed, then plan (the envelope) or error."""
        writer = SseWriter(request)
        writer.response.headers.update(id_headers(request))

        async def send(event: str, data: dict[str, Any]) -> None:
            if not writer.opened:
                await writer.begin()
            await writer.write(_event(event, data))

        ctx.plan_events = send
        try:
            await chain(ctx)
        except ClientDisconnected:
            return writer.response if writer.opened else web.Response(status=499)
        except TokenHubError as exc:
            if not writer.opened:
                return error_response(exc, ctx.request_id)
            await writer.end(_event("error", exc.body(ctx.request_id)), complete=False)
            return writer.response
        await send("plan", plan_envelope(ctx))
        await writer.end(b"")
        return writer.response


def _check_async(services: Services, ctx: RequestContext) -> None:
    if not services.temporal.enabled:
        raise InvalidRequest(f"async plans: {TEMPORAL_REQUIRED}; or send the plan without async", field="async")
    if ctx.request.stream:
        raise InvalidRequest("a plan is either async or streamed, not both", field="async")


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()
