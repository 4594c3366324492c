"""What the edge checks before it reads a body: the tenant's per-IP rate limit (counted once, invalid requests
included) and the key (401/403 before any parsing); and the message-count cap, checked on the raw JSON
structure before any message is validated."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pipeline.errors import InvalidRequest
from pipeline.input_limits import check_message_count
from tests.conftest import Hub

JSON = {"Content-Type": "application/json"}
CHAT = {"request": {"messages": [{"role": "user", "content": "hi"}]}}


async def _post(hub: Hub, path: str, body: bytes, key: str | None = None) -> tuple[int, dict[str, Any], Any]:
    headers = {**JSON, **({"Authorization": f"Bearer {key}"} if key else {})}
    resp = await hub.client.post(path, data=body, headers=headers)
    return resp.status, await resp.json(), resp


async def _setup(hub: Hub) -> str:
    await hub.add_provider()
    await hub.add_model("gpt-test")
    return await hub.new_key()


async def test_invalid_and_unauthenticated_requests_count_against_the_ip_limit(make_hub: Any) -> None:
    hub = await make_hub(rate_limit_rps=0.001, rate_limit_burst=3)
    key = await _setup(hub)
    assert (await _post(hub, "/v1/chat", b'{"request": ', key))[0] == 400
    assert (await _post(hub, "/v1/chat", b"[1, 2]", key))[0] == 400
    status, body, _ = await _post(hub, "/v1/chat", orjson.dumps(CHAT), "tokenhub_" + "0" * 64)
    assert status == 401 and body["error"]["message"] == "invalid api key"
    status, body, resp = await _post(hub, "/v1/chat", orjson.dumps(CHAT), key)  # a valid request: bucket empty
    assert status == 429 and body["error"]["type"] == "rate_limited" and int(resp.headers["Retry-After"]) > 0
    assert hub.fake.requests == []
    rows = await hub.logs()
    assert sorted(row["status"] for row in rows) == [400, 400, 401, 429]  # each recorded once
    assert "tokenhub_rate_limited_total 1.0" in await (await hub.client.get("/metrics")).text()


async def test_a_request_without_a_valid_key_is_refused_before_its_body_is_read(make_hub: Any) -> None:
    """Each body below is refused differently once it is read (400 malformed, 413 too large): a 401/403 shows
    that the key was checked first and the body never parsed."""
    hub = await make_hub(max_body_bytes=4096)
    await _setup(hub)
    embeddings_only = await hub.new_key(scopes=["embeddings"])
    malformed = b'{"request": {"messages": [' + b"{}," * 100
    too_large = orjson.dumps({"messages": [{"role": "user", "content": "x" * 10_000}]})
    status, body, _ = await _post(hub, "/v1/chat", malformed)
    assert status == 401 and body["error"]["type"] == "unauthorized" and "Bearer" in body["error"]["message"]
    status, body, _ = await _post(hub, "/v1/chat/completions", too_large, "tokenhub_" + "1" * 64)
    assert status == 401 and body["error"]["type"] == "authentication_error"  # the OpenAI shape
    status, body, _ = await _post(hub, "/v1/messages", too_large)
    assert status == 401 and body["type"] == "error" and body["error"]["type"] == "authentication_error"
    status, body, _ = await _post(hub, "/v1/plan", malformed)
    assert status == 401 and body["error"]["type"] == "unauthorized"
    status, body, _ = await _post(hub, "/v1/chat", malformed, embeddings_only)
    assert status == 403 and "'chat'" in body["error"]["message"]
    assert hub.fake.requests == []


async def test_tenant_rate_limit_applies_at_the_edge_and_counts_each_request_once(make_hub: Any) -> None:
    hub = await make_hub(rate_limit_rps=0.001, rate_limit_burst=1)
    default_key = await _setup(hub)
    for tenant in ("acme", "free"):
        await hub.admin("POST", "/tenants", {"id": tenant, "name": tenant}, expect=201)
    acme = await hub.new_key(tenant_id="acme")
    free = await hub.new_key(tenant_id="free")
    limited = [
        {"stage": "rate_limit", "with": {"rps": 0.001, "burst": 3}},
        {"stage": "auth"},
        {"stage": "policy"},
        {"stage": "dispatch"},
    ]
    await hub.admin("PUT", "/tenants/acme/pipeline", limited, expect=200)
    await hub.admin("PUT", "/tenants/free/pipeline", limited[1:], expect=200)  # no per-IP limit at all
    chat = orjson.dumps(CHAT)
    # acme's burst of 3, not the global 1: two served (each counted once), one invalid body (counted), then 429
    assert (await _post(hub, "/v1/chat", chat, acme))[0] == 200
    assert (await _post(hub, "/v1/chat", chat, acme))[0] == 200
    assert (await _post(hub, "/v1/chat", b"{", acme))[0] == 400
    status, body, _ = await _post(hub, "/v1/chat", chat, acme)
    assert status == 429 and body["error"]["type"] == "rate_limited"
    # the default tenant keeps the global limit (burst 1)
    assert (await _post(hub, "/v1/chat", chat, default_key))[0] == 200
    assert (await _post(hub, "/v1/chat", chat, default_key))[0] == 429
    # a tenant whose pipeline has no rate_limit stage is not limited per IP, valid or not
    for _ in range(3):
        assert (await _post(hub, "/v1/chat", b"{", free))[0] == 400
        assert (await _post(hub, "/v1/chat", chat, free))[0] == 200
    assert len(hub.fake.requests) == 2 + 1 + 3


async def test_a_changed_pipeline_changes_the_checks_before_the_body(make_hub: Any) -> None:
    """The edge finds a chain's checks once; a saved pipeline is a new chain, so its limit applies at once."""
    hub = await make_hub(rate_limit_rps=0.001, rate_limit_burst=1)
    await _setup(hub)
    await hub.admin("POST", "/tenants", {"id": "acme", "name": "acme"}, expect=201)
    acme = await hub.new_key(tenant_id="acme")
    chat = orjson.dumps(CHAT)
    unlimited = [{"stage": "auth"}, {"stage": "policy"}, {"stage": "dispatch"}]
    await hub.admin("PUT", "/tenants/acme/pipeline", unlimited, expect=200)
    for _ in range(3):
        assert (await _post(hub, "/v1/chat", chat, acme))[0] == 200
    limited = [{"stage": "rate_limit", "with": {"rps": 0.001, "burst": 1}}, *unlimited]
    await hub.admin("PUT", "/tenants/acme/pipeline", limited, expect=200)
    assert (await _post(hub, "/v1/chat", chat, acme))[0] == 200
    status, body, _ = await _post(hub, "/v1/chat", chat, acme)
    assert status == 429 and body["error"]["type"] == "rate_limited"


