"""Limits and budgets shared by replicas through a real Redis: several in-process TokenHubs, one key prefix."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from store.shared_budgets import month_tag
from tests.conftest import Hub
from tests.fakes.openai_fake import FakeOpenAI, Reply
from tests.support.backing import REDIS_URL, fresh_redis_prefix, private_redis
from tests.support.replicas import start_replicas

PROMPT = "x" * 40  # estimated at 10 input tokens, what the fake reports
COST = (10 * 0.001 + 5 * 0.002) / 1000  # $0.00002 a request


async def _completions(hub: Hub, key: str) -> tuple[int, dict[str, Any]]:
    body = {"model": "auto", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 5}
    resp = await hub.client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
    return resp.status, await resp.json()


def _configure(keys: dict[str, str], **key_fields: Any) -> Callable[[Hub], Any]:
    async def configure(hub: Hub) -> None:
        await hub.add_provider()
        await hub.add_model("gpt-test", weight=5, input_per_1k=0.001, output_per_1k=0.002)
        data = await hub.admin("POST", "/apikeys", {"name": "shared", **key_fields}, expect=201)
        keys["key"], keys["id"] = data["key"], data["id"]
        free = await hub.admin("POST", "/apikeys", {"name": "free"}, expect=201)
        keys["free"], keys["free_id"] = free["key"], free["id"]

    return configure


async def _drained(hubs: list[Hub]) -> None:
    for hub in hubs:
        gate = hub.services.shared_gate
        assert gate is not None
        await gate.flusher.drained()


async def _sync(hub: Hub) -> None:
    component = next(c for c in hub.services.components if c.name == "shared-spend")
    await component.tick()  # type: ignore[attr-defined]


async def _redis_spend(url: str, prefix: str, key_id: str) -> float:
    client = aioredis.Redis.from_url(url)
    try:
        value = await client.hget(f"{prefix}:spend:{month_tag(time.time())}", key_id)
    finally:
        await client.aclose()
    return float(value or 0.0)


async def _holds(url: str, prefix: str) -> list[bytes]:
    client = aioredis.Redis.from_url(url)
    try:
        return [key async for key in client.scan_iter(match=f"{prefix}:hold*")]
    finally:
        await client.aclose()


async def test_a_budget_for_20_holds_across_3_replicas_under_200_concurrent_requests(
    aiohttp_client: Callable[..., Any], fake: FakeOpenAI, tmp_path: Path
) -> None:
    async with fresh_redis_prefix() as prefix:
        keys: dict[str, str] = {}
        hubs = await start_replicas(
            aiohttp_client,
            fake,
            tmp_path,
            3,
            redis_url=REDIS_URL,
            prefix=prefix,
            configure=_configure(keys, monthly_budget_usd=20 * COST),
        )
        fake.script("gpt-test", *[Reply(delay=0.2)] * 200)  # slow enough that they overlap
        results = await asyncio.gather(*(_completions(hubs[i % 3], keys["key"]) for i in range(200)))
        served = [body for status, body in results if status == 200]
        refused = {(status, body["error"]["code"]) for status, body in results if status != 200}
        assert 0 < len(served) <= 20 and refused == {(429, "monthly_budget_exceeded")}
        assert fake.calls("gpt-test") == len(served)
        await _drained(hubs)
        spent = await _redis_spend(REDIS_URL, prefix, keys["id"])
        assert spent == pytest.approx(len(served) * COST) and spent <= 20 * COST + 1e-12
        assert await _holds(REDIS_URL, prefix) == []  # every hold released with its cost moved into the spend
        for hub in hubs:  # each replica's view of the key's spend is the cluster's (after its periodic read)
            await _sync(hub)
            assert hub.services.key_ledger.spent(keys["id"], time.time()) == pytest.approx(spent)
            assert hub.services.reservations.total_usd == 0.0


async def test_a_keys_requests_per_minute_hold_across_3_replicas(
    aiohttp_client: Callable[..., Any], fake: FakeOpenAI, tmp_path: Path
) -> None:
    async with fresh_redis_prefix() as prefix:
        keys: dict[str, str] = {}
        hubs = await start_replicas(
            aiohttp_client,
            fake,
            tmp_path,
            3,
            redis_url=REDIS_URL,
            prefix=prefix,
            configure=_configure(keys, rate_limit_rpm=30),
        )
        started = time.monotonic()
        results = await asyncio.gather(*(_completions(hubs[i % 3], keys["key"]) for i in range(90)))
        elapsed = time.monotonic() - started
        served = sum(1 for status, _ in results if status == 200)
        limited = [body for status, body in results if status == 429]
        # alone, each replica would grant its own 30: shared, the three grant 30 (plus what refilled meanwhile)
        assert 30 <= served <= 30 + int(elapsed * 30 / 60) + 1
        assert len(limited) == 90 - served
        assert all("30 requests per minute" in body["error"]["message"] for body in limited)
        # the bucket is known empty now: the next request is refused before any work, on every replica
        for hub in hubs:
            status, body = await _completions(hub, keys["key"])
            assert status == 429 and "requests per minute" in body["error"]["message"]
        # the other key is not limited by this one
        assert (await _completions(hubs[1], keys["free"]))[0] == 200


async def test_the_per_ip_limit_is_shared(aiohttp_client: Callable[..., Any], fake: FakeOpenAI, tmp_path: Path) -> None:
    async with fresh_redis_prefix() as prefix:
        keys: dict[str, str] = {}
        hubs = await start_replicas(
            aiohttp_client,
            fake,
            tmp_path,
            3,
            redis_url=REDIS_URL,
            prefix=prefix,
            configure=_configure(keys),
            rate_limit_rps=0.01,
            rate_limit_burst=12,
        )
        results = await asyncio.gather(*(_completions(hubs[i % 3], keys["free"]) for i in range(36)))
        statuses = [status for status, _ in results]
        assert statuses.count(200) == 12 and statuses.count(429) == 24
        assert {body["error"]["type"] for status, body in results if status == 429} == {"rate_limit_error"}
        # a replica that was refused remembers the IP is over its limit: it refuses before the key is looked at
        refused = hubs[next(i % 3 for i, (status, _) in enumerate(results) if status == 429)]
        resp = await refused.client.post("/v1/chat/completions", json={"messages": []})
        assert resp.status == 429
        metrics = await (await refused.client.get("/metrics")).text()
        assert "tokenhub_shared_state_fallbacks_total" not in metrics or 'what="rate_limit"' not in metrics


async def test_a_killed_replicas_holds_expire_with_their_lease() -> None:
    """A hold whose lease is not renewed (its replica died) stops counting; a renewed one keeps counting."""
    from store.redis_limits import RedisLimits
    from store.redis_link import RedisLink

    async with fresh_redis_prefix() as prefix:
        link = RedisLink(REDIS_URL, prefix)
        await link.start()
        try:
            limits = RedisLimits(link)

            def hold(holder: str, lease_ms: int) -> dict[str, Any]:
                account = ["key:k", 1.0, "spend:m", "k"]
                return {"h": holder, "prev": "", "a": [account], "worst": 0.6, "need": 0.6, "lease": lease_ms}

            assert (await limits.gate([], hold("dead#1", 300))).held == 0.6
            refused = await limits.gate([], hold("live#2", 60_000))
            assert refused.refused == 0 and refused.info[0][1] == pytest.approx(0.6)  # 0.6 + 0.6 > 1.0
            await asyncio.sleep(0.5)  # the dead replica's lease runs out
            admitted = await limits.gate([], hold("live#2", 60_000))
            assert admitted.held == 0.6 and admitted.info[0][1] == pytest.approx(0.6)
            # renewed: a live replica's hold outlives its first lease
            await limits.apply([{"o": "renew", "l": [["key:k", "live#2"]], "lease": 60_000}])
            assert (await limits.gate([], hold("other#3", 60_000))).refused == 0
        finally:
            await link.stop()


async def _wait(predicate: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("on_outage", ["closed", "open"])
async def test_redis_stopped_mid_test_then_restarted(
    aiohttp_client: Callable[..., Any], fake: FakeOpenAI, tmp_path: Path, on_outage: str
) -> None:
    async with private_redis() as server:
        keys: dict[str, str] = {}
        hubs = await start_replicas(
            aiohttp_client,
            fake,
            tmp_path,
            2,
            redis_url=server.url,
            prefix="outage",
            configure=_configure(keys, monthly_budget_usd=100 * COST),
            shared_budget_on_outage=on_outage,
        )
        for i in range(4):
            assert (await _completions(hubs[i % 2], keys["key"]))[0] == 200
        await _drained(hubs)
        for hub in hubs:
            await _sync(hub)  # each writes the spend it read to its durable copy
        assert await _redis_spend(server.url, "outage", keys["id"]) == pytest.approx(4 * COST)

        server.stop()  # Redis is gone, and comes back empty (no persistence)
        status, body = await _completions(hubs[0], keys["key"])
        if on_outage == "closed":
            assert status == 503 and body["error"]["code"] == "shared_budget_unavailable"
            assert "shared budget store" in body["error"]["message"] and "redis://" not in str(body)
        else:
            assert status == 200
        assert (await _completions(hubs[1], keys["free"]))[0] == 200  # no budget: served on local limits
        assert (await _completions(hubs[1], keys["free"]))[0] == 200
        health = await (await hubs[1].client.get("/healthz")).json()
        assert health["shared_state"]["up"] is False and health["shared_state"]["fallback"] == "local"
        metrics = await (await hubs[0].client.get("/metrics")).text()
        assert "tokenhub_shared_state_up 0.0" in metrics
        assert 'tokenhub_shared_state_fallbacks_total{what="budget"}' in metrics
        outage_spend = 1 if on_outage == "open" else 0

        await server.start()
        await _wait(lambda: all(hub.services.redis is not None and hub.services.redis.up for hub in hubs))
        await _drained(hubs)
        # re-synced: the key's spend re-seeded from what the replicas knew, plus what they recorded meanwhile
        assert await _redis_spend(server.url, "outage", keys["id"]) == pytest.approx((4 + outage_spend) * COST)
        assert await _redis_spend(server.url, "outage", keys["free_id"]) == pytest.approx(2 * COST)
        assert (await _completions(hubs[0], keys["key"]))[0] == 200  # shared again
        await _drained(hubs)
        assert await _redis_spend(server.url, "outage", keys["id"]) == pytest.approx((5 + outage_spend) * COST)
        health = await (await hubs[0].client.get("/healthz")).json()
        assert health["shared_state"] == {"backend": "redis", "up": True}
