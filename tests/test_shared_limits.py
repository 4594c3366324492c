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
