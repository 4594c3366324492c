"""Admin auth on every route, the admin rate limit, the audit trail, client IPs behind proxies, CORS,
hostile input, and the admin-token CLI command."""

from __future__ import annotations

import functools
import re
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict

from admin_ui import security
from pipeline.cli import main
from stages.rate_limit import TokenBuckets
from tests.conftest import ADMIN_TOKEN, Hub
from tests.fakes.clock import FakeClock

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _subapps(app: web.Application) -> list[web.Application]:
    return [r._app for r in app.router.resources() if isinstance(r, web.PrefixedSubAppResource)]


# Reachable without credentials: the web UI's sign-in and its "am I signed in?" (tests/test_admin_sessions.py).
PUBLIC_ADMIN_ROUTES = frozenset({("POST", "/admin/v1/session"), ("GET", "/admin/v1/session")})


def admin_routes(hub: Hub) -> list[tuple[str, str]]:
    """Every (method, path) the admin API sub-app (/admin/v1) serves that needs credentials, path parameters
    filled in: a route added later is covered without touching this test. (The web UI's static files at
    /admin/ and the sign-in routes are public.)"""
    [admin] = _subapps(hub.client.server.app)
    [api] = _subapps(admin)
    routes = []
    for route in api.router.routes():  # sub-app resources carry the /admin/v1 prefix already
        routes.append((route.method, re.sub(r"\{[^}]+\}", "x1", route.resource.canonical)))
    return [route for route in routes if route not in PUBLIC_ADMIN_ROUTES]


async def test_every_admin_route_refuses_a_request_without_the_token(hub: Hub) -> None:
    routes = admin_routes(hub)
    assert len(routes) > 30 and ("GET", "/admin/v1/events") in routes and ("POST", "/admin/v1/vault/unlock") in routes
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": ADMIN_TOKEN}):
            resp = await hub.client.request(method, path, headers=headers, json={})
            assert resp.status == 401, (method, path, headers)
            if method != "HEAD":
                body = await resp.json()
                assert body["error"]["type"] == "unauthorized" and body["error"]["request_id"], (method, path)
    # and nothing was changed or audited by those attempts
    assert (await hub.admin("GET", "/audit"))["logs"] == []


