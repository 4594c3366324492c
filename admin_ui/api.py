"""The admin JSON API under /admin/v1 (Bearer admin token). Every write commits to SQLite first, then
swaps the request path's snapshot, so a change applies to the next request without a restart."""

from __future__ import annotations

import dataclasses
import hmac
import json
import re
import sqlite3
from typing import Annotated, Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapters.base import normalize_base_url
from admin_ui import observability_api
from pipeline.errors import Conflict, InvalidRequest, NotFound, PipelineConfigError, Unauthorized, VaultLocked
from pipeline.modes import OptionalMode
from pipeline.services import Services
from pipeline.types import ModelInfo, ProviderInfo
from pipeline.web import PIPELINES, SERVICES, Handler, read_body
from store.config_store import RoutingDefaults
from store.vault import VaultLockedError

M = TypeVar("M", bound=BaseModel)
ADMIN_PREFIX = "/admin/v1"
ADMIN_TOKEN: web.AppKey[str] = web.AppKey("admin_token", str)
IdStr = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$")]
# The name a provider knows a model by: anything without whitespace ("" = the TokenHub id).
UpstreamName = Annotated[str, Field(max_length=256, pattern=r"^\S*$")]
FallbackIds = Annotated[list[IdStr], Field(max_length=16)]
Scope = Literal["chat", "plan", "embeddings"]
ProviderType = Literal["openai", "anthropic", "vllm"]
ModelKind = Literal["chat", "embedding"]
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


@web.middleware
async def admin_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    auth = request.headers.get("Authorization", "")
    if not auth[:7].lower() == "bearer ":
        raise Unauthorized("missing admin token: send 'Authorization: Bearer <TOKENHUB_ADMIN_TOKEN>'")
    if not hmac.compare_digest(auth[7:].strip().encode(), request.config_dict[ADMIN_TOKEN].encode()):
        raise Unauthorized("invalid admin token")
    return await handler(request)


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class ProviderIn(_Body):
    id: IdStr
    type: ProviderType = "openai"
    base_url: Annotated[str, Field(pattern=r"^https?://[^\s/]+")]
    enabled: bool = True
    api_key: str | None = Field(None, repr=False)


class ProviderPatch(_Body):
    type: ProviderType | None = None
    base_url: Annotated[str, Field(pattern=r"^https?://[^\s/]+")] | None = None
    enabled: bool | None = None
    api_key: str | None = Field(None, repr=False)


class ModelIn(_Body):
    id: IdStr
    provider_id: IdStr
    weight: Annotated[int, Field(ge=0, le=10)] = 5
    max_context_tokens: Annotated[int, Field(ge=0)] = 0
    max_output_tokens: Annotated[int, Field(ge=0)] = 0
    input_per_1k: Annotated[float, Field(ge=0)] = 0.0
    output_per_1k: Annotated[float, Field(ge=0)] = 0.0
    enabled: bool = True
    kind: ModelKind = "chat"
    upstream_model: UpstreamName = ""
    fallbacks: FallbackIds = Field(default_factory=list)


class ModelPatch(_Body):
    weight: Annotated[int, Field(ge=0, le=10)] | None = None
    max_context_tokens: Annotated[int, Field(ge=0)] | None = None
    max_output_tokens: Annotated[int, Field(ge=0)] | None = None
    input_per_1k: Annotated[float, Field(ge=0)] | None = None
    output_per_1k: Annotated[float, Field(ge=0)] | None = None
    enabled: bool | None = None
    kind: ModelKind | None = None
    upstream_model: UpstreamName | None = None
    fallbacks: FallbackIds | None = None


class RoutingIn(_Body):
    default_mode: OptionalMode = ""
    default_max_budget_usd: Annotated[float, Field(ge=0, le=100)] = 0.0
    default_max_latency_ms: Annotated[int, Field(ge=0, le=300_000)] = 0


class TenantIn(_Body):
    id: IdStr
    name: Annotated[str, Field(min_length=1, max_length=200)]


async def read_model(request: web.Request, model: type[M]) -> M:
    raw = await read_body(
        request,
        request.config_dict[SERVICES].settings.max_body_bytes,
        max_depth=request.config_dict[SERVICES].settings.max_json_depth,
    )
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        if err["type"] == "json_invalid":
            raise InvalidRequest(f"malformed JSON: {err['ctx'].get('error', '')}", field="body") from None
        field = ".".join(str(p) for p in err["loc"]) or "body"
        raise InvalidRequest(f"{field}: {err['msg']}", field=field) from None


