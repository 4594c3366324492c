"""API-key auth (401 / 403, revocation and expiry on the next request) and the per-IP rate limit."""

from __future__ import annotations

import hashlib
import sqlite3

from pipeline.stage import stages_in
from pipeline.web import PIPELINES
from stages.rate_limit import RateLimit
from tests.conftest import ADMIN_TOKEN, Hub
from tests.fakes.clock import FakeClock


async def test_missing_key_is_401(ready_hub: tuple[Hub, str]) -> None:
    hub, _ = ready_hub
    status, body, _ = await hub.chat(None)
    assert status == 401
    assert body["error"]["type"] == "unauthorized" and "authorization required" in body["error"]["message"]
    assert hub.fake.requests == []


async def test_unknown_key_is_401(ready_hub: tuple[Hub, str]) -> None:
    hub, key = ready_hub
    status, body, _ = await hub.chat(key[:-4] + "0000")
    assert status == 401 and body["error"]["message"] == "invalid api key"


async def test_x_api_key_header_is_accepted(ready_hub: tuple[Hub, str]) -> None:
    hub, key = ready_hub
    body = await hub.chat_ok(None, headers={"x-api-key": key})
    assert body["negotiated_model"] == "gpt-test"


async def test_missing_scope_is_403(ready_hub: tuple[Hub, str]) -> None:
    hub, _ = ready_hub
    key = await hub.new_key(scopes=["embeddings"])
    status, body, _ = await hub.chat(key)
    assert status == 403
    assert body["error"]["type"] == "forbidden" and "chat" in body["error"]["message"]


async def test_revocation_applies_to_the_next_request(ready_hub: tuple[Hub, str]) -> None:
    hub, key = ready_hub
    await hub.chat_ok(key)
    keys = await hub.admin("GET", "/apikeys")
    key_id = keys["keys"][0]["id"]
    await hub.admin("DELETE", f"/apikeys/{key_id}", expect=200)
    await hub.chat_refused(key, 401, "unauthorized")
    await hub.admin("DELETE", f"/apikeys/{key_id}", expect=404)


async def test_expired_key_is_401(ready_hub: tuple[Hub, str]) -> None:
    hub, _ = ready_hub
    key = await hub.new_key(expires_in="1ms")
    status, body, _ = await hub.chat(key)
    assert status == 401 and body["error"]["message"] == "api key expired"


async def test_bad_expiry_is_400(hub: Hub) -> None:
    body = await hub.admin("POST", "/apikeys", {"name": "x", "expires_in": "soon"}, expect=400)
    assert body["error"]["field"] == "expires_in"


async def test_keys_are_stored_as_digests_only(ready_hub: tuple[Hub, str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    _hub, key = ready_hub
    db = sqlite3.connect(tmp_path / "data" / "tokenhub.sqlite")
    rows = db.execute("SELECT key_digest, key_prefix FROM api_keys").fetchall()
    assert rows == [(hashlib.sha256(key.encode()).hexdigest(), key[:17])]
    raw = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("tokenhub.sqlite*"))  # WAL included
    assert key.encode() not in raw
    assert b"sk-test-secret" not in raw  # the provider key is sealed too


async def test_admin_requires_the_admin_token(hub: Hub) -> None:
    resp = await hub.client.get("/admin/v1/providers")
    assert resp.status == 401 and (await resp.json())["error"]["request_id"]
    resp = await hub.client.get("/admin/v1/providers", headers={"Authorization": "Bearer wrong"})
    assert resp.status == 401 and (await resp.json())["error"]["type"] == "unauthorized"
    resp = await hub.client.get("/admin/v1/providers", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert resp.status == 200 and (await resp.json())["items"] == []


async def test_rate_limit_is_429_with_retry_after(make_hub) -> None:  # type: ignore[no-untyped-def]
    hub = await make_hub(rate_limit_rps=0.5, rate_limit_burst=2)
    await hub.add_provider()
    await hub.add_model("gpt-test")
    key = await hub.new_key()
    chain = hub.client.server.app[PIPELINES].chain_for("default")
    (limiter,) = [stage for stage in stages_in(chain) if isinstance(stage, RateLimit)]
    limiter._buckets._clock = FakeClock()  # no public seam; on the real clock a slow machine refills the bucket
    statuses = [(await hub.chat(key))[0] for _ in range(2)]
    status, body, resp = await hub.chat(key)
    assert statuses == [200, 200]
    assert status == 429
    assert resp.headers["Retry-After"] == "2"  # one token at 0.5/s
    assert body["error"]["type"] == "rate_limited" and body["error"]["request_id"]
    assert hub.fake.calls("gpt-test") == 2
    metrics = await (await hub.client.get("/metrics")).text()
    assert "tokenhub_rate_limited_total 1.0" in metrics


async def test_rate_limit_runs_before_auth(make_hub) -> None:  # type: ignore[no-untyped-def]
    hub = await make_hub(rate_limit_rps=0.1, rate_limit_burst=1)
    await hub.chat_refused(None, 401, "unauthorized")
    assert (await hub.chat(None))[0] == 429  # an unauthenticated flood is cut off cheaply


async def test_forwarded_for_is_ignored_unless_the_peer_is_trusted(make_hub) -> None:  # type: ignore[no-untyped-def]
    hub = await make_hub(rate_limit_rps=0.1, rate_limit_burst=1)
    key = await hub.new_key()
    await hub.chat(key, headers={"X-Forwarded-For": "10.0.0.1"})
    status, _, _ = await hub.chat(key, headers={"X-Forwarded-For": "10.0.0.2"})
    assert status == 429  # both counted against 127.0.0.1


async def test_trusted_proxy_forwarded_for_gets_its_own_bucket(make_hub) -> None:  # type: ignore[no-untyped-def]
    hub = await make_hub(rate_limit_rps=0.1, rate_limit_burst=1, trusted_proxies="127.0.0.1/32")
    key = await hub.new_key()
    first = await hub.chat(key, headers={"X-Forwarded-For": "10.0.0.1"})
    second = await hub.chat(key, headers={"X-Forwarded-For": "10.0.0.2"})
    third = await hub.chat(key, headers={"X-Forwarded-For": "10.0.0.1"})
    assert first[0] != 429 and second[0] != 429
    assert third[0] == 429
