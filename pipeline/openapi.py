"""The OpenAPI 3.1 document of the running application (GET /openapi.json), built from its own router.

Every route carries an `Operation`: the edge's endpoints expose one built from their codec (its body model and
error shape), the admin API annotates its route table (`admin_ui/app.py` ROUTES), and each application keeps
its handlers' operations under `OPERATIONS`. The document walks the router, sub-applications included, so a
route added later is in it — or, without an operation, makes building it fail (tests/test_openapi.py builds it).
Request bodies are the JSON schemas of the same pydantic models that validate them (`model_json_schema`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import SkipJsonSchema, models_json_schema

__all__ = [
    "OPERATIONS",
    "ErrorBody",
    "ErrorDetail",
    "OpenApiEndpoint",
    "Operation",
    "UndocumentedRoutes",
    "build_document",
    "routes_of",
]

Security = Literal["none", "api_key", "admin"]
JSON = "application/json"
SSE = "text/event-stream"
_REF = "#/components/schemas/{model}"


class ErrorDetail(BaseModel):
    """TokenHub's error object (pipeline/errors.py `TokenHubError.body`); the optional fields come with some types."""

    model_config = ConfigDict(extra="allow")
    type: str
    message: str
    request_id: str
    field: str | SkipJsonSchema[None] = None
    retry_after_secs: int | SkipJsonSchema[None] = None
    exclusions: dict[str, str] | SkipJsonSchema[None] = None
    budget_usd: float | SkipJsonSchema[None] = None
    spent_usd: float | SkipJsonSchema[None] = None
    error_class: str | SkipJsonSchema[None] = None
    upstream_status: int | SkipJsonSchema[None] = None


class ErrorBody(BaseModel):
    """Every error of /v1/chat, /v1/plan, /v1/feedback, the status routes and the admin API."""

    model_config = ConfigDict(extra="forbid")
    error: ErrorDetail


@dataclass(frozen=True, slots=True)
class Operation:
    """What the document says about one route. `body` is the model the handler validates its body with (or, for
    a body checked by hand, the JSON schema of what the check accepts); `errors` the shape of every 4xx/5xx."""

    summary: str
    tag: str
    body: type[BaseModel] | Mapping[str, Any] | None = None
    security: Security = "admin"
    errors: type[BaseModel] = ErrorBody
    status: int = 200  # on success
    media: tuple[str, ...] = (JSON,)  # of the success body
    responses: Mapping[int, tuple[str, type[BaseModel]]] = field(default_factory=dict)  # others, not errors
    description: str = ""


OPERATIONS: web.AppKey[dict[Any, Operation]] = web.AppKey("openapi_operations", dict)


class UndocumentedRoutes(RuntimeError):
    """Routes without an Operation: the document would not describe the whole application."""


def operation_of(handler: Any, operations: Mapping[Any, Operation]) -> Operation | None:
    """A handler's operation: the one registered for it, or an endpoint object's own (`RoutedEndpoint.handle`)."""
    found = operations.get(handler)
    if found is None:
        found = getattr(getattr(handler, "__self__", None), "operation", None)
    return found if isinstance(found, Operation) else None


def routes_of(app: web.Application) -> Iterator[tuple[str, str, Operation | None]]:
    """(method, path template, operation) of every route, sub-applications' included (their paths carry
    their prefixes already)."""
    operations = app.get(OPERATIONS, {})
    for resource in app.router.resources():
        if isinstance(resource, web.PrefixedSubAppResource):
            yield from routes_of(resource.get_info()["app"])
            continue
        for route in resource:
            yield route.method, resource.canonical, operation_of(route.handler, operations)


