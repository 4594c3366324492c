"""Limits and budgets shared by replicas through a real Redis: several in-process TokenHubs, one key prefix."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.conftest import Hub
from tests.fakes.openai_fake import FakeOpenAI, Gated, Reply
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
    """The key's spend over every month's hash under the (per-test) prefix: a test that runs across a month's
    end finds its spend split between two."""
    client = aioredis.Redis.from_url(url)
    try:
        months = [name async for name in client.scan_iter(match=f"{prefix}:spend:????-??")]
        values = [await client.hget(month, key_id) for month in months]
    finally:
        await client.aclose()
    return sum(float(value or 0.0) for value in values)


HOLDS = "l2:hold:"  # where the gate script keeps each account's holds, under the prefix (store/redis_limits.py)


async def _holds(url: str, prefix: str) -> list[bytes]:
    client = aioredis.Redis.from_url(url)
    try:
        return [key async for key in client.scan_iter(match=f"{prefix}:{HOLDS}*")]
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
            configure=_configure(keys, rate_limit_rpm=6),  # one token back every 10 s: none while a slow CI runs this
        )
        started = time.monotonic()
        results = await asyncio.gather(*(_completions(hubs[i % 3], keys["key"]) for i in range(30)))
        elapsed = time.monotonic() - started
        served = sum(1 for status, _ in results if status == 200)
        limited = [body for status, body in results if status == 429]
        # alone, each replica would grant its own 6 (18 of the 30): shared, the three grant 6 (plus any refill)
        assert 6 <= served <= 6 + int(elapsed * 6 / 60) + 1
        assert len(limited) == 30 - served
        assert all("6 requests per minute" in body["error"]["message"] for body in limited)
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

            # 2 s: the refusal below must come while the lease runs, however slow the machine
            assert (await limits.gate([], hold("dead#1", 2000))).held == 0.6
            refused = await limits.gate([], hold("live#2", 60_000))
            assert refused.refused == 0 and refused.info[0][1] == pytest.approx(0.6)  # 0.6 + 0.6 > 1.0
            deadline = time.monotonic() + 10
            while (admitted := await limits.gate([], hold("live#2", 60_000))).held == 0:  # until the lease runs out
                assert admitted.refused == 0 and time.monotonic() < deadline, "the dead replica's hold never expired"
                await asyncio.sleep(0.05)
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


def _gate_calls(hub: Hub, answers: list[asyncio.Future[bytes]] | None = None) -> list[dict[str, Any] | None]:
    """Spy on the replica's gate script calls: each call's reservation (None: rate limits only), and into
    `answers` their pending answers."""
    gate = hub.services.shared_gate
    assert gate is not None
    limits = gate._limits
    calls: list[dict[str, Any] | None] = []
    start = limits.start

    def spy(groups: list[Any], reservation: dict[str, Any] | None) -> Any:
        calls.append(reservation)
        answer = start(groups, reservation)
        if answers is not None:
            answers.append(answer)
        return answer

    limits.start = spy  # type: ignore[method-assign]
    return calls


async def _held(url: str, prefix: str, key_id: str) -> float:
    client = aioredis.Redis.from_url(url)
    try:
        return float(await client.hget(f"{prefix}:{HOLDS}key:{key_id}", "=") or 0.0)
    finally:
        await client.aclose()


BIG = {"input_per_1k": 10.0, "output_per_1k": 20.0}  # a $0.2 worst case for the request below


def _two_models(keys: dict[str, str], budget_usd: float, **limits: int) -> Callable[[Hub], Any]:
    async def configure(hub: Hub) -> None:
        await hub.add_provider()
        await hub.add_model("gpt-test", weight=5, input_per_1k=0.001, output_per_1k=0.002)
        await hub.add_model("gpt-big", weight=5, **BIG)
        key = {"name": "budget", "monthly_budget_usd": budget_usd, **limits}
        data = await hub.admin("POST", "/apikeys", key, expect=201)
        keys["key"], keys["id"] = data["key"], data["id"]

    return configure


async def _ask(hub: Hub, key: str, model: str) -> tuple[int, dict[str, Any]]:
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 5}
    resp = await hub.client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
    return resp.status, await resp.json()


async def test_a_budget_keys_hold_is_sent_before_routing_at_a_bound_then_shrunk_to_the_routed_model(
    aiohttp_client: Callable[..., Any], fake: FakeOpenAI, tmp_path: Path
) -> None:
    async with fresh_redis_prefix() as prefix:
        keys: dict[str, str] = {}
        configure = _two_models(keys, 10.0, rate_limit_rpm=100, rate_limit_tpm=10_000)
        (hub,) = await start_replicas(
            aiohttp_client, fake, tmp_path, 1, redis_url=REDIS_URL, prefix=prefix, configure=configure
        )
        calls = _gate_calls(hub)
        gate = asyncio.Event()  # the call stays in flight until the hold's checks are done
        fake.script("gpt-test", Gated(gate))
        answer = asyncio.ensure_future(_ask(hub, keys["key"], "gpt-test"))
        await fake.wait_until(lambda: fake.in_flight == 1)
        # one round trip, sent from auth: the hold at the most any model could bill (gpt-big's prices)...
        assert len(calls) == 1 and calls[0] is not None
        assert calls[0]["worst"] == pytest.approx(0.2) and calls[0]["need"] == calls[0]["worst"]
        # ... brought down to gpt-test's worst case while the call runs
        deadline = time.monotonic() + 5
        while await _held(REDIS_URL, prefix, keys["id"]) != pytest.approx(COST):
            assert time.monotonic() < deadline, "the hold was not shrunk"
            await asyncio.sleep(0.02)
        assert hub.services.reservations.reserved(f"key:{keys['id']}") == pytest.approx(COST)
        gate.set()
        assert (await answer)[0] == 200
        await _drained([hub])
        assert await _holds(REDIS_URL, prefix) == []
        assert await _redis_spend(REDIS_URL, prefix, keys["id"]) == pytest.approx(COST)


async def test_a_bound_over_what_is_left_falls_back_to_the_exact_hold(
    aiohttp_client: Callable[..., Any], fake: FakeOpenAI, tmp_path: Path
) -> None:
    """$0.01 left: the $0.2 bound is refused before routing, yet gpt-test ($0.00002) fits and is served."""
    async with fresh_redis_prefix() as prefix:
        keys: dict[str, str] = {}
        (hub,) = await start_replicas(
            aiohttp_client, fake, tmp_path, 1, redis_url=REDIS_URL, prefix=prefix, configure=_two_models(keys, 0.01)
        )
        calls = _gate_calls(hub)
        status, body = await _ask(hub, keys["key"], "gpt-test")
        assert status == 200, body
        assert [c["worst"] for c in calls if c is not None] == [pytest.approx(0.2), pytest.approx(COST)]
        status, body = await _ask(hub, keys["key"], "gpt-big")  # it does not fit: routed to the one that does
        assert status == 200 and body["model"] == "gpt-test" and fake.calls("gpt-big") == 0
        await _drained([hub])
        assert await _holds(REDIS_URL, prefix) == []
        assert await _redis_spend(REDIS_URL, prefix, keys["id"]) == pytest.approx(2 * COST)


async def test_an_early_hold_is_released_when_the_request_ends_before_dispatch(
    aiohttp_client: Callable[..., Any], fake: FakeOpenAI, tmp_path: Path
) -> None:
    async with fresh_redis_prefix() as prefix:
        keys: dict[str, str] = {}
        (hub,) = await start_replicas(
            aiohttp_client, fake, tmp_path, 1, redis_url=REDIS_URL, prefix=prefix, configure=_two_models(keys, 10.0)
        )
        answers: list[asyncio.Future[bytes]] = []
        calls = _gate_calls(hub, answers)
        body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 5, "tokenhub": {"min_weight": 10}}
        auth = {"Authorization": f"Bearer {keys['key']}"}
        resp = await hub.client.post("/v1/chat/completions", json=body, headers=auth)
        refusal = await resp.json()
        assert resp.status == 422 and refusal["error"]["code"] == "no_eligible_model", refusal
        assert len(calls) == 1 and calls[0] is not None  # the hold went out before routing refused the model
        assert b'"held"' in await asyncio.wait_for(asyncio.shield(answers[0]), 5)
        deadline = time.monotonic() + 5
        while await _holds(REDIS_URL, prefix):
            assert time.monotonic() < deadline, "the early hold was not released"
            await asyncio.sleep(0.02)
        assert hub.services.reservations.total_usd == 0.0
        assert fake.calls("gpt-test") == fake.calls("gpt-big") == 0


async def test_a_hold_made_after_its_client_hung_up_is_released(
    aiohttp_client: Callable[..., Any], fake: FakeOpenAI, tmp_path: Path
) -> None:
    """The client hangs up while its gate call waits in Redis: the hold Redis makes afterwards is released at
    once, not left counting as spent until its 30 s lease runs out."""
    async with private_redis() as server:
        keys: dict[str, str] = {}
        # The gate call must outwait the pause, not time out: a 10 s Redis timeout against at most 8 s of pause.
        (hub,) = await start_replicas(
            aiohttp_client,
            fake,
            tmp_path,
            1,
            redis_url=server.url,
            prefix="hangup",
            configure=_two_models(keys, 10.0),
            redis_timeout_ms=10_000,
        )
        answers: list[asyncio.Future[bytes]] = []
        _gate_calls(hub, answers)
        gate = hub.services.shared_gate
        assert gate is not None
        admin = aioredis.Redis.from_url(server.url)
        try:
            # Scripts (they write) wait in Redis; a WRITE pause, unlike ALL, still takes the UNPAUSE that ends it
            # as soon as the client has hung up (the 8 s are only a backstop).
            await admin.execute_command("CLIENT", "PAUSE", 8000, "WRITE")
            ask = asyncio.ensure_future(_ask(hub, keys["key"], "gpt-test"))
            await _wait(lambda: gate._limits._in_flight == 1)  # the gate call is sent and waits in Redis
            ask.cancel()  # the client hangs up
            with contextlib.suppress(asyncio.CancelledError):
                await ask
            assert len(answers) == 1
            await _wait(answers[0].cancelled)  # the request went with its client...
            assert gate._limits._in_flight == 1  # ... before Redis answered
            await admin.execute_command("CLIENT", "UNPAUSE")
            await _wait(lambda: gate._limits._in_flight == 0)  # Redis has answered: the hold was made
            await gate.flusher.drained()
            assert await _holds(server.url, "hangup") == []
        finally:
            await admin.execute_command("CLIENT", "UNPAUSE")
            await admin.aclose()
        assert fake.calls("gpt-test") == 0 and hub.services.reservations.total_usd == 0.0
