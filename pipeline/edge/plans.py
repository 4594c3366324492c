"""GET and DELETE /v1/plans/{id}: follow or cancel an asynchronous (or any durable) plan.

The caller's key is checked as for POST /v1/plan (rate limit, key in force, `plan` scope); a plan is visible
only to the key that started it: any other key gets the same 404 as for an id that does not exist.
"""

from __future__ import annotations

import re

from aiohttp import web

from pipeline.edge.context import BeforeBody, new_context
from pipeline.errors import NotFound, TokenHubError
from pipeline.openapi import Operation
from pipeline.services import Services
from pipeline.tenants import TenantPipelines
from pipeline.web import error_response, trusted_networks

__all__ = ["PlansEndpoint"]

_PLAN_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class PlansEndpoint:
    def __init__(self, services: Services, pipelines: TenantPipelines) -> None:
        self._services = services
        self._pipelines = pipelines
        self._trusted = trusted_networks(services)
        self._before_body = BeforeBody()

    def operations(self) -> dict[object, Operation]:
        """What /openapi.json says about the two routes below."""
        return {
            self.get: Operation(
                "An asynchronous plan's status, steps so far and result", "client API", security="api_key"
            ),
            self.delete: Operation("Cancel an asynchronous plan", "client API", security="api_key"),
        }

    async def get(self, request: web.Request) -> web.Response:
        return await self._handle(request, cancel=False)

    async def delete(self, request: web.Request) -> web.Response:
        return await self._handle(request, cancel=True)

    async def _handle(self, request: web.Request, *, cancel: bool) -> web.Response:
        services = self._services
        ctx = new_context(request, services, self._trusted, scope="plan", endpoint="plan")
        try:
            self._before_body(ctx, self._pipelines.chain_for(ctx.tenant_id))
            plan_id = request.match_info["plan_id"]
            if not _PLAN_ID.match(plan_id):
                raise NotFound("no such plan")
            key_id = ctx.api_key.id if ctx.api_key else ""
            temporal = services.temporal
            body = await (temporal.cancel_plan if cancel else temporal.plan_status)(plan_id, key_id)
        except TokenHubError as exc:
            return error_response(exc, ctx.request_id)
        return web.json_response(body)
