"""Unrouted endpoints: readiness, the model list, Prometheus metrics."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pipeline.web import SERVICES

__all__ = ["healthz", "list_models", "metrics"]


async def healthz(request: web.Request) -> web.Response:
    status = request.app[SERVICES].readiness()
    return web.json_response(status, status=200 if status["status"] == "ok" else 503)


async def list_models(request: web.Request) -> web.Response:
    """GET /v1/models, OpenAI's list shape: every enabled model of a configured provider (no auth, per spec)."""
    services = request.app[SERVICES]
    data = []
    for model in sorted(services.snapshot.models.values(), key=lambda m: m.id):
        if not model.enabled or model.provider_id not in services.adapters:
            continue
        entry: dict[str, Any] = {"id": model.id, "object": "model", "created": 0, "owned_by": model.provider_id}
        if model.max_context_tokens:
            entry["context_length"] = entry["max_model_len"] = model.max_context_tokens
        data.append(entry)
    # Enabled aliases are names a client may send as `model` too (owned_by "tokenhub": they are ours).
    for alias in sorted(services.snapshot.aliases.values(), key=lambda a: a.name):
        if alias.enabled:
            data.append({"id": alias.name, "object": "model", "created": 0, "owned_by": "tokenhub"})
    return web.json_response({"object": "list", "data": data})


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[SERVICES].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