def build_document(app: web.Application) -> dict[str, Any]:
    routes = list(routes_of(app))
    missing = sorted(f"{method} {path}" for method, path, op in routes if op is None)
    if missing:
        raise UndocumentedRoutes(f"routes without an OpenAPI operation: {', '.join(missing)}")
    models = {m for *_, op in routes if op is not None for m in _models(op)}
    refs, definitions = models_json_schema(
        [(m, "validation") for m in sorted(models, key=lambda m: m.__qualname__)], ref_template=_REF
    )
    schema_of = {model: refs[(model, "validation")] for model in models}
    paths: dict[str, dict[str, Any]] = {}
    for method, path, op in routes:
        assert op is not None
        paths.setdefault(path, {})[method.lower()] = _operation(method, path, op, schema_of)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "TokenHub",
            "version": _version(),
            "description": "LLM routing proxy: the client API (/v1) and the admin API (/admin/v1).",
        },
        "paths": paths,
        "components": {"schemas": definitions.get("$defs", {}), "securitySchemes": SECURITY_SCHEMES},
    }


SECURITY_SCHEMES: dict[str, Any] = {
    "apiKey": {"type": "http", "scheme": "bearer", "description": "a TokenHub API key (tokenhub_…)"},
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "x-api-key", "description": "the same key"},
    "adminToken": {"type": "http", "scheme": "bearer", "description": "TOKENHUB_ADMIN_TOKEN"},
    "adminSession": {
        "type": "apiKey",
        "in": "cookie",
        "name": "tokenhub_admin",
        "description": "the web UI's session (POST /admin/v1/session); a change also needs its X-CSRF-Token header",
    },
}
_SECURITY: dict[Security, list[dict[str, list[str]]]] = {
    "none": [],
    "api_key": [{"apiKey": []}, {"apiKeyHeader": []}],
    "admin": [{"adminToken": []}, {"adminSession": []}],
}


def _models(op: Operation) -> Iterator[type[BaseModel]]:
    if isinstance(op.body, type):
        yield op.body
    yield op.errors
    for _, model in op.responses.values():
        yield model


def _operation(method: str, path: str, op: Operation, schema_of: Mapping[type[BaseModel], Any]) -> dict[str, Any]:
    head = method == "HEAD"  # aiohttp's HEAD twin of a GET: the same answers without a body
    errors = {
        "description": "an error, in this endpoint's error shape",
        "content": {JSON: {"schema": schema_of[op.errors]}},
    }
    responses: dict[str, Any] = {
        str(op.status): {"description": "success"},
        "4XX": errors,
        "5XX": errors,
    }
    if op.media:  # a redirect has none
        responses[str(op.status)]["content"] = {media: {"schema": {}} for media in op.media}
    for status, (description, model) in op.responses.items():
        responses[str(status)] = {"description": description, "content": {JSON: {"schema": schema_of[model]}}}
    if head:
        responses = {status: {"description": r["description"]} for status, r in responses.items()}
    result: dict[str, Any] = {
        "operationId": f"{method.lower()}{path.replace('/', '_').replace('{', '').replace('}', '').replace('-', '_')}",
        "summary": op.summary,
        "tags": [op.tag],
        "security": _SECURITY[op.security],
        "responses": responses,
    }
    if op.description:
        result["description"] = op.description
    if params := _path_params(path):
        result["parameters"] = params
    if op.body is not None and not head:
        schema = schema_of[op.body] if isinstance(op.body, type) else dict(op.body)
        result["requestBody"] = {"required": True, "content": {JSON: {"schema": schema}}}
    return result


def _path_params(path: str) -> list[dict[str, Any]]:
    names = [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]
    return [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}} for name in names
    ]


def _version() -> str:
    try:
        return metadata.version("tokenhub")
    except metadata.PackageNotFoundError:
        return "0"


class OpenApiEndpoint:
    """GET /openapi.json: built on the first request (every route is mounted by then), then served from memory."""

    operation = Operation("This document: OpenAPI 3.1 of every route", "status", security="none")

    def __init__(self) -> None:
        self._body: bytes | None = None

    async def handle(self, request: web.Request) -> web.Response:
        if self._body is None:
            self._body = orjson.dumps(build_document(request.app))
        return web.Response(body=self._body, content_type=JSON)
