"""Admin views of the routing engine: what each model looks like to the router right now, and which models a
provider says it serves (discovery). Both only read; discovery registers nothing.

GET /engine/models              every model (stored and vLLM-discovered) with its eligibility right now
GET /providers/{id}/discover    the provider's own model list, marking what is already registered
"""

from __future__ import annotations

import contextlib
from typing import Any

import aiohttp
import orjson
import structlog
from aiohttp import web

from adapters.errors import excerpt
from adapters.http import BodyTooLarge, read_capped
from adapters.registry import build_provider
from admin_ui.aliases import alias_view
from admin_ui.common import get_services
from admin_ui.params import int_param
from pipeline.errors import DiscoveryFailed, InvalidRequest, NotFound, VaultLocked
from pipeline.services import Services
from pipeline.types import ModelInfo, ProviderInfo
from stages.router import model_inputs

__all__ = ["discover_models", "engine_models"]

log = structlog.get_logger("tokenhub.admin")
DISCOVER_TIMEOUT = aiohttp.ClientTimeout(total=10)
_MAX_LIST_BYTES = 4 * 1024 * 1024  # a model list is KiBs; more is not one
_MAX_MODELS = 2000
_INT_FIELDS = ("context_length", "max_model_len", "context_window")


# --- engine view -----------------------------------------------------------------------------------
async def engine_models(request: web.Request) -> web.Response:
    services = get_services(request)
    limit = int_param(request, "limit", 1000, 1, 1000) or 1000
    offset = int_param(request, "offset", 0, 0, 10**9) or 0
    snapshot = services.snapshot
    aliases = sorted(snapshot.aliases.values(), key=lambda a: a.name)
    pointing: dict[str, list[str]] = {}
    for alias in aliases:
        for variant in alias.variants:
            pointing.setdefault(variant.model_id, []).append(alias.name)
    models = sorted(snapshot.models.values(), key=lambda m: m.id)
    items = [_engine_view(services, m, pointing.get(m.id, [])) for m in models[offset : offset + limit]]
    adapters = [
        {"id": a.id, "type": a.type, "health_endpoint": a.health_endpoint()}
        for a in sorted(services.adapters.values(), key=lambda a: a.id)
    ]
    return web.json_response(
        {
            "models": items,
            "total": len(models),
            "limit": limit,
            "offset": offset,
            "adapters": adapters,
            "aliases": [alias_view(a) for a in aliases],
        }
    )


def _engine_view(services: Services, model: ModelInfo, aliases: list[str]) -> dict[str, Any]:
    provider = services.providers.get(model.provider_id)
    health = services.health.snapshot().get(model.provider_id)  # read-only: `get` would create an entry
    unavailable = services.router.unavailable(model)
    return {
        "id": model.id,
        "provider_id": model.provider_id,
        "provider_type": provider.type if provider is not None else None,
        "kind": model.kind,
        "upstream_model": model.sent_as,
        "source": "store" if model.id in services.stored_snapshot.models else "discovered",
        "enabled": model.enabled,
        "weight": model.weight,
        "input_per_1k": model.input_per_1k,
        "output_per_1k": model.output_per_1k,
        "max_context_tokens": model.max_context_tokens,
        "eligible": unavailable is None,  # before the request's own budget, context and weight constraints
        "unavailable": unavailable,
        "reads": _reads(services, model),
        "health": {
            "state": health.state if health else "healthy",
            "breaker": services.health.breaker_state(model.provider_id),
            "avg_latency_ms": round(health.avg_latency_ms, 3) if health else 0.0,
            "error_rate": round(health.error_rate, 4) if health else 0.0,
        },
        "fallbacks": list(model.fallbacks),
        "aliases": aliases,
    }


def _reads(services: Services, model: ModelInfo) -> list[str]:
    """What routing lets the model read besides text: its capabilities, else its provider type's default."""
    adapter = services.adapters.get(model.provider_id)
    return sorted(model_inputs(model, adapter)) if adapter is not None else []


