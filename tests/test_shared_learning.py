"""Replicas sharing learning, health, sessions and alias traffic through a real Redis (docs/scaling.md,
"Learning, health and sessions across replicas"): several TokenHub apps in one event loop, each with its own
data directory, sharing one fresh Redis key prefix (or a private redis-server that is killed and restarted)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from admin_ui.sessions import COOKIE
from pipeline.types import AliasInfo, AliasVariant
from stages.aliases import AliasChooser
from tests.conftest import ADMIN_TOKEN, Hub
from tests.fakes.openai_fake import Fail, FakeOpenAI, QuotaExceeded
from tests.support.backing import REDIS_URL, fresh_redis_prefix, private_redis

Start = Callable[..., Awaitable[Hub]]


@pytest.fixture
async def replicas(make_hub: Any, tmp_path: Path) -> AsyncIterator[Start]:
    """start(name, **settings): a replica on the machine's Redis under this test's own prefix."""
    started: list[Hub] = []
    async with fresh_redis_prefix() as prefix:

        async def start(name: str, url: str = REDIS_URL, **overrides: Any) -> Hub:
            hub = await make_hub(
                data_dir=str(tmp_path / name), redis_url=url, redis_prefix=prefix, shared_sync_ms=50, **overrides
            )
            started.append(hub)
            return hub

        try:
            yield start
        finally:  # stopped before their keys are deleted, so no background push re-creates them
            for hub in started:
                await hub.client.close()


async def eventually(check: Callable[[], Any], what: str, tries: int = 200) -> None:
    """Bounded wait (at most tries x 50 ms) for `check()` to hold (an awaitable is awaited)."""
    for _ in range(tries):
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


async def _setup(hub: Hub, *models: str) -> str:
    await hub.add_provider()
    for model in models:
        await hub.add_model(model, weight=5, input_per_1k=0.001, output_per_1k=0.001)
    return await hub.new_key()


async def _arms(hub: Hub) -> dict[str, dict[str, Any]]:
    return {arm["model_id"]: arm for arm in (await hub.admin("GET", "/rewards"))["arms"]}


async def _feedback(hub: Hub, key: str, request_id: str, score: float) -> None:
    resp = await hub.client.post(
        "/v1/feedback", json={"request_id": request_id, "score": score}, headers={"Authorization": f"Bearer {key}"}
    )
    assert resp.status == 200, await resp.text()


async def test_feedback_through_one_replica_changes_the_bandit_on_another(replicas: Start) -> None:
    a, b = await replicas("a", bandit_seed=3), await replicas("b", bandit_seed=4)
    key_a, key_b = await _setup(a, "alpha", "beta"), await _setup(b, "alpha", "beta")
    assert await _arms(b) == {}
    served: list[tuple[str, str]] = []
    for _ in range(24):
        _, body, resp = await a.chat(key_a, policy={"mode": "thompson"})
        served.append((body["negotiated_model"], resp.headers["X-Request-Id"]))
    counts = Counter(model for model, _ in served)
    assert len(counts) == 2, counts  # Thompson sampling tried both
    # B learned every observation A made (and nothing else): the same discounted pulls.
    await eventually(lambda: _same_arms(a, b), "B has A's observations", tries=100)
    before = await _arms(b)
    # Feedback on A's answers (after B learned them): alpha's answers are poor, beta's good.
    for model, request_id in served:
        await _feedback(a, key_a, request_id, 0.0 if model == "alpha" else 1.0)
    await eventually(lambda: _same_arms(a, b), "B's posteriors follow A's feedback")
    after_b = await _arms(b)
    for model in counts:
        moved = after_b[model]["mean"] - before[model]["mean"]
        assert moved < 0 if model == "alpha" else moved > 0, (model, before, after_b)
    # ... and B's own Thompson choices now prefer beta.
    picks = [(await b.chat_ok(key_b, policy={"mode": "thompson"}))["negotiated_model"] for _ in range(20)]
    assert picks.count("beta") >= 15, picks


async def _same_arms(one: Hub, other: Hub) -> bool:
    """Both replicas hold the same posteriors (pulls and means), A having learned something."""
    mine, theirs = await _arms(one), await _arms(other)
    return bool(mine) and mine == theirs


async def _pulls_are(hub: Hub, expected: dict[str, float], tolerance: float = 0.1) -> bool:
    """The arms' discounted pulls (a few observations lose under 0.1 to the discount)."""
    arms = await _arms(hub)
    return set(arms) == set(expected) and all(abs(arms[m]["pulls"] - n) < tolerance for m, n in expected.items())


