"""Routing that learns: the bandit, rewards in the request log, client feedback, simulation."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.context import Candidate
from pipeline.objective import RewardConfig
from pipeline.settings import Settings
from pipeline.types import ModelInfo
from stages.bandit import Bandit, Observation, thompson_order, token_bucket, win_probability
from stages.learning import BanditRefresher, evidence, observations
from store.analytics import AnalyticsStore
from store.reward_queries import Evidence
from tests.conftest import Hub
from tests.fakes.openai_fake import Fail
from tests.test_record_writer import make_record

QUALITY_ONLY = RewardConfig(quality=1, cost=0, latency=0)


def _obs(model: str, value: float, request_id: str = "") -> Observation:
    """An observation worth `value` under QUALITY_ONLY (its quality prior), a failure when 0."""
    return Observation(request_id, model, "small", value > 0, 0.0, 0.0, 0.0, 0.0, value)


def _pick(bandit: Bandit, models: list[str]) -> str:
    ordered, _ = thompson_order(_candidates(models), bandit, "small", QUALITY_ONLY, [0.5] * len(models))
    return ordered[0].model.id


def _candidates(models: list[str]) -> list[Candidate]:
    return [Candidate(ModelInfo(id=m, provider_id="p"), 0.0, 0.0) for m in models]


def test_thompson_converges_on_a_seeded_two_arm_problem() -> None:
    bandit = Bandit(half_life=1e9, seed=7)
    truth = {"good": 0.8, "poor": 0.4}
    world = random.Random(11)
    picks = []
    for _ in range(600):
        arm = _pick(bandit, list(truth))
        picks.append(arm)
        bandit.observe(_obs(arm, 1.0 if world.random() < truth[arm] else 0.0))
    assert picks[-200:].count("good") >= 180


def _share_after(picks: list[str], model: str, start: int, window: int = 50, share: float = 0.2) -> int | None:
    """Requests after `start` until `model` has at most `share` of the last `window` picks."""
    for end in range(start + window, len(picks) + 1):
        if picks[end - window : end].count(model) / window <= share:
            return end - start
    return None


@pytest.mark.parametrize("rate_per_second", [1, 500])
def test_traffic_leaves_a_collapsed_model_within_150_requests_and_returns_when_it_recovers(
    rate_per_second: int,
) -> None:
    """Discounting counts observations, not seconds: the same requests give the same adaptation whatever the
    traffic rate (the clock is not read at all), and a model left alone is explored again."""
    bandit = Bandit(half_life=Settings.model_fields["bandit_half_life_requests"].default, seed=3)
    world = random.Random(5)
    quality = {"best": 0.9, "second": 0.7, "third": 0.5}
    picks: list[str] = []
    for i in range(1500):
        if i == 500:
            quality["best"] = 0.1  # collapses
        if i == 1000:
            quality["best"] = 0.9  # and recovers
        model = _pick(bandit, list(quality))
        picks.append(model)
        bandit.observe(_obs(model, min(max(quality[model] + world.uniform(-0.1, 0.1), 0.01), 1.0)))
    assert picks[400:500].count("best") >= 80
    moved = _share_after(picks, "best", 500)
    assert moved is not None and moved <= 150, moved
    assert picks[1000:1500].count("best") >= 300  # re-explored and back on top


def test_rebuild_from_the_log_matches_live_updates() -> None:
    live, rebuilt = Bandit(half_life=100), Bandit(half_life=100)
    nan = float("nan")
    rows = [
        Evidence("r1", "m", 10, 200, 0.001, 120.0, 0.002, 300.0, 0.5, 0.9, "x=transient, m=ok"),
        Evidence("r2", "", 10, 502, 0.0, 50.0, 0.002, 300.0, 0.5, nan, "m=fatal"),
    ]
    for row in rows:
        for obs in observations(row, token_bucket(row.input_tokens)):
            live.observe(obs)
    assert rebuilt.rebuild(evidence(rows)) == 3  # x: failed; m: answered, then failed
    objective = RewardConfig()
    assert live.describe(objective) == rebuilt.describe(objective)
    arms = {a["model_id"]: a for a in rebuilt.describe(objective)}
    assert arms["x"]["mean"] < 0.5 and arms["m"]["pulls"] == pytest.approx(0.5 ** (1 / 100) + 1, abs=1e-3)
    stats = rebuilt.stats("m", "small")
    assert stats is not None and stats.mean_score == pytest.approx(0.9) and stats.failure == pytest.approx(0.5, 0.01)


def test_feedback_moves_every_objective_and_the_quality_prior() -> None:
    bandit = Bandit(half_life=50)
    quality_only, cost_only = QUALITY_ONLY, RewardConfig(quality=0, cost=1, latency=0)
    bandit.describe(quality_only), bandit.describe(cost_only)  # both objectives are live
    bandit.observe(Observation("req", "m", "small", True, 0.01, 100.0, 0.02, 200.0, 0.5))
    assert bandit.quality_prior("m", "small", RewardConfig()) == 0.5  # nobody rated m yet
    (unrated,) = bandit.describe(quality_only)
    (cost_before,) = bandit.describe(cost_only)
    assert bandit.rate("req", 0.8) and not bandit.rate("unknown", 0.8)
    assert bandit.quality_prior("m", "small", RewardConfig()) == pytest.approx(0.8)
    assert bandit.quality_prior("m", "small", RewardConfig(quality_prior=0.3)) == 0.3  # a fixed prior wins
    (q,) = bandit.describe(quality_only)
    (c,) = bandit.describe(cost_only)
    assert q["mean"] > unrated["mean"] and q["alpha"] > unrated["alpha"]  # the answer is worth 0.8 now, not 0.5
    assert c == cost_before  # cost: 1 - 0.01/0.02 whatever the client thinks of the answer


def test_reward_objective() -> None:
    r = RewardConfig(quality=2, cost=1, latency=1)
    assert (r.quality, r.cost, r.latency) == (0.5, 0.25, 0.25) and r == RewardConfig()
    assert r.reward(False, 1.0, 0.0, 0.0, 1.0, 1.0) == 0.0
    # relative: against the references (the candidates' largest expected cost and latency)
    assert r.reward(True, 0.8, 0.01, 500, 0.02, 1000) == pytest.approx(0.5 * 0.8 + 0.25 * 0.5 + 0.25 * 0.5)
    scaled = RewardConfig(cost_scale_usd=0.01, latency_scale_ms=1000)
    assert scaled.reward(True, 0.0, 0.02, 250, 1.0, 1.0) == pytest.approx(0.25 * 0.75)  # over the scale: 0
    assert r.reward(True, 1.0, 5.0, 5.0, 0.0, 0.0) == 1.0  # no reference (nothing known): every term full
    with pytest.raises(ValueError, match="positive"):
        RewardConfig(quality=0, cost=0, latency=0)
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
    # one observation since (backup's answer) has aged primary's failure one step (the default half-life: 200)
    assert arms["primary"]["pulls"] == pytest.approx(0.5 ** (1 / 200), rel=1e-3) and arms["primary"]["mean"] < 0.5
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
    # the default objective: quality weighs 0.5, and the unrated answer was valued at the neutral 0.5
    assert body["reward"] == pytest.approx(before + 0.5 * (0.25 - 0.5))
    row = await _row(hub, request_id)  # the record was still queued: written with the new values
    assert row["reward"] == pytest.approx(body["reward"]) and row["feedback_score"] == 0.25
    assert row["feedback_comment"] == "missed the point"
    # rated again after it reached DuckDB, and after it left the in-memory index
    hub.services.recent_requests._records.clear()
    answer = await hub.client.post(
        "/v1/feedback", json={"request_id": request_id, "score": 1.0}, headers={"Authorization": f"Bearer {key}"}
    )
    best = before + 0.5 * (1.0 - 0.5)
    assert answer.status == 200 and (await answer.json())["reward"] == pytest.approx(best)
    row = await _row(hub, request_id)
    assert row["reward"] == pytest.approx(best) and row["feedback_score"] == 1.0
    assert row["quality_prior"] == 0.5 and row["quality_weight"] == 0.5
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


def test_propensity_estimate_is_close_to_the_true_win_probability() -> None:
    rng = np.random.default_rng(1)
    alphas, betas = np.array([30.0, 5.0, 2.0]), np.array([10.0, 5.0, 8.0])
    truth = np.bincount(rng.beta(alphas, betas, size=(200_000, 3)).argmax(axis=1), minlength=3) / 200_000
    for winner in range(3):
        estimates = [win_probability(rng.beta(alphas, betas, size=(63, 3)), winner) for _ in range(400)]
        # unbiased to within the one pseudo-win, and resolving a 0.04 % chance that 64 plain draws could not
        assert np.mean(estimates) == pytest.approx(truth[winner], abs=0.003)
        assert min(estimates) > 0
    assert win_probability(np.array([[0.3], [0.9]]), 0) == 1.0  # a single candidate


async def test_what_the_bandit_learns_while_the_log_is_read_is_kept_and_counted_once(tmp_path: Path) -> None:
    now = time.time()
    store = AnalyticsStore(str(tmp_path / "a.duckdb"))
    store.open()
    # One answer logged before the refresh, and one logged "after" it began: the second one's observation is
    # the live one below, so reading its row too would count that request twice.
    store.write_requests(
        [
            make_record(1, timestamp=now - 60, model_id="logged", quality_prior=0.5, attempts="logged=ok"),
            make_record(2, timestamp=now + 60, model_id="served", quality_prior=0.5, attempts="served=ok"),
        ]
    )
    reading, release = asyncio.Event(), asyncio.Event()
    settled: list[bool] = []

    class HeldRead:  # the store's reader, held open until a request has been learned from meanwhile
        async def read(self, query: Any, *args: Any) -> Any:
            reading.set()
            await release.wait()
            return query(store.db, *args)

    async def settle() -> None:
        settled.append(True)

    bandit = Bandit(half_life=200)
    refresher = BanditRefresher(bandit, HeldRead(), settle=settle)  # type: ignore[arg-type]
    try:
        refreshing = asyncio.create_task(refresher.refresh_once())
        await reading.wait()
        served = Observation("req-00002", "served", "small", True, 0.0002, 12.5, 0.0002, 12.5, 0.5)
        bandit.observe(served)
        release.set()
        assert await refreshing == 2
    finally:
        store.close()
    assert settled == [True]  # the records accepted before the read were stored first
    assert bandit.stats("logged", "small") is not None
    stats = bandit.stats("served", "small")
    assert stats is not None and stats.successes == pytest.approx(1.0)  # once, not twice
