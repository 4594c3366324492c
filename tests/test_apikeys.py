"""API-key lifecycle over HTTP: create, use, last-used, rotate, disable, edit, expire, revoke; monthly
budgets (enforced, seeded from the request log after a restart, reset when paid); per-key rate limits."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from store.config_store import key_digest
from tests.conftest import Hub
from tests.fakes.clock import FakeClock

COST_PER_REQUEST = 10 / 1000 * 0.001 + 5 / 1000 * 0.002  # the fake's usage at ready_hub's prices
# A request capped at one output token: its estimate (~$0.000003) fits budgets of a few requests, while the
# fake still reports 5 output tokens, so the recorded cost exceeds the estimate (the overshoot budgets allow).
TINY = {"parameters": {"max_tokens": 1}}


async def _key(hub: Hub, **fields: Any) -> tuple[str, str]:
    body = await hub.admin("POST", "/apikeys", {"name": "lifecycle", **fields}, expect=201)
    return body["key"], body["id"]


def _db(tmp_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(tmp_path / "data" / "tokenhub.sqlite")


async def test_key_lifecycle_end_to_end(ready_hub: tuple[Hub, str], tmp_path: Path) -> None:
    hub, _ = ready_hub
    created = await hub.admin("POST", "/apikeys", {"name": "ci", "scopes": ["chat", "chat"]}, expect=201)
    key, key_id = created["key"], created["id"]
    assert re.fullmatch(r"tokenhub_[0-9a-f]{64}", key) and created["scopes"] == ["chat"]
    assert created["prefix"] == key[:17] and "shown only once" in created["warning"]
    listed = (await hub.admin("GET", "/apikeys"))["keys"]
    assert key not in str(listed) and {k["id"] for k in listed} >= {key_id}
    row = _db(tmp_path).execute("SELECT key_digest FROM api_keys WHERE id = ?", (key_id,)).fetchone()
    assert row[0] == hashlib.sha256(key.encode()).hexdigest()

    # use: last_used_at is known at once (memory), and reaches SQLite with the next batched flush
    await hub.chat_ok(key)
    mine = next(k for k in (await hub.admin("GET", "/apikeys"))["keys"] if k["id"] == key_id)
    assert mine["last_used_at"] is not None
    assert _db(tmp_path).execute("SELECT last_used_at FROM api_keys WHERE id = ?", (key_id,)).fetchone()[0] is None
    await hub.services.housekeeping.tick()
    assert _db(tmp_path).execute("SELECT last_used_at FROM api_keys WHERE id = ?", (key_id,)).fetchone()[0]

    # rotate: the old secret is refused on the very next request; id, name and scopes stay
    rotated = await hub.admin("POST", f"/apikeys/{key_id}/rotate", expect=200)
    new_key = rotated["key"]
    assert new_key != key and rotated["id"] == key_id and rotated["name"] == "ci" and rotated["scopes"] == ["chat"]
    status, body, _ = await hub.chat(key)
    assert status == 401 and body["error"]["message"] == "invalid api key"
    await hub.chat_ok(new_key)

    # disable / enable
    await hub.admin("PATCH", f"/apikeys/{key_id}", {"enabled": False}, expect=200)
    await hub.chat_refused(new_key, 401, "unauthorized")
    await hub.admin("PATCH", f"/apikeys/{key_id}", {"enabled": True, "name": "ci-2"}, expect=200)
    await hub.chat_ok(new_key)

    # scopes
    await hub.admin("PATCH", f"/apikeys/{key_id}", {"scopes": ["embeddings"]}, expect=200)
    status, body, _ = await hub.chat(new_key)
    assert status == 403 and "chat" in body["error"]["message"]
    await hub.admin("PATCH", f"/apikeys/{key_id}", {"scopes": ["chat", "plan"]}, expect=200)

    # expire, and lift the expiry again
    await hub.admin("PATCH", f"/apikeys/{key_id}", {"expires_in": "1ms"}, expect=200)
    status, body, _ = await hub.chat(new_key)
    assert status == 401 and body["error"]["message"] == "api key expired"
    lifted = await hub.admin("PATCH", f"/apikeys/{key_id}", {"expires_in": None}, expect=200)
    assert lifted["expires_at"] is None
    await hub.chat_ok(new_key)

    # revoke
    await hub.admin("DELETE", f"/apikeys/{key_id}", expect=200)
    await hub.chat_refused(new_key, 401, "unauthorized")
    await hub.admin("POST", f"/apikeys/{key_id}/rotate", expect=404)
    await hub.admin("PATCH", f"/apikeys/{key_id}", {"enabled": True}, expect=404)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "body"),
        ({"enabled": "yes"}, "enabled"),
        ({"monthly_budget_usd": -1}, "monthly_budget_usd"),
        ({"rate_limit_rpm": 1.5}, "rate_limit_rpm"),
        ({"scopes": ["admin"]}, "scopes.0"),
        ({"name": ""}, "name"),
        ({"expires_in": "soon"}, "expires_in"),
        ({"key": "tokenhub_x"}, "key"),  # unknown fields are refused, the secret is not settable
    ],
)
async def test_patch_validation_names_the_field(hub: Hub, body: dict[str, Any], field: str) -> None:
    _, key_id = await _key(hub)
    error = (await hub.admin("PATCH", f"/apikeys/{key_id}", body, expect=400))["error"]
    assert error["field"] == field


async def test_monthly_budget_is_enforced_and_can_be_reset(ready_hub: tuple[Hub, str]) -> None:
    hub, _ = ready_hub
    budget = COST_PER_REQUEST * 1.5
    key, key_id = await _key(hub, monthly_budget_usd=budget)
    await hub.chat_ok(key, **TINY)
    await hub.chat_ok(key, **TINY)  # 0.5 x cost left covers the estimate; it ends at 2 x cost
    served = len(hub.fake.requests)
    status, body, resp = await hub.chat(key, **TINY)
    assert status == 429 and body["error"]["type"] == "monthly_budget_exceeded"
    assert body["error"]["budget_usd"] == budget
    assert body["error"]["spent_usd"] == pytest.approx(2 * COST_PER_REQUEST)
    assert "budget" in body["error"]["message"] and body["error"]["request_id"] == resp.headers["X-Request-Id"]
    assert len(hub.fake.requests) == served
    # the same refusal in the OpenAI shape names the budget and the spend in its message
    resp = await hub.client.post(
        "/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {key}"},
    )
    error = (await resp.json())["error"]
    assert resp.status == 429 and error["code"] == "monthly_budget_exceeded" and f"${budget:.2f}" in error["message"]
    listed = next(k for k in (await hub.admin("GET", "/apikeys"))["keys"] if k["id"] == key_id)
    assert listed["current_spend_usd"] == pytest.approx(2 * COST_PER_REQUEST)

    await hub.admin("POST", f"/apikeys/{key_id}/paid", expect=200)
    await hub.chat_ok(key, **TINY)
    await hub.admin("PATCH", f"/apikeys/{key_id}", {"monthly_budget_usd": 0}, expect=200)  # 0 = no budget
    for _ in range(3):
        await hub.chat_ok(key)


async def test_spend_survives_a_restart_through_the_request_log(make_hub: Any) -> None:
    hub = await make_hub()
    await hub.add_provider()
    await hub.add_model("gpt-test", input_per_1k=0.001, output_per_1k=0.002)
    key, _ = await _key(hub, monthly_budget_usd=COST_PER_REQUEST * 1.5)
    await hub.chat_ok(key, **TINY)
    await hub.chat_ok(key, **TINY)
    await hub.client.close()  # shutdown drains the record queue into DuckDB
    again = await make_hub()
    status, body, _ = await again.chat(key)
    assert status == 429 and body["error"]["spent_usd"] == pytest.approx(2 * COST_PER_REQUEST)


async def test_per_key_requests_per_minute(ready_hub: tuple[Hub, str]) -> None:
    hub, _ = ready_hub
    clock = FakeClock(100.0)
    hub.services.key_limits.clock = clock
    key, key_id = await _key(hub, rate_limit_rpm=2)
    other, _ = await _key(hub)
    await hub.chat_ok(key)
    await hub.chat_ok(key)
    status, body, resp = await hub.chat(key)
    assert status == 429 and body["error"]["message"] == "api key rate limit exceeded: 2 requests per minute"
    assert int(resp.headers["Retry-After"]) == 30  # one request comes back every 30 s
    assert (await hub.chat(other))[0] == 200  # another key is not affected
    clock.advance(30)
    await hub.chat_ok(key)
    await hub.admin("PATCH", f"/apikeys/{key_id}", {"rate_limit_rpm": 0}, expect=200)
    for _ in range(3):
        await hub.chat_ok(key)


async def test_per_key_tokens_per_minute_charges_the_estimate_then_the_actual(ready_hub: tuple[Hub, str]) -> None:
    hub, _ = ready_hub
    clock = FakeClock(100.0)
    hub.services.key_limits.clock = clock
    key, _ = await _key(hub, rate_limit_tpm=60)
    # ~100 estimated input tokens: admitted (the bucket was positive); actual usage is 15 tokens,
    # so once recorded the bucket holds 60 - 15 = 45 again.
    await hub.chat_ok(key, "x" * 400)
    assert (await hub.chat(key, "x" * 400))[0] == 200  # 45 > 0: admitted, settles at 30
    assert (await hub.chat(key, "x" * 400))[0] == 200  # settles at 15
    assert (await hub.chat(key, "x" * 400))[0] == 200  # settles at 0
    status, body, resp = await hub.chat(key, "x" * 400)
    assert status == 429 and "60 tokens per minute" in body["error"]["message"]
    assert int(resp.headers["Retry-After"]) == 1
    clock.advance(1)  # one token per second
    await hub.chat_ok(key, "x" * 400)


async def test_last_used_times_are_flushed_at_shutdown(make_hub: Any, tmp_path: Path) -> None:
    hub = await make_hub()
    await hub.add_provider()
    await hub.add_model("gpt-test")
    key, key_id = await _key(hub)
    before = time.time()
    await hub.chat_ok(key)
    await hub.client.close()
    last_used = _db(tmp_path).execute("SELECT last_used_at FROM api_keys WHERE id = ?", (key_id,)).fetchone()[0]
    assert last_used is not None and last_used >= before


@pytest.mark.parametrize("plaintext", ["tk-" + "a" * 64, "tk-ñ-€-𝄞", ""])
def test_a_key_digest_is_its_sha256(plaintext: str) -> None:
    """The stored digests are SHA-256 hex: the built-in implementation the request path uses gives the same."""
    assert key_digest(plaintext) == hashlib.sha256(plaintext.encode()).hexdigest()