async def _two_providers(hub: Hub, bad: FakeOpenAI) -> str:
    await hub.add_provider("good")
    await hub.add_provider("bad", base_url=bad.base_url)
    await hub.add_model("primary", "bad", weight=9, input_per_1k=0.001, output_per_1k=0.001)
    await hub.add_model("backup", "good", weight=1, input_per_1k=0.001, output_per_1k=0.001)
    return await hub.new_key()


async def test_a_breaker_opened_by_one_replica_is_skipped_by_another_and_its_recovery_too(replicas: Start) -> None:
    async with FakeOpenAI() as bad:
        settings = {"breaker_cooldown_secs": 4, "provider_max_retries": 0}
        a, b = await replicas("a", **settings), await replicas("b", **settings)
        key_a, key_b = await _two_providers(a, bad), await _two_providers(b, bad)
        bad.script("primary", *[Fail(500)] * 5)
        for _ in range(5):  # each fails over to the backup; the fifth consecutive error opens the breaker
            assert (await a.chat_ok(key_a))["negotiated_model"] == "backup"
        assert a.services.health.breaker_state("bad") == "open"
        await eventually(lambda: b.services.health.unavailable_reason("bad") == "health_down", "B skips bad")
        calls = bad.calls("primary")
        assert (await b.chat_ok(key_b))["negotiated_model"] == "backup"
        assert bad.calls("primary") == calls  # B never tried the provider A found down
        # A's half-open trial succeeds (the fake answers again): the breaker closes on B too.
        await eventually(lambda: a.services.health.breaker_state("bad") == "half_open", "A half-opens", tries=200)
        assert (await a.chat_ok(key_a))["negotiated_model"] == "primary"
        await eventually(lambda: b.services.health.get("bad").state == "healthy", "B sees the recovery")
        assert b.services.health.breaker_state("bad") == "closed"


async def test_a_retry_after_is_honoured_by_every_replica(replicas: Start) -> None:
    async with FakeOpenAI() as bad:
        a, b = await replicas("a", provider_max_retries=0), await replicas("b", provider_max_retries=0)
        key_a, key_b = await _two_providers(a, bad), await _two_providers(b, bad)
        bad.script("primary", Fail(429, headers={"Retry-After": "60"}))
        assert (await a.chat_ok(key_a))["negotiated_model"] == "backup"
        await eventually(lambda: b.services.health.unavailable_reason("bad") == "rate_limited", "B backs off")
        calls = bad.calls("primary")
        for _ in range(3):
            assert (await b.chat_ok(key_b))["negotiated_model"] == "backup"
        assert bad.calls("primary") == calls


async def test_a_quota_disable_and_its_admin_re_enable_reach_every_replica(replicas: Start) -> None:
    async with FakeOpenAI() as bad:
        a, b = await replicas("a", provider_max_retries=0), await replicas("b", provider_max_retries=0)
        key_a, _ = await _two_providers(a, bad), await _two_providers(b, bad)
        bad.script("primary", QuotaExceeded())
        assert (await a.chat_ok(key_a))["negotiated_model"] == "backup"
        await eventually(lambda: b.services.model_disables.reason("primary") is not None, "B disables primary")
        await b.admin("PATCH", "/models/primary", {"enabled": True}, expect=200)  # paid: re-enabled on B
        await eventually(lambda: a.services.model_disables.reason("primary") is None, "A re-enables primary")
        assert (await a.chat_ok(key_a))["negotiated_model"] == "primary"


async def _sign_in(hub: Hub) -> str:
    resp = await hub.client.post("/admin/v1/session", json={"token": ADMIN_TOKEN})
    assert resp.status == 201
    return resp.cookies[COOKIE].value


async def _csrf(hub: Hub, cookie: str) -> str:
    hub.client.session.cookie_jar.clear()
    info = await hub.client.get("/admin/v1/session", headers={"Cookie": f"{COOKIE}={cookie}"})
    body = await info.json()
    assert body["signed_in"] is True, body
    return str(body["csrf_token"])


