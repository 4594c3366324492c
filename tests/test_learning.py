"""Routing that learns: the bandit, rewards in the request log, client feedback, simulation."""

from __future__ import annotations

import random
from typing import Any

import pytest

from stages.bandit import Bandit, base_reward, reward, token_bucket
from stages.learning import evidence
from tests.conftest import Hub
from tests.fakes.clock import FakeClock
from tests.fakes.openai_fake import Fail


def test_thompson_converges_on_a_seeded_two_arm_problem() -> None:
    bandit = Bandit(half_life_secs=1e9, seed=7)
    truth = {"good": 0.8, "poor": 0.4}
    world = random.Random(11)
    picks = []
    for _ in range(600):
        draws = dict(zip(truth, bandit.samples(list(truth), "small"), strict=True))
        arm = max(draws, key=draws.__getitem__)
        picks.append(arm)
        bandit.update(arm, "small", 1.0 if world.random() < truth[arm] else 0.0)
    assert picks[-200:].count("good") >= 180


def test_discounting_lets_the_policy_adapt_when_an_arm_changes() -> None:
    clock = FakeClock()
    bandit = Bandit(half_life_secs=60, seed=3, clock=clock)
    for _ in range(300):  # long, old evidence that "a" is excellent
        bandit.update("a", "small", 0.95)
        bandit.update("b", "small", 0.6)
    clock.advance(600)  # ten half-lives later "a" has degraded
    for _ in range(40):
        bandit.update("a", "small", 0.05)
        bandit.update("b", "small", 0.6)
    wins = sum(max(zip(bandit.samples(["a", "b"], "small"), "ab", strict=True))[1] == "b" for _ in range(200))
    assert wins >= 180


def test_rebuild_from_the_log_matches_live_updates() -> None:
    clock = FakeClock()
    live, rebuilt = Bandit(half_life_secs=100, clock=clock), Bandit(half_life_secs=100, clock=clock)
    rows = [("m", 10, 0.9, clock.now - 50, "x=transient, m=ok"), ("", 10, 0.0, clock.now - 20, "m=fatal")]
    for model, tokens, value, at in evidence(rows):
        live.update(model, token_bucket(tokens), value, at=at)
    assert rebuilt.rebuild(evidence(rows)) == 3  # x: 0; m: 0.9 then 0
    arms = {(a["model_id"]): a for a in rebuilt.describe()}
    assert {a["model_id"]: a for a in live.describe()} == arms
    assert arms["x"]["mean"] < 0.5 and arms["m"]["pulls"] == pytest.approx(2 ** (-0.5) + 2 ** (-0.2), rel=1e-3)


def test_reward_formula() -> None:
    assert reward(False, 0.5) == 0.0
    assert reward(True, base_reward(0.0, 0.0, 20_000)) == 1.0
    assert reward(True, base_reward(0.05, 10_000, 20_000)) == pytest.approx(0.3 * 0.5 + 0.3 * 0.5 + 0.4)
    assert reward(True, base_reward(1.0, 10**6, 500), quality=0.5) == pytest.approx(0.2)
    assert [token_bucket(n) for n in (999, 1000, 10_000, 10_001)] == ["small", "medium", "medium", "large"]


async def _setup(hub: Hub, *models: str) -> str:
    await hub.add_provider()
    for model in models or ("gpt-test",):
        await hub.add_model(model, weight=5, input_per_1k=0.001, output_per_1k=0.001)
    return await hub.new_key()


async def _row(hub: Hub, request_id: str) -> dict[str, Any]:
    await hub.services.records.flush()
    rows = await hub.admin("GET", f"/logs?request_id={request_id}")
    return rows["logs"][0]


async def test_rewards_and_attempts_are_recorded(hub: Hub) -> None:
    key = await _setup(hub, "primary", "backup")
    hub.fake.script("primary", Fail(403))
    status, body, resp = await hub.chat(key, policy={"mode": "cheap"}, model_hint="primary")
    assert status == 200 and body["negotiated_model"] == "backup"
    row = await _row(hub, resp.headers["X-Request-Id"])
    assert row["attempts"] == "primary=fatal, backup=ok"
    assert 0.4 < row["reward"] <= 1.0 and row["feedback_score"] is None
    arms = {a["model_id"]: a for a in (await hub.admin("GET", "/rewards"))["arms"]}
    assert arms["primary"]["pulls"] == pytest.approx(1, rel=1e-3) and arms["primary"]["mean"] < 0.5
    assert arms["backup"]["mean"] > 0.5
    hub.fake.script("primary", Fail(403))
    hub.fake.script("backup", Fail(403))
    status, _, resp = await hub.chat(key)
    failed = await _row(hub, resp.headers["X-Request-Id"])
    assert (
        status == 502
        and failed["reward"] == 0.0
        and set(failed["attempts"].split(", ")) == {"primary=fatal", "backup=fatal"}
    )


