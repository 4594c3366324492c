"""Unrouted endpoints: readiness, the model list, Prometheus metrics."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import SkipJsonSchema

from pipeline.openapi import Operation
from pipeline.web import SERVICES

__all__ = ["STATUS_OPERATIONS", "Readiness", "healthz", "list_models", "metrics"]


class Readiness(BaseModel):
    """GET /healthz's body; `reason` and `fix` say what is missing when it is 503."""

    model_config = ConfigDict(extra="allow")
    status: str
    reason: str | SkipJsonSchema[None] = None
    fix: str | SkipJsonSchema[None] = None


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
    body = await request.app[SERVICES].worker_metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


STATUS_OPERATIONS = {
    healthz: Operation(
        "Readiness: 200 when a model can be routed",
        "status",
        security="none",
        responses={503: ("not ready: no routable model (reason, fix)", Readiness)},
    ),
    list_models: Operation("The routable models and aliases, OpenAI's list shape", "client API", security="none"),
    metrics: Operation("Prometheus metrics", "status", security="none", media=("text/plain",)),
}
