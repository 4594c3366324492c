"""GET /openapi.json: OpenAPI 3.1 of every route (walked from the live router), bodies from the models that
validate them, the security of each API, and the error shapes — plus the bugs the fuzzers found, pinned
over HTTP (tests/test_fuzz_api.py, tests/test_fuzz_parsers.py)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from pydantic import BaseModel, ValidationError

from admin_ui.app import ROUTES
from admin_ui.providers import ProviderIn
from pipeline.edge.anthropic import AnthropicErrorBody, MessagesBody, anthropic_error
from pipeline.edge.native import ChatBody
from pipeline.edge.openai import CompletionsBody, OpenAIErrorBody, openai_error
from pipeline.errors import BudgetExceeded, InvalidRequest, NoEligibleModel, RateLimited, TokenHubError
from pipeline.openapi import OPERATIONS, ErrorBody, Operation, UndocumentedRoutes, build_document, routes_of
from tests.conftest import ADMIN_TOKEN, Hub

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _ref(schema: dict[str, Any]) -> str:
    return schema["$ref"].rsplit("/", 1)[-1]


async def _document(hub: Hub) -> dict[str, Any]:
    resp = await hub.client.get("/openapi.json")  # public: no key, no token
    assert resp.status == 200 and resp.content_type == "application/json"
    return await resp.json()


async def test_the_document_is_openapi_3_1_and_served_from_memory(hub: Hub) -> None:
    first = await hub.client.get("/openapi.json")
    second = await hub.client.get("/openapi.json")
    assert await first.read() == await second.read()
    doc = await first.json()
    assert doc["openapi"] == "3.1.0" and doc["info"]["title"] == "TokenHub"
    assert first.headers["X-Request-Id"].startswith("th-")


async def test_every_route_of_the_app_is_an_operation(hub: Hub) -> None:
    """Walked from the running router, sub-applications included: a route added later is covered."""
    app = hub.client.server.app
    routes = list(routes_of(app))
    assert [f"{m} {p}" for m, p, op in routes if op is None] == []
    doc = await _document(hub)
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    assert documented == {(method, path) for method, path, _ in routes}
    for expected in ("POST /v1/chat", "GET /healthz", "POST /admin/v1/providers", "GET /admin/{path}"):
        method, path = expected.split()
        assert (method, path) in documented
    # every admin route of the table is there, with its path parameters named
    assert len(ROUTES) > 50
    assert doc["paths"]["/admin/v1/models/{id}"]["patch"]["parameters"][0]["name"] == "id"


def test_a_route_without_an_operation_fails_the_build_and_one_with_it_does_not() -> None:
    app = web.Application()

    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    app.router.add_post("/nowhere", handler)
    with pytest.raises(UndocumentedRoutes, match="POST /nowhere"):
        build_document(app)
    app[OPERATIONS] = {handler: Operation("somewhere", "test", body=ProviderIn)}
    doc = build_document(app)
    assert (
        _ref(doc["paths"]["/nowhere"]["post"]["requestBody"]["content"]["application/json"]["schema"]) == "ProviderIn"
    )


async def test_bodies_are_the_schemas_of_the_models_that_validate_them(hub: Hub) -> None:
    doc = await _document(hub)
    schemas = doc["components"]["schemas"]

    def body_of(method: str, path: str) -> tuple[str, dict[str, Any]]:
        name = _ref(doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"])
        return name, schemas[name]

    for (method, path), model in {
        ("post", "/v1/chat"): ChatBody,
        ("post", "/v1/chat/completions"): CompletionsBody,
        ("post", "/v1/messages"): MessagesBody,
        ("post", "/admin/v1/providers"): ProviderIn,
    }.items():
        name, schema = body_of(method, path)
        assert name == model.__name__
        assert set(schema["properties"]) == set(model.model_fields)
        assert schema.get("required", []) == [n for n, f in model.model_fields.items() if f.is_required()]
    # admin bodies refuse unknown fields, as their models do
    assert body_of("post", "/admin/v1/providers")[1]["additionalProperties"] is False
    # every admin route that reads a body documents it
    for route, op in ROUTES:
        if route.method in ("POST", "PUT", "PATCH") and op.body is None:
            assert route.path in {
                "/apikeys/{id}/rotate",
                "/apikeys/{id}/paid",
                "/vault/lock",
                "/tsdb/prune",
                "/backup",
                "/config/reload",
            }, route.path


async def test_security_per_api(hub: Hub) -> None:
    doc = await _document(hub)
    paths = doc["paths"]
    assert set(doc["components"]["securitySchemes"]) == {"apiKey", "apiKeyHeader", "adminToken", "adminSession"}
    assert paths["/v1/chat"]["post"]["security"] == [{"apiKey": []}, {"apiKeyHeader": []}]
    assert paths["/admin/v1/providers"]["get"]["security"] == [{"adminToken": []}, {"adminSession": []}]
    for public in (("/v1/models", "get"), ("/healthz", "get"), ("/openapi.json", "get"), ("/admin/v1/session", "post")):
        assert paths[public[0]][public[1]]["security"] == [], public
    assert paths["/admin/v1/session"]["delete"]["security"] != []


async def test_errors_are_documented_in_each_endpoints_shape(hub: Hub) -> None:
    doc = await _document(hub)

    def error_ref(path: str, method: str = "post") -> str:
        responses = doc["paths"][path][method]["responses"]
        assert responses["4XX"] == responses["5XX"]
        return _ref(responses["4XX"]["content"]["application/json"]["schema"])

    assert error_ref("/v1/chat") == error_ref("/admin/v1/models") == error_ref("/v1/feedback") == "ErrorBody"
    assert error_ref("/v1/chat/completions") == error_ref("/v1/embeddings") == "OpenAIErrorBody"
    assert error_ref("/v1/messages") == "AnthropicErrorBody"
    assert "503" in doc["paths"]["/healthz"]["get"]["responses"]  # readiness, not an error shape


ERRORS = [
    InvalidRequest("bad", field="request.messages"),
    RateLimited("slow down", retry_after=2.5),
    BudgetExceeded(budget_usd=1, spent_usd=1.5),
    NoEligibleModel("none", client_constraint=True, exclusions={"m": "too costly"}),
    TokenHubError("internal error"),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.type)
@pytest.mark.parametrize(
    ("model", "body"),
    [
        (ErrorBody, lambda e: e.body("th-1")),
        (OpenAIErrorBody, lambda e: openai_error(e, "th-1")),
        (AnthropicErrorBody, lambda e: anthropic_error(e, "th-1")),
    ],
    ids=["native", "openai", "anthropic"],
)
def test_the_error_models_describe_what_the_server_sends(
    error: TokenHubError, model: type[BaseModel], body: Any
) -> None:
    model.model_validate(body(error))


def test_the_error_models_refuse_another_shape() -> None:
    with pytest.raises(ValidationError):
        ErrorBody.model_validate({"error": "flat string"})
    with pytest.raises(ValidationError):
        AnthropicErrorBody.model_validate(openai_error(InvalidRequest("x"), "th-1"))


# ---- what the fuzzers found, pinned ------------------------------------------------------------------------


async def test_an_integer_beyond_64_bits_is_a_400_not_a_500(ready_hub: tuple[Hub, str]) -> None:
    """It passed validation (Python ints are unbounded) and then could not be written to the provider."""
    hub, key = ready_hub
    big = (
        b'{"request": {"messages": [{"role": "user", "content": "hi"}], "parameters": {"seed": 396703173761203830784}}}'
    )
    resp = await hub.client.post("/v1/chat", data=big, headers={"Authorization": f"Bearer {key}"})
    body = await resp.json()
    assert resp.status == 400 and body["error"]["field"] == "body", body
    assert "64 bits" in body["error"]["message"]
    assert hub.fake.requests == []  # nothing dispatched
    # the largest 64-bit values, and long digit runs inside strings, are fine
    ok = (
        b'{"request": {"messages": [{"role": "user", "content": "12345678901234567890123"}],'
        b' "parameters": {"seed": 9223372036854775807}}}'
    )
    resp = await hub.client.post("/v1/chat", data=ok, headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 200, await resp.text()


@pytest.mark.parametrize("path", ["/tsdb/retention", "/analytics/query", "/tenants/default/pipeline"])
async def test_an_admin_body_that_is_not_utf8_is_a_400(hub: Hub, path: str) -> None:
    method = "POST" if path == "/analytics/query" else "PUT"
    resp = await hub.client.request(method, f"/admin/v1{path}", data=b"\xff\xfe#\x00h", headers=ADMIN)
    body = await resp.json()
    assert resp.status == 400 and body["error"]["type"] == "invalid_request" and body["error"]["field"] == "body"
