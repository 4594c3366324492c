"""Routing and failover rows over HTTP against the fake providers: max_tokens shrink on context overflow (21),
the last-resort pass and the stream size cap (22, 46), hedged dispatch (24), quota errors disabling a model
(25) and explicit plan models that could not be used (39)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ADMIN_TOKEN, Hub
from tests.fakes import anthropic_fake as claude_fake
from tests.fakes.anthropic_fake import FakeAnthropic
from tests.fakes.clock import FakeClock
from tests.fakes.openai_fake import ContextOverflow, Fail, Gated, QuotaExceeded, Reply
from tests.support.polling import until_equal

PRICE = {"input_per_1k": 0.001, "output_per_1k": 0.002}


async def _metric(hub: Hub, name: str, **labels: str) -> float:
    text = await (await hub.client.get("/metrics")).text()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def _models(hub: Hub, *specs: tuple[str, dict[str, Any]]) -> str:
    """One provider (the OpenAI fake), the models given (id, fields), and an API key."""
    await hub.add_provider()
    for model_id, fields in specs:
        await hub.add_model(model_id, **{"weight": 5, "max_context_tokens": 8000, **PRICE, **fields})
    return await hub.new_key()


async def _stream(hub: Hub, key: str, **body: Any) -> tuple[int, str]:
    """A raw OpenAI-format stream: (status, the body as the client read it)."""
    payload = {"model": "", "messages": [{"role": "user", "content": "hello"}], "stream": True, **body}
    resp = await hub.client.post("/v1/chat/completions", json=payload, headers={"Authorization": f"Bearer {key}"})
    return resp.status, await resp.text()


def _content(sse: str) -> str:
    chunks = [json.loads(line[6:]) for line in sse.splitlines() if line.startswith("data: {")]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


async def _set_pipeline(hub: Hub, **dispatch: Any) -> None:
    definition = [
        {"stage": "auth"},
        {"stage": "policy"},
        {"stage": "escalate"},
        {"stage": "dispatch", "with": dispatch},
    ]
    await hub.admin("PUT", "/tenants/default/pipeline", definition, expect=200)


# --- 21: max_tokens shrink on context overflow ------------------------------------------------------------------


async def test_overflow_lowers_max_tokens_to_fit_the_window_on_the_same_model(hub: Hub) -> None:
    key = await _models(
        hub, ("small", {"max_context_tokens": 4000}), ("big", {"max_context_tokens": 100_000, "input_per_1k": 0.01})
    )
    prompt = "x" * 8000  # 2000 tokens: with max_tokens 3000 it does not fit 4000, with 1744 it does
    hub.fake.script("small", ContextOverflow(window=4000), ContextOverflow(window=4000))
    body = await hub.chat_ok(
        key, prompt, parameters={"max_tokens": 3000}, policy={"mode": "cheap", "max_budget_usd": 1}
    )
    assert body["negotiated_model"] == "small"
    assert "reduced-max-tokens on small: 3000 -> 1744 (window 4000, ~2000 input tokens)" in body["routing_reason"]
    assert [r["json"]["max_tokens"] for r in hub.fake.requests] == [3000, 1744]
    assert hub.fake.calls("big") == 0


async def test_overflow_escalates_when_the_cap_already_fits(hub: Hub) -> None:
    key = await _models(
        hub, ("small", {"max_context_tokens": 4000}), ("big", {"max_context_tokens": 100_000, "input_per_1k": 0.01})
    )
    hub.fake.script("small", ContextOverflow())
    body = await hub.chat_ok(key, "x" * 8000, parameters={"max_tokens": 500}, policy={"mode": "cheap"})
    assert body["negotiated_model"] == "big"  # 500 < the 1744 of room: lowering it cannot help
    assert "reduced-max-tokens" not in body["routing_reason"]
    assert "escalated-context-overflow to big" in body["routing_reason"]
    assert hub.fake.requests[-1]["json"]["max_tokens"] == 500  # the larger model gets the client's own cap


async def test_a_stream_shrinks_max_tokens_before_its_first_token(hub: Hub) -> None:
    key = await _models(hub, ("small", {"max_context_tokens": 4000}))
    hub.fake.script("small", ContextOverflow(window=4000), ContextOverflow(window=4000))
    messages = [{"role": "user", "content": "x" * 8000}]
    status, text = await _stream(hub, key, messages=messages, max_completion_tokens=3000)
    assert status == 200 and _content(text) == "reply from small" and "data: [DONE]" in text
    sent = [r["json"] for r in hub.fake.requests]
    assert [r.get("max_completion_tokens") for r in sent] == [3000, 1744]


# --- 22 + 46: the last-resort pass, the stream size cap -----------------------------------------------------------


async def test_last_resort_serves_when_every_eligible_model_failed(hub: Hub) -> None:
    key = await _models(
        hub,
        ("main", {}),
        ("pricey", {"input_per_1k": 50.0, "output_per_1k": 50.0}),  # over the request's budget
        ("light", {"weight": 1}),  # under its min_weight
    )
    hub.fake.script("main", Fail(500), Fail(500), Fail(500))  # the HTTP helper's two retries fail too
    hub.fake.script("light", Fail(503), Fail(503), Fail(503))
    body = await hub.chat_ok(key, policy={"mode": "cheap", "max_budget_usd": 0.01, "min_weight": 3})
    assert body["negotiated_model"] == "pricey"
    reason = body["routing_reason"]
    assert reason.startswith("last-resort-fallback: main failed (transient); last-resort-fallback over 2 other")
    assert "light failed (transient)" in reason and reason.endswith("served by pricey")  # cheap mode: light first
    assert await _metric(hub, "tokenhub_last_resort_total", outcome="served") == 1


async def test_last_resort_ignores_health(hub: Hub) -> None:
    key = await _models(hub, ("main", {}), ("backup", {}))
    await hub.add_provider("down", base_url=hub.fake.base_url)
    await hub.add_model("spare", "down", weight=5, max_context_tokens=8000, **PRICE)
    for _ in range(5):  # open the breaker of provider 'down'
        hub.services.health.error("down", "earlier outage")
    hub.fake.script("main", Fail(401))
    hub.fake.script("backup", Fail(403))
    body = await hub.chat_ok(key, policy={"mode": "cheap"})
    assert body["negotiated_model"] == "spare" and "last-resort-fallback" in body["routing_reason"]


async def test_last_resort_failing_too_is_a_502_naming_it(hub: Hub) -> None:
    key = await _models(hub, ("main", {}), ("pricey", {"input_per_1k": 50.0, "output_per_1k": 50.0}))
    hub.fake.script("main", Fail(401))
    hub.fake.script("pricey", Fail(403))
    error = await hub.chat_refused(key, 502, "upstream_error", policy={"max_budget_usd": 0.01})
    assert "last-resort-fallback over 1 other model(s)" in error["message"]
    assert "pricey failed (fatal)" in error["message"]
    assert await _metric(hub, "tokenhub_last_resort_total", outcome="failed") == 1


async def test_last_resort_pass_for_a_stream_before_its_first_token(hub: Hub) -> None:
    key = await _models(hub, ("main", {}), ("pricey", {"input_per_1k": 50.0, "output_per_1k": 50.0}))
    hub.fake.script("main", Fail(401))
    status, text = await _stream(hub, key, max_tokens=10)
    assert status == 200, text
    assert _content(text) == "reply from pricey" and "data: [DONE]" in text


async def test_a_stream_past_the_size_cap_ends_with_the_error_event(make_hub) -> None:  # type: ignore[no-untyped-def]
    hub = await make_hub(max_stream_bytes=2048)
    key = await _models(hub, ("main", {}), ("other", {}))
    hub.fake.script("main", Reply(content="y" * 5000, piece_size=100))
    status, text = await _stream(hub, key)
    assert status == 200
    assert 1900 <= len(_content(text)) <= 2048  # what fit, and not a byte more
    assert "2048 bytes (TOKENHUB_MAX_STREAM_BYTES)" in text and "data: [DONE]" not in text
    assert hub.fake.calls("other") == 0  # not rescued, not failed over
    status, text = await _stream(hub, key)  # an answer under the cap streams as usual
    assert status == 200 and _content(text) == "reply from main" and "data: [DONE]" in text


# --- 24: hedged dispatch ----------------------------------------------------------------------------------------


async def test_a_hedge_starts_the_second_candidate_and_cancels_the_slower_call(make_hub) -> None:  # type: ignore[no-untyped-def]
    hub = await make_hub(provider_timeout_secs=10)  # main's call is ended by the hedge, not by its timeout
    key = await _models(hub, ("main", {}), ("backup", {"input_per_1k": 0.002}))
    await _set_pipeline(hub, hedge_after_ms=100)
    hub.fake.script("main", Gated(asyncio.Event()))  # never answers: the backup must win
    status, body, resp = await hub.chat(key, policy={"mode": "cheap"})
    assert status == 200 and body["negotiated_model"] == "backup", body
    await hub.fake.wait_until(lambda: hub.fake.cancelled >= 1)  # its HTTP call was aborted
    assert "hedged-dispatch: backup started after" in body["routing_reason"]
    assert "main cancelled (charged at its routing estimate)" in body["routing_reason"]
    assert resp.headers["X-TokenHub-Attempts"] == "backup=ok, main=hedged_out"
    backup_cost = 10 / 1000 * 0.002 + 5 / 1000 * 0.002  # the fake's usage: 10 in, 5 out
    assert body["estimated_cost_usd"] > backup_cost  # main's estimate is added
    assert await _metric(hub, "tokenhub_hedges_total", winner="second") == 1


async def test_no_hedge_when_the_first_answers_in_time(hub: Hub) -> None:
    key = await _models(hub, ("main", {}), ("backup", {"input_per_1k": 0.002}))
    # "In time" by a wide margin: a loaded machine's plain answer must not count as late.
    await _set_pipeline(hub, hedge_after_ms=10_000)
    body = await hub.chat_ok(key, policy={"mode": "cheap"})
    assert body["negotiated_model"] == "main" and "hedged" not in body["routing_reason"]
    assert hub.fake.calls("backup") == 0


async def test_a_hedge_whose_first_call_fails_waits_for_the_second(hub: Hub) -> None:
    key = await _models(hub, ("main", {}), ("backup", {"input_per_1k": 0.002}))
    await _set_pipeline(hub, hedge_after_ms=50)
    main_gate, backup_gate = asyncio.Event(), asyncio.Event()
    hub.fake.script("main", Gated(main_gate, Fail(403)))
    hub.fake.script("backup", Gated(backup_gate))
    chat = asyncio.create_task(hub.chat(key, policy={"mode": "cheap"}))
    await hub.fake.wait_until(lambda: hub.fake.calls("backup") == 1)  # the hedge started
    main_gate.set()
    # main's failure is in
    await until_equal(lambda: _metric(hub, "tokenhub_provider_attempts_total", outcome="fatal"), 1, 15)
    backup_gate.set()
    status, body, resp = await chat
    assert status == 200 and body["negotiated_model"] == "backup"
    assert "main failed; backup answered" in body["routing_reason"]
    assert resp.headers["X-TokenHub-Attempts"] == "main=fatal, backup=ok"
    assert hub.fake.cancelled == 0


async def test_both_hedged_calls_failing_fails_over_to_the_next(hub: Hub) -> None:
    key = await _models(hub, ("main", {}), ("backup", {"input_per_1k": 0.002}), ("third", {"input_per_1k": 0.003}))
    await _set_pipeline(hub, hedge_after_ms=50)
    main_gate = asyncio.Event()
    hub.fake.script("main", Gated(main_gate, Fail(401)))
    hub.fake.script("backup", Fail(403))
    chat = asyncio.create_task(hub.chat_ok(key, policy={"mode": "cheap"}))
    # the backup failed first
    await until_equal(lambda: _metric(hub, "tokenhub_provider_attempts_total", outcome="fatal"), 1, 15)
    main_gate.set()
    body = await chat
    assert body["negotiated_model"] == "third"
    assert "escalated: backup failed (fatal); main failed (fatal); served by third" in body["routing_reason"]
    assert hub.fake.calls("main") == hub.fake.calls("backup") == 1


async def test_streams_are_not_hedged(hub: Hub) -> None:
    key = await _models(hub, ("main", {}), ("backup", {"input_per_1k": 0.002}))
    await _set_pipeline(hub, hedge_after_ms=50)
    hub.fake.script("main", Reply(first_token_delay=0.3))
    status, text = await _stream(hub, key)
    assert status == 200 and _content(text) == "reply from main"
    assert hub.fake.calls("backup") == 0


async def test_hedge_option_is_validated(hub: Hub) -> None:
    bad = [{"stage": "auth"}, {"stage": "policy"}, {"stage": "dispatch", "with": {"hedge_after_ms": -5}}]
    error = await hub.admin("PUT", "/tenants/default/pipeline", bad, expect=400)
    assert "hedge_after_ms" in json.dumps(error)


# --- 25: a provider's quota error disables the model -----------------------------------------------------------


@pytest.fixture
async def claude() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as server:
        yield server


async def test_insufficient_quota_disables_the_model_and_fails_over(hub: Hub) -> None:
    key = await _models(hub, ("main", {}), ("backup", {"input_per_1k": 0.002}))
    hub.fake.script("main", QuotaExceeded())
    async with hub.client.get("/admin/v1/events", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as events:
        body = await hub.chat_ok(key, policy={"mode": "cheap"})
        assert body["negotiated_model"] == "backup"
        assert "main failed (budget_exceeded) (model disabled: quota used up)" in body["routing_reason"]
        event = await _next_event(events, "model_disabled")
    assert event["model_id"] == "main" and event["provider_id"] == "fake" and "quota" in event["reason"]
    assert await _metric(hub, "tokenhub_models_disabled_total", model="main") == 1
    assert await _metric(hub, "tokenhub_models_quota_disabled") == 1
    health = await hub.admin("GET", "/health", expect=200)
    assert [d["model_id"] for d in health["disabled_models"]] == ["main"]
    engine = await hub.admin("GET", "/engine/models", expect=200)
    view = {m["id"]: m for m in engine["models"]}["main"]
    assert (view["eligible"], view["unavailable"]) == (False, "quota_exhausted")

    body = await hub.chat_ok(key, policy={"mode": "cheap"})  # routing skips it now: no second call
    assert body["negotiated_model"] == "backup" and "main (quota_exhausted)" in body["routing_reason"]
    assert hub.fake.calls("main") == 1

    await hub.admin("PATCH", "/models/main", {"enabled": True}, expect=200)  # an admin re-enables it
    assert (await hub.admin("GET", "/health"))["disabled_models"] == []
    assert (await hub.chat_ok(key, policy={"mode": "cheap"}))["negotiated_model"] == "main"


async def test_a_disabled_model_comes_back_after_the_configured_time(make_hub) -> None:  # type: ignore[no-untyped-def]
    hub = await make_hub(model_disable_secs=60)
    clock = FakeClock(time.time())
    hub.services.model_disables._clock = clock  # no public seam; a real clock raced slow requests against 0.3 s
    key = await _models(hub, ("main", {}), ("backup", {"input_per_1k": 0.002}))
    hub.fake.script("main", Fail(400, {"error": {"message": "Budget has been exceeded!", "type": "budget_exceeded"}}))
    assert (await hub.chat_ok(key, policy={"mode": "cheap"}))["negotiated_model"] == "backup"
    clock.advance(59.5)
    assert (await hub.chat_ok(key, policy={"mode": "cheap"}))["negotiated_model"] == "backup"
    clock.advance(0.5)
    assert (await hub.chat_ok(key, policy={"mode": "cheap"}))["negotiated_model"] == "main"


async def test_anthropic_credit_error_disables_the_model_for_streams_too(hub: Hub, claude: FakeAnthropic) -> None:
    await hub.add_provider("claude", base_url=claude.base_url, type="anthropic")
    await hub.add_model("claude-main", "claude", weight=9, max_context_tokens=8000, **PRICE)
    await hub.add_provider()
    await hub.add_model("gpt-backup", weight=5, max_context_tokens=8000, **PRICE)
    key = await hub.new_key()
    claude.script("claude-main", claude_fake.CreditExhausted())
    status, text = await _stream(hub, key)
    assert status == 200 and _content(text) == "reply from gpt-backup"
    assert [d["model_id"] for d in (await hub.admin("GET", "/health"))["disabled_models"]] == ["claude-main"]
    status, text = await _stream(hub, key)
    assert status == 200 and claude.calls("claude-main") == 1


# --- 39: explicit plan models that are not eligible --------------------------------------------------------------


async def test_plan_names_explicit_models_it_could_not_use(hub: Hub) -> None:
    key = await _models(hub, ("planner", {}), ("critic", {}), ("off", {"enabled": False}))
    body = {
        "request": {"messages": [{"role": "user", "content": "plan a trip"}]},
        "orchestration": {"mode": "adversarial", "primary_model_id": "off", "review_model_id": "ghost"},
    }
    resp = await hub.client.post("/v1/plan", json=body, headers={"Authorization": f"Bearer {key}"})
    data = await resp.json()
    assert resp.status == 200, data
    reason = data["routing_reason"]
    assert "model 'off' not used in step 1 (plan): not eligible (disabled);" in reason
    assert "model 'ghost' not used in step 2 (critique): not registered;" in reason
    assert reason.count("model 'off' not used") == 1  # said once, not for every step that names it


async def test_plan_names_an_explicit_model_that_failed(hub: Hub) -> None:
    key = await _models(hub, ("planner", {}), ("other", {}))
    hub.fake.script("planner", Fail(401))
    body = {
        "request": {"messages": [{"role": "user", "content": "plan"}]},
        "orchestration": {"mode": "adversarial", "primary_model_id": "planner", "return_plan_only": True},
    }
    resp = await hub.client.post("/v1/plan", json=body, headers={"Authorization": f"Bearer {key}"})
    data = await resp.json()
    assert resp.status == 200, data
    assert "model 'planner' not used in step 1 (plan): failed (fatal); other answered" in data["routing_reason"]


async def _next_event(resp: Any, event_type: str) -> dict[str, Any]:
    async with asyncio.timeout(3):
        async for raw in resp.content:
            line = raw.decode().strip()
            if line.startswith("data: "):
                data = json.loads(line[6:])
                if data.get("type") == event_type:
                    return data
    raise AssertionError(f"no {event_type} event")
