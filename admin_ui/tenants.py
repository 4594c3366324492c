"""Admin API for tenants and their pipelines: GET/POST /tenants, GET/PUT/DELETE /tenants/{id}/pipeline and
GET /pipelines/stages. A pipeline is validated (stage names and options) when it is saved, never at request
time; saving swaps the tenant's chain for its next request."""

from __future__ import annotations

from typing import Annotated, Any

from aiohttp import web
from pydantic import Field

from admin_ui.common import Body, IdStr, commit, get_pipelines, get_services, read_json, read_model
from admin_ui.params import page
from pipeline.errors import Conflict, InvalidRequest, NotFound, PipelineConfigError

__all__ = ["create_tenant", "delete_pipeline", "get_pipeline", "list_stages", "list_tenants", "put_pipeline"]


class InvalidPipeline(InvalidRequest):
    """A 400 that names the step at fault: ``field`` is ``stages[i]`` and the body carries ``stage_index`` and
    ``stage`` (as submitted), so the pipeline editor shows the error next to that step; a problem of the
    whole pipeline (a required stage missing) has ``field`` ``stages`` and no index."""

    def __init__(self, exc: PipelineConfigError) -> None:
        field = "stages" if exc.index is None else f"stages[{exc.index}]"
        super().__init__(f"invalid pipeline: {exc}", field=field)
        self.index = exc.index
        self.stage = exc.stage

    def extra(self) -> dict[str, Any]:
        if self.index is None:
            return {}
        return {"stage_index": self.index, "stage": self.stage}


class TenantIn(Body):
    id: IdStr
    name: Annotated[str, Field(min_length=1, max_length=200)]


async def list_tenants(request: web.Request) -> web.Response:
    services = get_services(request)
    tenants = await services.config.call(services.config.list_tenants)
    custom = services.snapshot.pipelines
    shown, paging = page(request, tenants)
    items = [{"id": t.id, "name": t.name, "created_at": t.created_at, "custom_pipeline": t.id in custom} for t in shown]
    return web.json_response({"items": items, **paging})


async def create_tenant(request: web.Request) -> web.Response:
    body = await read_model(request, TenantIn)
    services = get_services(request)
    if await services.config.call(services.config.get_tenant, body.id) is not None:
        raise Conflict(f"tenant {body.id!r} already exists")
    tenant = await commit(request, services.config.create_tenant, body.id, body.name)
    return web.json_response({"ok": True, "id": tenant.id, "name": tenant.name}, status=201)


async def get_pipeline(request: web.Request) -> web.Response:
    tenant_id = await _existing_tenant(request)
    definition, custom = get_pipelines(request).definition_for(tenant_id)
    return web.json_response({"tenant_id": tenant_id, "custom": custom, "stages": definition})


async def put_pipeline(request: web.Request) -> web.Response:
    tenant_id = await _existing_tenant(request)
    data = await read_json(request)
    try:
        steps = get_pipelines(request).validate(data)
    except PipelineConfigError as exc:
        raise InvalidPipeline(exc) from None
    definition = [step.as_data() for step in steps]
    services = get_services(request)
    await commit(request, services.config.set_pipeline, tenant_id, definition)
    return web.json_response({"ok": True, "tenant_id": tenant_id, "custom": True, "stages": definition})


async def delete_pipeline(request: web.Request) -> web.Response:
    tenant_id = await _existing_tenant(request)
    services = get_services(request)
    deleted = await commit(request, services.config.delete_pipeline, tenant_id)
    return web.json_response({"ok": True, "tenant_id": tenant_id, "deleted": deleted})


async def list_stages(request: web.Request) -> web.Response:
    tenant_pipelines = get_pipelines(request)
    default = [step.as_data() for step in tenant_pipelines.default_steps]
    return web.json_response({"stages": tenant_pipelines.registry.describe(), "default_pipeline": default})


async def _existing_tenant(request: web.Request) -> str:
    tenant_id = request.match_info["id"]
    services = get_services(request)
    if await services.config.call(services.config.get_tenant, tenant_id) is None:
        raise NotFound(f"tenant {tenant_id!r} not found")
    return tenant_id