# --- discovery -------------------------------------------------------------------------------------
async def discover_models(request: web.Request) -> web.Response:
    provider_id = request.match_info["id"]
    services = get_services(request)
    provider = services.providers.get(provider_id)
    if provider is None:
        raise NotFound(f"provider {provider_id!r} not found")
    if provider.key_in_vault and not provider.api_key:
        raise VaultLocked(f"the vault is locked: provider {provider_id!r} keeps its key there; unlock it first")
    answer = await _fetch_model_list(services, provider)
    registered: dict[str, list[str]] = {}
    for model in services.stored_snapshot.models.values():
        if model.provider_id == provider_id:
            registered.setdefault(model.sent_as, []).append(model.id)
    models = []
    for entry in _entries(answer):
        as_ids = sorted(registered.get(entry["id"], []))
        models.append({**entry, "registered": bool(as_ids), "registered_as": as_ids})
    log.info("provider_models_discovered", provider_id=provider_id, models=len(models))
    return web.json_response(
        {
            "provider_id": provider_id,
            "provider_type": provider.type or "openai",
            "models": models,
            "total": len(models),
            "registered": sum(1 for m in models if m["registered"]),
            "register_with": 'POST /admin/v1/models {"id", "provider_id", "upstream_model": <discovered id>, ...}',
        }
    )


async def _fetch_model_list(services: Services, provider: ProviderInfo) -> Any:
    """GET <base>/v1/models with the provider's own auth (Bearer, or x-api-key + anthropic-version).
    vLLM: each endpoint of the deployment in turn until one answers."""
    adapter = services.adapters.get(provider.id)
    if adapter is None:  # a disabled provider can still be asked what it serves
        try:
            adapter = build_provider(provider, services.http, services.retry)
        except ValueError as exc:
            raise InvalidRequest(f"provider {provider.id!r}: {exc}", field="id") from None
    headers = adapter.headers()
    failure: DiscoveryFailed | None = None
    for url in adapter.model_list_urls():
        try:
            return await _get_json(services, url, headers, provider)
        except DiscoveryFailed as exc:
            failure = exc
    assert failure is not None
    raise failure


async def _get_json(services: Services, url: str, headers: dict[str, str], provider: ProviderInfo) -> Any:
    secret = provider.api_key
    raw: bytes | None = None  # None: the body was over the size limit
    try:
        async with services.http.session.get(url, headers=headers, timeout=DISCOVER_TIMEOUT) as resp:
            status = resp.status
            with contextlib.suppress(BodyTooLarge):
                raw = await read_capped(resp, _MAX_LIST_BYTES)
    except TimeoutError:
        raise DiscoveryFailed(f"provider {provider.id!r} did not answer within 10 s") from None
    except (aiohttp.ClientError, OSError) as exc:
        detail = excerpt(str(exc) or type(exc).__name__, secret)
        raise DiscoveryFailed(f"provider {provider.id!r} is unreachable: {detail}") from None
    if status != 200:
        body = excerpt(raw.decode(errors="replace"), secret) if raw is not None else "(an oversized body)"
        raise DiscoveryFailed(f"provider {provider.id!r} returned HTTP {status}: {body}", upstream_status=status)
    if raw is None:
        raise DiscoveryFailed(f"provider {provider.id!r} sent a model list larger than {_MAX_LIST_BYTES} bytes")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise DiscoveryFailed(f"provider {provider.id!r} answered with something that is not JSON") from None


def _entries(answer: Any) -> list[dict[str, Any]]:
    """OpenAI/vLLM `{"data": [{"id", "owned_by", "max_model_len"?}]}`, Anthropic `{"data": [{"id",
    "display_name"}]}`, or a bare list; entries without a string id are skipped."""
    data = answer.get("data") if isinstance(answer, dict) else answer
    if not isinstance(data, list):
        raise DiscoveryFailed("the provider's answer holds no model list ('data')")
    found: dict[str, dict[str, Any]] = {}
    for item in data[:_MAX_MODELS]:
        model_id = item.get("id") if isinstance(item, dict) else None
        if not isinstance(model_id, str) or not model_id.strip() or len(model_id) > 256 or model_id in found:
            continue
        entry: dict[str, Any] = {"id": model_id}
        for name in ("owned_by", "display_name"):
            if isinstance(value := item.get(name), str):
                entry[name] = value[:256]
        for name in _INT_FIELDS:
            value = item.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                entry[name] = value
        found[model_id] = entry
    return list(found.values())