async def test_admin_rate_limit_applies_before_authentication(make_hub: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # The admin buckets on a stopped clock: on the real one a slow machine refills them between requests.
    monkeypatch.setattr(security, "TokenBuckets", functools.partial(TokenBuckets, clock=FakeClock()))
    hub = await make_hub(admin_rate_limit_rps=0.5, admin_rate_limit_burst=3)
    for _ in range(3):
        assert (await hub.client.get("/admin/v1/providers", headers={"Authorization": "Bearer guess"})).status == 401
    resp = await hub.client.get("/admin/v1/providers", headers=ADMIN)
    assert resp.status == 429 and resp.headers["Retry-After"] == "2"
    metrics = await (await hub.client.get("/metrics")).text()
    assert "tokenhub_admin_rate_limited_total 1.0" in metrics


async def test_audit_trail_records_mutations_with_outcome_and_no_secrets(hub: Hub) -> None:
    started = time.time()
    await hub.add_provider()  # carries api_key sk-test-secret
    await hub.admin("POST", "/models", {"id": "m1", "provider_id": "ghost"}, expect=400)  # refused: audited too
    created = await hub.admin("POST", "/apikeys", {"name": "audited"}, expect=201)
    await hub.admin("PATCH", f"/apikeys/{created['id']}", {"enabled": False}, expect=200)
    await hub.admin("POST", "/vault/unlock", {"password": "a fine password"}, expect=200)
    await hub.admin("GET", "/providers")  # reads are not audited
    logs = (await hub.admin("GET", "/audit"))["logs"]
    assert [e["action"] for e in logs] == [
        "unlock_vault",
        "patch_api_key",
        "create_api_key",
        "create_model",
        "create_provider",
    ]
    provider = logs[-1]
    assert provider["actor"] == "admin" and provider["client_ip"] == "127.0.0.1" and provider["status"] == 201
    assert provider["method"] == "POST" and provider["route"] == "/admin/v1/providers"
    assert provider["target"] == provider["resource"] == "fake" and provider["request_id"]
    assert provider["detail"]["api_key"] == "[REDACTED]" and provider["detail"]["id"] == "fake"
    assert logs[-2]["status"] == 400 and logs[-2]["detail"]["provider_id"] == "ghost"
    assert logs[-3]["target"] == created["id"]  # a creation names the id it created
    assert logs[-4]["target"] == created["id"] and logs[-4]["detail"] == {"enabled": False}
    assert logs[0]["detail"] == {"password": "[REDACTED]"}
    text = str(logs)
    assert "sk-test-secret" not in text and "a fine password" not in text and created["key"] not in text

    assert [e["action"] for e in (await hub.admin("GET", "/audit?action=create_api_key"))["logs"]] == ["create_api_key"]
    assert len((await hub.admin("GET", f"/audit?target={created['id']}"))["logs"]) == 2
    assert len((await hub.admin("GET", "/audit?status=400"))["logs"]) == 1
    page = await hub.admin("GET", "/audit?limit=2&offset=1")
    assert page["total"] == 5 and [e["action"] for e in page["logs"]] == ["patch_api_key", "create_api_key"]
    since_ms = int(started * 1000)
    assert len((await hub.admin("GET", f"/audit?since={since_ms}"))["logs"]) == 5
    assert (await hub.admin("GET", f"/audit?until={since_ms}"))["logs"] == []
    await hub.admin("GET", "/audit?since=yesterday", expect=400)


async def test_spoofed_forwarding_headers_from_an_untrusted_peer_are_ignored(make_hub: Any) -> None:
    hub = await make_hub(rate_limit_rps=0.001, rate_limit_burst=2, trusted_proxies="10.0.0.0/8")
    await hub.add_provider()
    await hub.add_model("gpt-test")
    key = await hub.new_key()
    for n in range(2):  # the peer (127.0.0.1) is not a trusted proxy: each header is ignored
        spoof = {"X-Forwarded-For": f"203.0.113.{n}", "X-Real-IP": f"198.51.100.{n}"}
        assert (await hub.chat(key, headers=spoof))[0] == 200
    status, body, _ = await hub.chat(key, headers={"X-Forwarded-For": "203.0.113.99"})
    assert status == 429 and body["error"]["type"] == "rate_limited"
    await hub.admin("POST", "/tenants", {"id": "t1", "name": "T"}, expect=201)
    resp = await hub.client.post(
        "/admin/v1/tenants", json={"id": "t2", "name": "T"}, headers={**ADMIN, "X-Forwarded-For": "203.0.113.7"}
    )
    assert resp.status == 201
    assert {e["client_ip"] for e in (await hub.admin("GET", "/audit"))["logs"]} == {"127.0.0.1"}


async def test_forwarding_headers_from_a_trusted_proxy_name_the_client(make_hub: Any) -> None:
    hub = await make_hub(rate_limit_rps=0.001, rate_limit_burst=1, trusted_proxies="127.0.0.1, 10.0.0.0/8")
    await hub.add_provider()
    await hub.add_model("gpt-test")
    key = await hub.new_key()
    # The proxy appends what it saw; a client-supplied left part does not choose the bucket.
    assert (await hub.chat(key, headers={"X-Forwarded-For": "1.1.1.1, 198.51.100.5, 10.0.0.2"}))[0] == 200
    assert (await hub.chat(key, headers={"X-Forwarded-For": "2.2.2.2, 198.51.100.5"}))[0] == 429  # same client
    assert (await hub.chat(key, headers={"X-Forwarded-For": "198.51.100.6"}))[0] == 200  # another client
    resp = await hub.client.put("/admin/v1/routing-config", json={}, headers={**ADMIN, "X-Forwarded-For": "192.0.2.9"})
    assert resp.status == 200
    assert (await hub.admin("GET", "/audit"))["logs"][0]["client_ip"] == "192.0.2.9"


async def _chat_with(hub: Hub, key: str, headers: list[tuple[str, str]]) -> tuple[int, dict[str, Any]]:
    """A chat whose headers may repeat a name (each pair is its own header line)."""
    body = {"request": {"messages": [{"role": "user", "content": "hi"}]}}
    resp = await hub.client.post(
        "/v1/chat", json=body, headers=CIMultiDict([("Authorization", f"Bearer {key}"), *headers])
    )
    return resp.status, await resp.json()


async def test_every_forwarded_for_line_is_read_from_the_right(make_hub: Any) -> None:
    """A proxy that adds its own X-Forwarded-For line (instead of extending the client's) must not let the
    client's line choose the bucket: the lines are joined in order and walked from the right."""
    hub = await make_hub(rate_limit_rps=0.001, rate_limit_burst=1, trusted_proxies="127.0.0.1")
    await hub.add_provider()
    await hub.add_model("gpt-test")
    key = await hub.new_key()
    proxy_line = ("X-Forwarded-For", "198.51.100.5")
    status, body = await _chat_with(hub, key, [("X-Forwarded-For", "203.0.113.1"), proxy_line])
    assert status == 200, body
    status, body = await _chat_with(hub, key, [("X-Forwarded-For", "203.0.113.2, 10.9.9.9"), proxy_line])
    assert status == 429 and body["error"]["type"] == "rate_limited"  # the same client, whatever it wrote
    status, body = await _chat_with(hub, key, [("X-Forwarded-For", "203.0.113.1"), ("X-Forwarded-For", "198.51.100.6")])
    assert status == 200, body  # another client behind the proxy: its own bucket
    rows = {row["request_id"]: row["status"] for row in await hub.logs()}
    assert sorted(rows.values()) == [200, 200, 429]


async def test_x_real_ip_is_ignored_unless_configured(make_hub: Any) -> None:
    hub = await make_hub(rate_limit_rps=0.001, rate_limit_burst=1, trusted_proxies="127.0.0.1")
    await hub.add_provider()
    await hub.add_model("gpt-test")
    key = await hub.new_key()
    # From a trusted proxy, but the proxy may pass on what the client sent: the peer's bucket for both.
    assert (await hub.chat(key, headers={"X-Real-IP": "198.51.100.7"}))[0] == 200
    status, body, _ = await hub.chat(key, headers={"X-Real-IP": "198.51.100.8"})
    assert status == 429 and body["error"]["type"] == "rate_limited"
    resp = await hub.client.put("/admin/v1/routing-config", json={}, headers={**ADMIN, "X-Real-IP": "192.0.2.9"})
    assert resp.status == 200
    assert (await hub.admin("GET", "/audit"))["logs"][0]["client_ip"] == "127.0.0.1"


async def test_x_real_ip_from_a_trusted_proxy_is_believed_when_configured(make_hub: Any) -> None:
    hub = await make_hub(rate_limit_rps=0.001, rate_limit_burst=1, trusted_proxies="127.0.0.1", trust_x_real_ip=True)
    await hub.add_provider()
    await hub.add_model("gpt-test")
    key = await hub.new_key()
    assert (await hub.chat(key, headers={"X-Real-IP": "198.51.100.7"}))[0] == 200
    assert (await hub.chat(key, headers={"X-Real-IP": "198.51.100.8"}))[0] == 200  # another client
    # X-Real-IP, the header the proxy sets, wins over X-Forwarded-For
    reused = {"X-Real-IP": "198.51.100.7", "X-Forwarded-For": "203.0.113.50"}
    assert (await hub.chat(key, headers=reused))[0] == 429
    resp = await hub.client.put("/admin/v1/routing-config", json={}, headers={**ADMIN, "X-Real-IP": "192.0.2.9"})
    assert resp.status == 200
    assert (await hub.admin("GET", "/audit"))["logs"][0]["client_ip"] == "192.0.2.9"


# --- CORS ------------------------------------------------------------------------------------------
PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, x-stainless-os"}


async def test_cors_preflight_allowed_and_denied(make_hub: Any) -> None:
    hub = await make_hub(cors_origins="https://app.example.com, http://localhost:3000")
    resp = await hub.client.options("/v1/chat/completions", headers={"Origin": "https://app.example.com", **PREFLIGHT})
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    assert resp.headers["Access-Control-Allow-Headers"] == "authorization, x-stainless-os"
    assert resp.headers["Access-Control-Max-Age"] == "300" and "Origin" in resp.headers["Vary"]
    assert "Access-Control-Allow-Credentials" not in resp.headers
    # admin preflights are answered before authentication (a browser sends no token with them)
    resp = await hub.client.options("/admin/v1/providers", headers={"Origin": "http://localhost:3000", **PREFLIGHT})
    assert resp.status == 204

    resp = await hub.client.options("/v1/chat", headers={"Origin": "https://evil.example", **PREFLIGHT})
    assert resp.status == 403 and not _cors_headers(resp.headers)
    assert (await resp.json())["error"]["request_id"]

    resp = await hub.client.get("/v1/models", headers={"Origin": "https://app.example.com"})
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "X-Request-Id" in resp.headers["Access-Control-Expose-Headers"] and resp.headers["Vary"] == "Origin"
    resp = await hub.client.get("/v1/models", headers={"Origin": "https://evil.example"})
    assert resp.status == 200 and not _cors_headers(resp.headers) and resp.headers["Vary"] == "Origin"
    chat = {"request": {"messages": [{"role": "user", "content": "hi"}]}}
    resp = await hub.client.post("/v1/chat", json=chat, headers={"Origin": "http://localhost:3000"})  # errors too
    assert resp.status == 401 and resp.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"


async def test_no_cors_without_configured_origins(hub: Hub) -> None:
    resp = await hub.client.options("/v1/chat", headers={"Origin": "https://app.example.com", **PREFLIGHT})
    assert resp.status == 405 and not _cors_headers(resp.headers)
    resp = await hub.client.get("/v1/models", headers={"Origin": "https://app.example.com"})
    assert not _cors_headers(resp.headers)


async def test_cors_wildcard_never_allows_credentials(make_hub: Any) -> None:
    wildcard = await make_hub(cors_origins="*")
    resp = await wildcard.client.options("/v1/chat", headers={"Origin": "https://any.example", **PREFLIGHT})
    assert resp.status == 204 and resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in resp.headers


def _cors_headers(headers: Any) -> list[str]:
    return [name for name in headers if name.lower().startswith("access-control-")]


# --- hostile input ---------------------------------------------------------------------------------
def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


async def test_hostile_bodies_are_refused_with_json_errors_and_nothing_dispatched(make_hub: Any) -> None:
    hub = await make_hub(max_content_chars=1000, max_total_content_chars=1500, max_messages=5, max_body_bytes=20_000)
    await hub.add_provider()
    await hub.add_model("gpt-test")
    key = await hub.new_key()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    deep_chat = '{"request": {"messages": [{"role": "user", "content": "hi"}], "parameters": {"x": ' + _deep(70) + "}}}"
    cases = [
        ("/v1/chat", deep_chat, 400, "nesting"),
        ("/v1/chat/completions", '{"model": "auto", "messages": ' + _deep(100) + "}", 400, "nesting"),
        ("/v1/chat", _chat([{"role": "user", "content": "x" * 1001}]), 400, "1001 characters"),
        ("/v1/chat", _chat([{"role": "user", "content": "x" * 800}] * 2), 400, "1600 characters"),
        ("/v1/chat", _chat([{"role": "user", "content": "x"}] * 6), 400, "too many messages"),
        ("/v1/chat", _chat([{"role": "user", "content": "x" * 20_000}]), 413, "limit"),
        ("/v1/chat", '{"request": {"messages": [{"role": "user", "content": 5}]}}', 400, "content"),
    ]
    for path, body, status, words in cases:
        resp = await hub.client.post(path, data=body, headers=headers)
        data = await resp.json()
        assert resp.status == status, (path, status, data)
        assert words in str(data) and resp.headers["X-Request-Id"] in str(data), (path, data)
    # strings full of brackets are not nesting
    await hub.chat_ok(key, "[" * 500 + "{" * 400)
    assert len(hub.fake.requests) == 1
    logs = await hub.logs()
    refused = [row for row in logs if row["status"] >= 400]
    assert len(refused) == len(cases) and all(row["model_id"] == "" for row in refused)

    resp = await hub.client.post("/admin/v1/tenants", data='{"id": "t", "name": ' + _deep(80) + "}", headers=ADMIN)
    assert resp.status == 400 and "nesting" in (await resp.json())["error"]["message"]
    assert (await hub.admin("GET", "/tenants"))["total"] == 1  # nothing created


async def test_path_parameters_are_validated(hub: Hub) -> None:
    for path in ("/admin/v1/apikeys/%20bad", "/admin/v1/providers/..%2Fx", "/admin/v1/tenants/-x/pipeline"):
        resp = await hub.client.delete(path, headers=ADMIN)
        body = await resp.json()
        assert resp.status == 400 and body["error"]["field"] in ("id",), (path, body)
    long_id = "a" * 300
    resp = await hub.client.patch(f"/admin/v1/apikeys/{long_id}", json={"enabled": True}, headers=ADMIN)
    body = await resp.json()
    assert resp.status == 400 and body["error"]["type"] == "invalid_request" and body["error"]["field"] == "id"


async def test_oversized_headers_are_refused_by_the_parser(make_hub: Any) -> None:
    hub = await make_hub(max_header_bytes=2048)
    resp = await hub.client.get("/healthz", headers={"X-Big": "x" * 4096})
    assert resp.status == 400
    assert (await hub.client.get("/healthz", headers={"X-Small": "x" * 1000})).status in (200, 503)


def _chat(messages: list[dict[str, Any]]) -> str:
    import json

    return json.dumps({"request": {"messages": messages}})


# --- admin token CLI -------------------------------------------------------------------------------
def test_admin_token_command_prints_the_stored_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TOKENHUB_ADMIN_TOKEN", raising=False)
    data = tmp_path / "data"
    assert main(["admin-token", "--data-dir", str(data)]) == 1
    assert "start the server once" in capsys.readouterr().err
    data.mkdir()
    (data / ".admin-token").write_text("stored-token-0123456789abcdef012345\n")
    assert main(["admin-token", "--data-dir", str(data)]) == 0
    captured = capsys.readouterr()
    assert captured.out == "stored-token-0123456789abcdef012345\n" and ".admin-token" in captured.err
    monkeypatch.setenv("TOKENHUB_ADMIN_TOKEN", "env-token-0123456789abcdef0123456789")
    assert main(["admin-token", "--data-dir", str(data)]) == 0
    captured = capsys.readouterr()
    assert captured.out == "env-token-0123456789abcdef0123456789\n" and "TOKENHUB_ADMIN_TOKEN" in captured.err


async def test_a_short_admin_token_in_the_token_file_stops_start_up(make_hub: Any, tmp_path: Path) -> None:
    data = tmp_path / "short"
    data.mkdir()
    (data / ".admin-token").write_text("hand-made-token\n")
    with pytest.raises(ValueError, match="has 15 characters; at least 32") as caught:
        await make_hub(admin_token="", data_dir=data)
    assert "hand-made-token" not in str(caught.value)
    # A start-up that failed leaves its stores to the process's exit: the next start gets its own data dir.
    enough = tmp_path / "enough"
    enough.mkdir()
    (enough / ".admin-token").write_text("g" * 32 + "\n")
    hub = await make_hub(admin_token="", data_dir=enough)
    resp = await hub.client.get("/admin/v1/providers", headers={"Authorization": "Bearer " + "g" * 32})
    assert resp.status == 200 and (await resp.json())["items"] == []
