"""Admin views of the routing engine: what each model looks like to the router right now, and which models a
provider says it serves (discovery). Both only read; discovery registers nothing.

GET /engine/models              every model (stored and vLLM-discovered) with its eligibility right now
GET /providers/{id}/discover    the provider's own model list, marking what is already registered
"""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web

from adapters.model_list import fetch_model_list
from adapters.registry import build_provider
from admin_ui.aliases import alias_view
from admin_ui.common import get_services
from admin_ui.params import int_param
from pipeline.errors import InvalidRequest, NotFound, VaultLocked
from pipeline.services import Services
from pipeline.types import ModelInfo, ProviderInfo
from stages.router import model_inputs

__all__ = ["discover_models", "engine_models"]

log = structlog.get_logger("tokenhub.admin")


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
    for entry in answer:
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


async def _fetch_model_list(services: Services, provider: ProviderInfo) -> list[dict[str, Any]]:
    adapter = services.adapters.get(provider.id)
    if adapter is None:  # a disabled provider can still be asked what it serves
        try:
            adapter = build_provider(provider, services.http, services.retry)
        except ValueError as exc:
            raise InvalidRequest(f"provider {provider.id!r}: {exc}", field="id") from None
    return await fetch_model_list(services.http, adapter, secret=provider.api_key)