# --- the message-count cap, on the raw structure ----------------------------------------------------
NUMBERS = [1] * 5000  # not messages at all: validating each would report 5 000 errors
BODIES = [
    ("/v1/chat", {"request": {"messages": NUMBERS}}, "request.messages"),
    ("/v1/chat/completions", {"model": "auto", "messages": NUMBERS}, "messages"),
    ("/v1/messages", {"model": "auto", "max_tokens": 10, "messages": NUMBERS}, "messages"),
    ("/v1/plan", {"request": {"messages": NUMBERS}, "orchestration": {"mode": "adversarial"}}, "request.messages"),
]


@pytest.mark.parametrize(("path", "body", "field"), BODIES, ids=[b[0] for b in BODIES])
async def test_an_oversized_message_array_is_refused_before_its_messages_are_validated(
    make_hub: Any, path: str, body: dict[str, Any], field: str
) -> None:
    hub = await make_hub(max_messages=1000)
    key = await _setup(hub)
    status, data, resp = await _post(hub, path, orjson.dumps(body), key)
    assert status == 400, data
    assert "too many messages: 5000 > 1000" in str(data) and resp.headers["X-Request-Id"] in str(data)
    if path != "/v1/messages":  # Anthropic's error shape has no field
        assert data["error"].get("field", data["error"].get("param")) == field
    assert hub.fake.requests == []


def test_message_count_check_reads_the_raw_structure() -> None:
    many = orjson.dumps({"request": {"messages": [{}] * 11, "meta": {"a": [1] * 50}}})
    with pytest.raises(InvalidRequest) as caught:
        check_message_count(many, 10, ("request", "messages"))
    assert caught.value.field == "request.messages" and caught.value.message == "too many messages: 11 > 10"
    check_message_count(many, 11, ("request", "messages"))  # at the limit: fine
    check_message_count(many, 10, ("messages",))  # another wire format's path: not there, nothing to say
    check_message_count(orjson.dumps({"messages": [1] * 9}), 10, ("messages",))  # fewer commas than the limit
    check_message_count(b'{"messages": [' + b"1," * 50, 10, ("messages",))  # malformed: the codec says so
    check_message_count(orjson.dumps({"request": [1] * 50}), 10, ("request", "messages"))  # not an object