def parse_duration(text: str) -> float:
    """Go-style durations: '720h', '1h30m', '90s', '7d'."""
    text = text.strip()
    if not text or _DURATION.sub("", text):
        raise InvalidRequest("expires_in must be a duration like '720h', '1h30m' or '30d'", field="expires_in")
    seconds = sum(float(n) * _UNIT_SECS[unit] for n, unit in _DURATION.findall(text))
    if seconds <= 0:
        raise InvalidRequest("expires_in must be positive", field="expires_in")
    return seconds


def _services(request: web.Request) -> Services:
    return request.config_dict[SERVICES]


async def _commit(request: web.Request, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run one store write, then make it visible to the request path."""
    services = _services(request)
    try:
        result = await services.config.call(fn, *args, **kwargs)
    except sqlite3.IntegrityError as exc:
        raise Conflict(f"conflicts with existing data: {exc}") from None
    except VaultLockedError:  # a provider key goes into the vault, which is locked: nothing was written
        raise VaultLocked(
            "the vault is locked: unlock it (POST /admin/v1/vault/unlock) to store a provider key"
        ) from None
    await services.reload_config()
    request.config_dict[PIPELINES].refresh()
    return result


# --- providers -------------------------------------------------------------------------------------
async def list_providers(request: web.Request) -> web.Response:
    services = _services(request)
    stored = await services.config.call(services.config.list_providers)
    env = services.env_providers
    items = [
        {**p, "has_api_key": True, "source": "env"} if p["id"] in env else {**p, "source": "store"} for p in stored
    ]
    return web.json_response({"items": items, "total": len(items)})


async def create_provider(request: web.Request) -> web.Response:
    body = await read_model(request, ProviderIn)
    provider = ProviderInfo(body.id, body.type, normalize_base_url(body.base_url), body.enabled)
    services = _services(request)
    await _commit(request, services.config.upsert_provider, provider, api_key=body.api_key)
    return web.json_response({"ok": True, "provider": _provider_view(provider)}, status=201)


async def patch_provider(request: web.Request) -> web.Response:
    provider_id = request.match_info["id"]
    body = await read_model(request, ProviderPatch)
    services = _services(request)
    current = await services.config.call(services.config.get_provider, provider_id)
    if current is None:
        raise NotFound(f"provider {provider_id!r} not found")
    updated = ProviderInfo(
        provider_id,
        body.type or current.type,
        normalize_base_url(body.base_url) if body.base_url else current.base_url,
        current.enabled if body.enabled is None else body.enabled,
    )
    await _commit(request, services.config.upsert_provider, updated, api_key=body.api_key)
    return web.json_response({"ok": True, "provider": _provider_view(updated)})


async def delete_provider(request: web.Request) -> web.Response:
    services = _services(request)
    deleted = await _commit(request, services.config.delete_provider, request.match_info["id"])
    return web.json_response({"ok": True, "deleted": deleted})


def _provider_view(p: ProviderInfo) -> dict[str, Any]:
    return {"id": p.id, "type": p.type, "base_url": p.base_url, "enabled": p.enabled}


# --- models ----------------------------------------------------------------------------------------
async def list_models(request: web.Request) -> web.Response:
    services = _services(request)
    models = await services.config.call(services.config.list_models)
    items = [{**_model_view(m), "routable": m.enabled and m.provider_id in services.adapters} for m in models]
    return web.json_response({"items": items, "total": len(items)})


async def create_model(request: web.Request) -> web.Response:
    body = await read_model(request, ModelIn)
    services = _services(request)
    await _require_provider(services, body.provider_id)
    model = ModelInfo(**{**body.model_dump(), "fallbacks": tuple(body.fallbacks)})
    _check_kind(services, model)
    _check_model_names(services, model)
    await _commit(request, services.config.upsert_model, model)
    return web.json_response({"ok": True, "model": _model_view(model)}, status=201)


async def patch_model(request: web.Request) -> web.Response:
    model_id = request.match_info["id"]
    body = await read_model(request, ModelPatch)
    services = _services(request)
    current = await services.config.call(services.config.get_model, model_id)
    if current is None:
        raise NotFound(f"model {model_id!r} not found")
    changes = body.model_dump(exclude_none=True)
    if "fallbacks" in changes:
        changes["fallbacks"] = tuple(changes["fallbacks"])
    updated = dataclasses.replace(current, **changes)
    _check_kind(services, updated)
    _check_model_names(services, updated)
    await _commit(request, services.config.upsert_model, updated)
    return web.json_response({"ok": True, "model": _model_view(updated)})


async def delete_model(request: web.Request) -> web.Response:
    services = _services(request)
    deleted = await _commit(request, services.config.delete_model, request.match_info["id"])
    return web.json_response({"ok": True, "deleted": deleted})


async def _require_provider(services: Services, provider_id: str) -> None:
    if await services.config.call(services.config.get_provider, provider_id) is None:
        raise InvalidRequest(f"provider {provider_id!r} does not exist; create it first", field="provider_id")


def _check_kind(services: Services, model: ModelInfo) -> None:
    """An embedding model on a provider whose adapter cannot embed (Anthropic) could never be served."""
    adapter = services.adapters.get(model.provider_id)
    if model.kind == "embedding" and adapter is not None and not hasattr(adapter, "embed"):
        raise InvalidRequest(
            f"provider {model.provider_id!r} ({adapter.type}) does not serve embeddings; kind 'embedding' needs an"
            " openai or vllm provider",
            field="kind",
        )


def _check_model_names(services: Services, model: ModelInfo) -> None:
    """The id must not shadow an alias; fallbacks must be other registered models of the same kind."""
    snapshot = services.snapshot
    if model.id in snapshot.aliases:
        raise Conflict(f"an alias named {model.id!r} exists; delete or rename it first")
    if len(set(model.fallbacks)) != len(model.fallbacks):
        raise InvalidRequest("fallbacks: a model may appear only once", field="fallbacks")
    for fallback in model.fallbacks:
        other = snapshot.models.get(fallback)
        if fallback == model.id:
            raise InvalidRequest("fallbacks: a model cannot be its own fallback", field="fallbacks")
        if other is None:
            raise InvalidRequest(f"fallbacks: model {fallback!r} is not registered", field="fallbacks")
        if other.kind != model.kind:
            raise InvalidRequest(
                f"fallbacks: {fallback!r} is of kind {other.kind}, not {model.kind}", field="fallbacks"
            )


def _model_view(m: ModelInfo) -> dict[str, Any]:
    return {
        "id": m.id,
        "provider_id": m.provider_id,
        "weight": m.weight,
        "max_context_tokens": m.max_context_tokens,
        "max_output_tokens": m.max_output_tokens,
        "input_per_1k": m.input_per_1k,
        "output_per_1k": m.output_per_1k,
        "enabled": m.enabled,
        "kind": m.kind,
        "upstream_model": m.sent_as,  # what the provider is sent (the id unless set)
        "fallbacks": list(m.fallbacks),
    }


# --- routing defaults ------------------------------------------------------------------------------
async def get_routing(request: web.Request) -> web.Response:
    services = _services(request)
    stored = services.snapshot.routing
    settings = services.settings
    return web.json_response(
        {
            "default_mode": stored.mode,
            "default_max_budget_usd": stored.max_budget_usd,
            "default_max_latency_ms": stored.max_latency_ms,
            "effective": {
                "mode": stored.mode or settings.default_mode,
                "max_budget_usd": stored.max_budget_usd or settings.default_max_budget_usd,
                "max_latency_ms": stored.max_latency_ms or settings.default_max_latency_ms,
            },
        }
    )


async def put_routing(request: web.Request) -> web.Response:
    body = await read_model(request, RoutingIn)
    services = _services(request)
    defaults = RoutingDefaults(body.default_mode, body.default_max_budget_usd, body.default_max_latency_ms)
    await _commit(request, services.config.set_routing, defaults)
    return await get_routing(request)


# --- API keys: admin_ui/apikeys_api.py ----------------------------------------------------------


# --- tenants and pipelines -------------------------------------------------------------------------
async def list_tenants(request: web.Request) -> web.Response:
    services = _services(request)
    tenants = await services.config.call(services.config.list_tenants)
    pipelines = services.snapshot.pipelines
    items = [
        {"id": t.id, "name": t.name, "created_at": t.created_at, "custom_pipeline": t.id in pipelines} for t in tenants
    ]
    return web.json_response({"items": items, "total": len(items)})


async def create_tenant(request: web.Request) -> web.Response:
    body = await read_model(request, TenantIn)
    services = _services(request)
    if await services.config.call(services.config.get_tenant, body.id) is not None:
        raise Conflict(f"tenant {body.id!r} already exists")
    tenant = await _commit(request, services.config.create_tenant, body.id, body.name)
    return web.json_response({"ok": True, "id": tenant.id, "name": tenant.name}, status=201)


async def get_pipeline(request: web.Request) -> web.Response:
    tenant_id = await _existing_tenant(request)
    definition, custom = request.config_dict[PIPELINES].definition_for(tenant_id)
    return web.json_response({"tenant_id": tenant_id, "custom": custom, "stages": definition})


async def put_pipeline(request: web.Request) -> web.Response:
    tenant_id = await _existing_tenant(request)
    raw = await read_body(
        request, _services(request).settings.max_body_bytes, max_depth=_services(request).settings.max_json_depth
    )
    try:
        data = json.loads(raw or b"null")
        steps = request.config_dict[PIPELINES].validate(data)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"malformed JSON: {exc}", field="body") from None
    except PipelineConfigError as exc:
        raise InvalidRequest(f"invalid pipeline: {exc}", field="stages") from None
    definition = [step.as_data() for step in steps]
    services = _services(request)
    await _commit(request, services.config.set_pipeline, tenant_id, definition)
    return web.json_response({"ok": True, "tenant_id": tenant_id, "custom": True, "stages": definition})


async def delete_pipeline(request: web.Request) -> web.Response:
    tenant_id = await _existing_tenant(request)
    services = _services(request)
    deleted = await _commit(request, services.config.delete_pipeline, tenant_id)
    return web.json_response({"ok": True, "tenant_id": tenant_id, "deleted": deleted})


async def list_stages(request: web.Request) -> web.Response:
    pipelines = request.config_dict[PIPELINES]
    default = [step.as_data() for step in pipelines.default_steps]
    return web.json_response({"stages": pipelines.registry.describe(), "default_pipeline": default})


async def _existing_tenant(request: web.Request) -> str:
    tenant_id = request.match_info["id"]
    services = _services(request)
    if await services.config.call(services.config.get_tenant, tenant_id) is None:
        raise NotFound(f"tenant {tenant_id!r} not found")
    return tenant_id


# --- observability ---------------------------------------------------------------------------------
# The request log, stats, time series, analyst queries and events: admin_ui/observability_api.py.
async def provider_health(request: web.Request) -> web.Response:
    services = _services(request)
    providers = [
        {
            "provider_id": provider_id,
            "state": h.state,
            "total_requests": h.total_requests,
            "total_errors": h.total_errors,
            "consec_errors": h.consec_errors,
            "avg_latency_ms": round(h.avg_latency_ms, 3),
            "last_error": h.last_error,
            "unavailable": services.health.unavailable_reason(provider_id),
            "breaker": services.health.breaker_state(provider_id),
            "error_rate": round(h.error_rate, 4),
        }
        for provider_id, h in sorted(services.health.snapshot().items())
    ]
    return web.json_response({"providers": providers})


def admin_app() -> web.Application:
    """The admin API as a sub-application mounted at /admin/v1: its auth middleware never runs on the
    request path of /v1/*."""
    from admin_ui import aliases_api, apikeys_api, engine_api, learning_api, security_api  # built on these helpers

    app = web.Application(
        middlewares=[
            *security_api.BEFORE_AUTH,
            admin_auth,
            *security_api.AFTER_AUTH,
            observability_api.publish_admin_actions,
        ]
    )
    app.router.add_routes(
        [
            web.get("/providers", list_providers),
            web.post("/providers", create_provider),
            web.patch("/providers/{id}", patch_provider),
            web.delete("/providers/{id}", delete_provider),
            web.get("/models", list_models),
            web.post("/models", create_model),
            web.patch("/models/{id:.+}", patch_model),
            web.delete("/models/{id:.+}", delete_model),
            web.get("/routing-config", get_routing),
            web.put("/routing-config", put_routing),
            web.get("/tenants", list_tenants),
            web.post("/tenants", create_tenant),
            web.get("/tenants/{id}/pipeline", get_pipeline),
            web.put("/tenants/{id}/pipeline", put_pipeline),
            web.delete("/tenants/{id}/pipeline", delete_pipeline),
            web.get("/pipelines/stages", list_stages),
            web.get("/health", provider_health),
        ]
    )
    observability_api.add_routes(app)
    apikeys_api.add_routes(app)
    aliases_api.add_routes(app)
    engine_api.add_routes(app)
    learning_api.add_routes(app)
    security_api.add_routes(app)
    return app