async def _with_cookie(
    hub: Hub, cookie: str, method: str = "GET", path: str = "/admin/v1/providers", csrf: str = ""
) -> int:
    hub.client.session.cookie_jar.clear()  # only the cookie given here
    headers = {"Cookie": f"{COOKIE}={cookie}"} | ({"X-CSRF-Token": csrf} if csrf else {})
    resp = await hub.client.request(method, path, headers=headers)
    return resp.status


async def test_a_session_started_on_one_replica_works_on_another_and_signs_out_everywhere(replicas: Start) -> None:
    a, b = await replicas("a"), await replicas("b")
    cookie = await _sign_in(a)
    assert await _with_cookie(b, cookie) == 200
    csrf = await _csrf(b, cookie)  # the same session (and CSRF token) on B
    assert csrf == await _csrf(a, cookie)
    assert await _with_cookie(b, cookie, "DELETE", "/admin/v1/session", csrf) == 200  # signed out on B ...
    assert await _with_cookie(a, cookie) == 401  # ... is signed out on A
    assert await _with_cookie(b, "not-a-session") == 401


def test_replica_round_robin_counters_split_an_alias_by_its_weights() -> None:
    alias = AliasInfo("rr", (AliasVariant("a", 3), AliasVariant("b", 1)), sticky_by="round_robin")
    choosers = [AliasChooser(salt=f"replica-{i}") for i in range(3)]
    starts = {chooser.choose(alias, request_id="x").model_id for chooser in choosers}
    served = Counter[str]()
    # Any interleaving: each replica's own walk is split 3:1, so the sum is within 3 x (4 - 1) of exact.
    for i in range(1000):
        served[choosers[(i * 7) % 3 if i % 5 else 0].choose(alias, request_id=str(i)).model_id] += 1
    assert abs(served["a"] - 750) <= 9 and served["a"] + served["b"] == 1000
    assert AliasChooser().choose(alias, request_id="x").model_id == "a"  # one process: the walk starts first
    assert starts  # salted walks start wherever their salt says (checked below over many replicas)
    first = Counter(AliasChooser(salt=f"r{i}").choose(alias, request_id="x").model_id for i in range(400))
    assert 250 <= first["a"] <= 350, first  # about 3 in 4 replicas start on "a", not all of them


async def test_redis_killed_and_restarted_mid_test(make_hub: Any, tmp_path: Path) -> None:
    async with private_redis() as redis:
        hubs: list[Hub] = []
        try:
            for name in ("a", "b"):
                hubs.append(await make_hub(data_dir=str(tmp_path / name), redis_url=redis.url, shared_sync_ms=50))
            a, b = hubs
            key_a = await _setup(a, "alpha")
            await _setup(b, "alpha")
            await a.chat_ok(key_a)
            await eventually(lambda: _pulls_are(b, {"alpha": 1.0}), "B learned A's first request")
            redis.stop()
            for _ in range(3):  # A serves on its local state while Redis is down
                await a.chat_ok(key_a)
            await eventually(lambda: not a.services.redis.up, "A notices Redis is down")  # type: ignore[union-attr]
            health = await a.client.get("/healthz")
            assert (await health.json())["shared_state"]["up"] is False
            cookie = await _sign_in(a)  # a sign-in while down lives on A only, for now
            assert await _with_cookie(a, cookie) == 200
            await eventually(
                lambda: _fallbacks(a, "bandit") > 0 and _fallbacks(a, "sessions") > 0, "fallbacks are counted"
            )
            assert await _pulls_are(b, {"alpha": 1.0})  # B did not hear of A's requests meanwhile
            await redis.start()  # empty: what the replicas learned is pushed again
            await eventually(lambda: _pulls_are(b, {"alpha": 4.0}), "B learns what A did during the outage")
            assert await _pulls_are(a, {"alpha": 4.0})
            await eventually(lambda: _with_status(b, cookie, 200), "A's sign-in reaches B")
        finally:
            for hub in hubs:
                await hub.client.close()


def _fallbacks(hub: Hub, what: str) -> float:
    return hub.services.metrics.shared_state_fallbacks.labels(what)._value.get()


async def _with_status(hub: Hub, cookie: str, status: int) -> bool:
    return await _with_cookie(hub, cookie) == status