async def test_feedback_folds_the_score_into_the_reward(hub: Hub) -> None:
    key = await _setup(hub)
    _, _, resp = await hub.chat(key)
    request_id = resp.headers["X-Request-Id"]
    key_id = hub.services.identify(key).id  # type: ignore[union-attr]
    before = hub.services.recent_requests.get(key_id, request_id)[0].reward  # type: ignore[index]
    answer = await hub.client.post(
        "/v1/feedback",
        json={"request_id": request_id, "score": 0.25, "comment": "missed the point"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert answer.status == 200
    body = await answer.json()
    assert body["reward"] == pytest.approx(before - 0.4 * 0.75)
    row = await _row(hub, request_id)  # the record was still queued: written with the new values
    assert row["reward"] == pytest.approx(body["reward"]) and row["feedback_score"] == 0.25
    assert row["feedback_comment"] == "missed the point"
    # rated again after it reached DuckDB, and after it left the in-memory index
    hub.services.recent_requests._records.clear()
    answer = await hub.client.post(
        "/v1/feedback", json={"request_id": request_id, "score": 1.0}, headers={"Authorization": f"Bearer {key}"}
    )
    assert answer.status == 200 and (await answer.json())["reward"] == pytest.approx(before)
    row = await _row(hub, request_id)
    assert row["reward"] == pytest.approx(before) and row["feedback_score"] == 1.0
    assert row["feedback_comment"] is None  # a later rating replaces the earlier one, comment included


@pytest.mark.parametrize(
    ("case", "status"),
    [("no_key", 401), ("other_key", 404), ("unknown", 404), ("score", 400), ("failed", 409), ("not_json", 400)],
)
async def test_feedback_is_authorised_and_validated(hub: Hub, case: str, status: int) -> None:
    key = await _setup(hub)
    if case == "failed":
        hub.fake.script("gpt-test", Fail(403))
    _, _, resp = await hub.chat(key)
    payload: Any = {"request_id": resp.headers["X-Request-Id"], "score": 0.5}
    headers = {"Authorization": f"Bearer {key}"}
    if case == "no_key":
        headers = {}
    elif case == "other_key":
        headers = {"Authorization": f"Bearer {await hub.new_key()}"}
    elif case == "unknown":
        payload["request_id"] = "th-never-seen"
    elif case == "score":
        payload["score"] = 1.5
    kwargs: dict[str, Any] = {"data": b"{nope"} if case == "not_json" else {"json": payload}
    answer = await hub.client.post("/v1/feedback", headers=headers, **kwargs)
    assert answer.status == status
    error = (await answer.json())["error"]
    assert error["request_id"] and error["message"]


async def test_thompson_mode_learns_from_feedback(make_hub: Any) -> None:
    hub = await make_hub(bandit_seed=5)
    key = await _setup(hub, "alpha", "beta")
    quality = {"alpha": 0.1, "beta": 0.9}
    served = []
    for _ in range(60):
        _, body, resp = await hub.chat(key, policy={"mode": "thompson"})
        model = body["negotiated_model"]
        served.append(model)
        await hub.client.post(
            "/v1/feedback",
            json={"request_id": resp.headers["X-Request-Id"], "score": quality[model]},
            headers={"Authorization": f"Bearer {key}"},
        )
    assert served[-20:].count("beta") >= 16


async def test_posteriors_survive_a_restart(make_hub: Any) -> None:
    hub = await make_hub()
    key = await _setup(hub)
    for _ in range(3):
        await hub.chat(key)
    before = {a["model_id"]: a["pulls"] for a in (await hub.admin("GET", "/rewards"))["arms"]}
    await hub.client.close()  # graceful stop: the queue is flushed to DuckDB
    again = await make_hub()
    assert await again.services.bandit_refresher.refresh_once() == 3
    after = {a["model_id"]: a["pulls"] for a in (await again.admin("GET", "/rewards"))["arms"]}
    assert after.keys() == before.keys() and after["gpt-test"] == pytest.approx(before["gpt-test"], rel=1e-2)


async def test_simulate_explains_and_agrees_with_the_real_decision(make_hub: Any) -> None:
    hub = await make_hub(bandit_seed=42)
    await hub.add_provider()
    # Models that differ, so each mode has its own winner and agreement cannot come from the id tie-break.
    await hub.add_model("frugal", weight=2, input_per_1k=0.0001, output_per_1k=0.0001)
    await hub.add_model("middle", weight=5, input_per_1k=0.002, output_per_1k=0.002)
    await hub.add_model("premium", weight=10, input_per_1k=0.01, output_per_1k=0.01)
    key = await hub.new_key()
    body = {"request": {"messages": [{"role": "user", "content": "hi"}]}, "policy": {"mode": "thompson"}}
    simulated = await hub.admin("POST", "/routing/simulate", {**body, "seed": 42})
    again = await hub.admin("POST", "/routing/simulate", {**body, "seed": 42})
    assert simulated["candidates"] == again["candidates"]  # same seed, same draws
    assert {"cost", "latency", "failure", "weight"} == set(simulated["candidates"][0]["components"])
    assert all(0 <= c["bandit_sample"] <= 1 for c in simulated["candidates"])
    _, real, _ = await hub.chat(key, policy={"mode": "thompson"})  # the live sampler's first draws, seed 42
    assert real["negotiated_model"] == simulated["candidates"][0]["model_id"]
    for mode, winner in (("cheap", "frugal"), ("high_confidence", "premium")):
        plan = await hub.admin("POST", "/routing/simulate", {**body, "policy": {"mode": mode}})
        _, real, _ = await hub.chat(key, policy={"mode": mode})
        assert plan["candidates"][0]["model_id"] == real["negotiated_model"] == winner
        assert plan["decision"]["model_id"] == winner
        assert plan["reason"].split(":")[0] in real["routing_reason"]
    sent = len(hub.fake.requests)
    await hub.admin("POST", "/routing/simulate", body)
    assert len(hub.fake.requests) == sent  # nothing is sent


async def test_feedback_through_the_openai_sdk(hub: Hub) -> None:
    import asyncio

    import openai

    key = await _setup(hub)

    def rate() -> Any:
        client = openai.OpenAI(base_url=str(hub.client.make_url("/v1")), api_key=key, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "Hi"}]
        )
        return client.post("/feedback", body={"request_id": raw.headers["x-request-id"], "score": 0.9}, cast_to=object)

    answer = await asyncio.to_thread(rate)
    assert answer["score"] == 0.9 and 0 < answer["reward"] <= 1
