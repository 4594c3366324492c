"""The routing objective over HTTP: reward weights and scales (global and per tenant), the terms the simulator
and the routing reason show, propensities in the request log, counterfactual evaluation, and a restart."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Hub

OBJECTIVE = {"quality": 2, "cost": 1, "latency": 1, "cost_scale_usd": 0.01, "latency_scale_ms": 1000}
NORMALISED = {
    "quality": 0.5,
    "cost": 0.25,
    "latency": 0.25,
    "cost_scale_usd": 0.01,
    "latency_scale_ms": 1000.0,
    "quality_prior": None,
}


async def _models(hub: Hub) -> str:
    await hub.add_provider()
    await hub.add_model("frugal", weight=2, input_per_1k=0.0001, output_per_1k=0.0001)
    await hub.add_model("premium", weight=10, input_per_1k=0.01, output_per_1k=0.01)
    return await hub.new_key()


async def _rows(hub: Hub) -> dict[str, dict[str, Any]]:
    await hub.services.records.flush()
    return {row["request_id"]: row for row in await hub.logs()}


async def _rate(hub: Hub, key: str, request_id: str, score: float) -> None:
    answer = await hub.client.post(
        "/v1/feedback", json={"request_id": request_id, "score": score}, headers={"Authorization": f"Bearer {key}"}
    )
    assert answer.status == 200, await answer.text()


async def test_routing_config_reward_is_normalised_and_returned(hub: Hub) -> None:
    before = await hub.admin("GET", "/routing-config", expect=200)
    assert before["reward"] is None and before["effective"]["reward"]["quality"] == 0.5  # the default objective
    saved = await hub.admin("PUT", "/routing-config", {"default_mode": "thompson", "reward": OBJECTIVE}, expect=200)
    assert saved["reward"] == NORMALISED and saved["effective"]["reward"] == NORMALISED
    assert (await hub.admin("GET", "/routing-config"))["reward"] == NORMALISED
    kept = await hub.admin("PUT", "/routing-config", {"default_mode": "cheap"}, expect=200)  # a client without it
    assert kept["reward"] == NORMALISED and kept["default_mode"] == "cheap"
    cleared = await hub.admin("PUT", "/routing-config", {"default_mode": "thompson", "reward": None}, expect=200)
    assert cleared["reward"] is None and cleared["effective"]["reward"]["cost_scale_usd"] is None


@pytest.mark.parametrize(
    ("reward", "field"),
    [
        ({"quality": -0.1}, "quality"),
        ({"quality": 0, "cost": 0, "latency": 0}, "reward"),
        ({"cost_scale_usd": 0}, "cost_scale_usd"),
        ({"latency_scale_ms": -5}, "latency_scale_ms"),
        ({"quality_prior": 1.5}, "quality_prior"),
        ({"quality": "a lot"}, "quality"),
        ({"speed": 1}, "speed"),
    ],
)
async def test_bad_reward_is_a_400_and_changes_nothing(hub: Hub, reward: dict[str, Any], field: str) -> None:
    await hub.admin("PUT", "/routing-config", {"reward": OBJECTIVE}, expect=200)
    before = await hub.admin("GET", "/routing-config")
    body = await hub.admin("PUT", "/routing-config", {"default_mode": "cheap", "reward": reward}, expect=400)
    error = body["error"]
    assert (
        error["type"] == "invalid_request"
        and error["request_id"]
        and field in error["message"] + str(error.get("field"))
    )
    assert await hub.admin("GET", "/routing-config") == before


async def test_a_tenant_values_what_its_policy_options_say(hub: Hub) -> None:
    key = await _models(hub)
    await hub.admin("POST", "/tenants", {"id": "acme", "name": "Acme"}, expect=201)
    acme_key = await hub.new_key(tenant_id="acme")
    pipeline = [
        {"stage": "auth"},
        {"stage": "policy", "with": {"reward": {"quality": 0, "cost": 3, "latency": 1}}},
        {"stage": "escalate"},
        {"stage": "dispatch"},
    ]
    await hub.admin("PUT", "/tenants/acme/pipeline", {"stages": pipeline}, expect=200)
    bad = [{"stage": "policy", "with": {"reward": {"quality": -1}}}, {"stage": "dispatch"}]
    await hub.admin("PUT", "/tenants/acme/pipeline", {"stages": bad}, expect=400)
    _, acme, acme_resp = await hub.chat(acme_key)
    _, default, default_resp = await hub.chat(key)
    assert "quality 0, cost 0.75 (relative), latency 0.25 (relative)" in acme["routing_reason"]
    assert "quality 0.5, cost 0.25 (relative), latency 0.25 (relative)" in default["routing_reason"]
    rows = await _rows(hub)
    assert rows[acme_resp.headers["X-Request-Id"]]["quality_weight"] == 0
    assert rows[default_resp.headers["X-Request-Id"]]["quality_weight"] == 0.5
    simulated = await hub.admin("POST", "/routing/simulate", {"tenant_id": "acme"}, expect=200)
    assert simulated["objective"]["cost"] == 0.75


async def test_simulator_and_reason_show_each_term(hub: Hub) -> None:
    await _models(hub)
    await hub.admin("PUT", "/routing-config", {"reward": OBJECTIVE}, expect=200)
    body = await hub.admin("POST", "/routing/simulate", {"mode": "thompson", "seed": 3}, expect=200)
    assert body["objective"] == NORMALISED and 0 < body["propensity"] <= 1
    terms = {c["model_id"]: c["reward"] for c in body["candidates"]}
    assert set(terms["frugal"]) == {
        "quality",
        "cost_term",
        "latency_term",
        "failure",
        "expected_cost_usd",
        "expected_latency_ms",
        "expected_reward",
    }
    # 500 tokens in, 512 out at the prices above, against the $0.01 scale; nobody rated anything: quality 0.5
    frugal, premium = terms["frugal"], terms["premium"]
    assert frugal["cost_term"] == pytest.approx(1 - 1012 * 0.0001 / 1000 / 0.01, abs=1e-4)
    assert premium["cost_term"] == 0.0 and frugal["quality"] == premium["quality"] == 0.5
    assert frugal["expected_reward"] == pytest.approx(
        0.5 * 0.5 + 0.25 * frugal["cost_term"] + 0.25 * frugal["latency_term"], abs=1e-3
    )
    assert "expected reward" in body["reason"] and "cost 0.25 (scale $0.01)" in body["reason"]


async def test_propensity_and_terms_are_recorded_in_the_log(make_hub: Any) -> None:
    hub = await make_hub(bandit_seed=11)
    key = await _models(hub)
    _, _, thompson = await hub.chat(key, policy={"mode": "thompson"})
    _, _, normal = await hub.chat(key, policy={"mode": "normal"})  # exploration is off in tests: P = 1
    _, _, hinted = await hub.chat(key, policy={"mode": "thompson"}, model_hint="premium")
    rows = await _rows(hub)
    row = rows[thompson.headers["X-Request-Id"]]
    assert 0 < row["propensity"] <= 1 and set(row["candidates"].split(",")) == {"frugal", "premium"}
    assert row["cost_ref_usd"] > 0 and row["quality_prior"] == 0.5 and row["quality_weight"] == 0.5
    assert rows[normal.headers["X-Request-Id"]]["propensity"] == 1.0
    assert rows[hinted.headers["X-Request-Id"]]["propensity"] is None  # the client chose, not the policy


async def test_propensity_follows_softmax_exploration(make_hub: Any) -> None:
    hub = await make_hub(exploration_temp=0.3, bandit_seed=2)
    key = await _models(hub)
    seen = set()
    for _ in range(40):
        _, _, resp = await hub.chat(key, policy={"mode": "cheap"})
        seen.add(resp.headers["X-Request-Id"])
    rows = [r for r in (await _rows(hub)).values() if r["request_id"] in seen]
    top = 1 / (1 + 2.718281828 ** (-1 / 0.3))  # two candidates: rank 0 weighs 1, rank 1 e^(-1/T)
    by_model = {r["model_id"]: r["propensity"] for r in rows}
    assert by_model["frugal"] == pytest.approx(top, rel=1e-6)
    assert by_model.get("premium", 1 - top) == pytest.approx(1 - top, rel=1e-6)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"policy": {"mode": "turbo"}}, "mode"),
        ({"policy": {"mode": "normal"}, "since": "2026-12-04T10:00:00Z", "until": "2026-12-04T09:00:00Z"}, "since"),
        ({"policy": {"mode": "normal"}, "since": "yesterday"}, "since"),
        ({"policy": {"mode": "normal"}, "last": "a while"}, "last"),
        ({"policy": {"mode": "normal"}, "last": "1h", "since": "2026-12-04T09:00:00Z"}, "last"),
        ({"policy": {"mode": "normal", "reward": {"cost": -1}}}, "cost"),
        ({"policy": {"mode": "normal"}, "max_rows": 0}, "max_rows"),
        ({}, "policy"),
    ],
)
async def test_evaluate_refuses_bad_bodies(hub: Hub, body: dict[str, Any], field: str) -> None:
    answer = await hub.admin("POST", "/routing/evaluate", body, expect=400)
    error = answer["error"]
    assert error["request_id"] and field in error["message"] + str(error.get("field"))


async def test_evaluate_estimates_a_policy_from_the_log(make_hub: Any) -> None:
    hub = await make_hub(bandit_seed=4)
    key = await _models(hub)
    quality = {"frugal": 0.3, "premium": 0.9}
    for _ in range(40):
        _, body, resp = await hub.chat(key, policy={"mode": "thompson"})
        await _rate(hub, key, resp.headers["X-Request-Id"], quality[body["negotiated_model"]])
    for _ in range(5):  # cheap scoring's choice (frugal), so the log holds both models whatever thompson did
        _, body, resp = await hub.chat(key, policy={"mode": "cheap"})
        await _rate(hub, key, resp.headers["X-Request-Id"], quality[body["negotiated_model"]])
    await hub.chat(key, model_hint="frugal")  # not the policy's choice: skipped
    await hub.services.records.flush()
    logged = [r for r in await hub.logs() if r["propensity"] is not None]
    for mode in ("thompson", "normal", "cheap"):
        result = await hub.admin(
            "POST", "/routing/evaluate", {"policy": {"mode": mode}, "last": "1h", "seed": 1}, expect=200
        )
        assert result["rows"] == 45 and result["skipped"] == 1 and result["policy"]["mode"] == mode
        average = sum(r["reward"] for r in logged) / len(logged)
        assert result["logged"]["average_reward"] == pytest.approx(average, abs=1e-6)
        assert result["logged"]["modes"] == {"thompson": 40, "cheap": 5}
        for name in ("ips", "doubly_robust"):
            estimate = result[name]
            low, high = estimate["ci95"]
            assert low <= estimate["estimate"] <= high and estimate["std_error"] > 0
            wide_low, wide_high = estimate["prediction95"]  # one run's average: wider than the mean's
            assert wide_low <= low and high <= wide_high and estimate["replay_spread"] >= 0
        assert 0 < result["effective_sample_size"] <= 45
        assert result["approximate"] is (mode != "thompson")
    # cheap scoring picks frugal, which the client rates 0.3: valued by quality alone, that is what it earns
    quality_only = {"quality": 1, "cost": 0, "latency": 0}
    cheap = await hub.admin(
        "POST", "/routing/evaluate", {"policy": {"mode": "cheap", "reward": quality_only}, "last": "1h"}, expect=200
    )
    assert cheap["doubly_robust"]["estimate"] == pytest.approx(0.3, abs=0.05)
    assert cheap["logged"]["average_reward_candidate_objective"] > 0.5  # thompson found premium (0.9)
    # a window with nothing in it: no rows, no estimate, still an answer
    empty = await hub.admin(
        "POST",
        "/routing/evaluate",
        {"policy": {"mode": "normal"}, "since": "2020-01-01T00:00:00Z", "until": "2020-01-02T00:00:00Z"},
        expect=200,
    )
    assert empty["rows"] == 0 and empty["ips"]["ci95"] is None and empty["ips"]["prediction95"] is None


async def test_rewards_feedback_and_propensities_survive_a_restart(make_hub: Any) -> None:
    hub = await make_hub(bandit_seed=9)
    key = await _models(hub)
    for _ in range(6):
        _, body, resp = await hub.chat(key, policy={"mode": "thompson"})
        await _rate(hub, key, resp.headers["X-Request-Id"], 0.9 if body["negotiated_model"] == "premium" else 0.2)
    before = await hub.admin("GET", "/rewards")
    priors = {
        m: hub.services.bandit.quality_prior(m, "small", hub.services.snapshot.routing.reward or _default())
        for m in ("frugal", "premium")
    }
    await hub.services.records.flush()
    evaluation = await hub.admin("POST", "/routing/evaluate", {"policy": {"mode": "thompson"}, "seed": 5})
    assert evaluation["rows"] == 6
    await hub.client.close()  # graceful stop: the queue is flushed to DuckDB
    again = await make_hub(bandit_seed=9)
    assert await again.services.bandit_refresher.refresh_once() == 6
    after = await again.admin("GET", "/rewards")
    assert after["arms"] == before["arms"]  # posteriors, feedback included, rebuilt from the log
    for model, prior in priors.items():
        assert again.services.bandit.quality_prior(model, "small", _default()) == pytest.approx(prior)
    rebuilt = await again.admin("POST", "/routing/evaluate", {"policy": {"mode": "thompson"}, "seed": 5})
    for window in (rebuilt, evaluation):  # "the last 24 h" ends at each call's now
        del window["since"], window["until"]
    assert rebuilt == evaluation


def _default() -> Any:
    from pipeline.objective import DEFAULT_REWARD

    return DEFAULT_REWARD
