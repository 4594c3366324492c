"""Budgets that hold under concurrency: each request reserves its worst-case cost before dispatch and settles
after, on every path (answer, provider failure, failover, a cut stream, a client that leaves, cancellation)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from pipeline.context import RequestContext
from pipeline.errors import RequestCancelled
from pipeline.types import ChatRequest, Message
from pipeline.web import PIPELINES, new_request_id
from store.reservations import BudgetAccount, LocalReservations
from tests.conftest import Hub
from tests.fakes.openai_fake import Fail, Gated, Hang, Reply, StreamCut
from tests.support.polling import until

PROMPT = "x" * 40  # estimated at 40 / 4 = 10 input tokens, what the fake reports by default
COST = (10 * 0.001 + 5 * 0.002) / 1000  # 10 input + 5 output tokens at the model's prices: $0.00002


async def _setup(hub: Hub, budget: float, *models: str) -> tuple[str, str]:
    await hub.add_provider()
    for i, model in enumerate(models or ("gpt-test",)):
        await hub.add_model(model, weight=5, input_per_1k=0.001 * (i + 1), output_per_1k=0.002 * (i + 1))
    data = await hub.admin("POST", "/apikeys", {"name": "capped", "monthly_budget_usd": budget}, expect=201)
    return data["key"], data["id"]


async def _completions(hub: Hub, key: str, **fields: Any) -> tuple[int, dict[str, Any]]:
    body = {"model": "auto", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 5, **fields}
    resp = await hub.client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
    return resp.status, await resp.json()


def _settled(hub: Hub) -> bool:
    """No hold left. The server notices a client that left only when it next writes: wait for its bookkeeping."""
    reservations = hub.services.reservations
    return reservations.holders == 0 and reservations.total_usd == 0.0


async def _logged_spend(hub: Hub, key_id: str) -> float:
    await hub.services.records.flush()
    return sum(row["cost_usd"] for row in await hub.logs() if row["api_key_id"] == key_id)


async def test_200_concurrent_requests_against_a_budget_for_20(make_hub: Callable[..., Any]) -> None:
    hub = await make_hub(provider_timeout_secs=60)  # 200 requests through one loop: no 2 s attempt limit
    key, key_id = await _setup(hub, 20 * COST)
    answer = asyncio.Event()
    hub.fake.script("gpt-test", *[Gated(answer)] * 200)
    calls = [asyncio.ensure_future(_completions(hub, key)) for _ in range(200)]
    # The 20 admitted are held at the provider until every other one has been answered: they all overlap.
    await hub.fake.wait_until(lambda: hub.fake.in_flight == 20)
    await until(lambda: sum(call.done() for call in calls) == 180, 30)
    answer.set()
    results = await asyncio.gather(*calls)
    served = [body for status, body in results if status == 200]
    refused = [body for status, body in results if status != 200]
    assert len(served) == 20  # the worst case equals the real cost here, so exactly the budget's worth
    assert {(body["error"]["code"], body["error"]["type"]) for body in refused} == {
        ("monthly_budget_exceeded", "rate_limit_error")
    }
    assert hub.fake.calls("gpt-test") == 20  # a refused request never reached the provider
    assert _settled(hub)
    spent = hub.services.key_ledger.spent(key_id, time.time())
    assert spent == pytest.approx(20 * COST) and spent <= 20 * COST + 1e-12
    assert await _logged_spend(hub, key_id) == pytest.approx(spent)  # what the writer flushed agrees
    shown = next(k for k in (await hub.admin("GET", "/apikeys"))["keys"] if k["id"] == key_id)
    assert shown["current_spend_usd"] <= 20 * COST + 1e-12 and shown["reserved_usd"] == 0.0
    metrics = await (await hub.client.get("/metrics")).text()
    assert 'tokenhub_budget_refusals_total{budget="key"} 180.0' in metrics
    assert "tokenhub_budget_reserved_usd 0.0" in metrics
    rows = [r for r in await hub.logs() if r["status"] == 429]
    assert len(rows) == 180 and all(r["routing_reason"].startswith("budget-refused (key): ") for r in rows)


async def test_a_request_holds_its_worst_case_while_in_flight_and_settles_to_the_cost(hub: Hub) -> None:
    key, key_id = await _setup(hub, 1.0)
    answer = asyncio.Event()
    hub.fake.script("gpt-test", Gated(answer))
    call = asyncio.ensure_future(_completions(hub, key, max_tokens=100))
    await hub.fake.wait_until(lambda: hub.fake.in_flight == 1)
    worst = (10 * 0.001 + 100 * 0.002) / 1000
    assert hub.services.reservations.reserved(f"key:{key_id}") == pytest.approx(worst)
    metrics = await (await hub.client.get("/metrics")).text()
    assert f"tokenhub_budget_reserved_usd {worst}" in metrics
    answer.set()
    assert (await call)[0] == 200
    assert _settled(hub)
    assert hub.services.key_ledger.spent(key_id, time.time()) == pytest.approx(COST)


async def test_a_failed_call_releases_its_hold_and_costs_nothing(hub: Hub) -> None:
    key, key_id = await _setup(hub, 1.0)
    hub.fake.script("gpt-test", Fail(401))  # the provider's key is refused: no retry, no other candidate
    status, _ = await _completions(hub, key)
    assert status == 502 and _settled(hub)
    assert hub.services.key_ledger.spent(key_id, time.time()) == 0.0


async def test_failover_reserves_again_at_the_next_candidates_price(hub: Hub) -> None:
    key, key_id = await _setup(hub, 1.0, "cheap", "dear")  # cheap ranks first; dear costs twice as much
    hub.fake.script("cheap", Fail(401))  # fatal for this provider call: the next candidate, no retry
    answer = asyncio.Event()
    hub.fake.script("dear", Gated(answer))
    call = asyncio.ensure_future(_completions(hub, key))
    await hub.fake.wait_until(lambda: hub.fake.calls("dear") == 1 and hub.fake.in_flight == 1)
    assert hub.services.reservations.reserved(f"key:{key_id}") == pytest.approx(2 * COST)  # not 1x + 2x
    answer.set()
    status, body = await call
    assert status == 200 and body["model"] == "dear" and _settled(hub)
    assert hub.services.key_ledger.spent(key_id, time.time()) == pytest.approx(2 * COST)


async def test_a_failover_that_no_longer_fits_is_refused(hub: Hub) -> None:
    # B routes with $4x left (both models eligible) and holds 1x on cheap; A then holds 2.5x; when cheap fails
    # B's failover to dear needs 2x of the 1.5x left: refused with the key's 429, and B holds nothing after.
    key, key_id = await _setup(hub, 4 * COST, "cheap", "dear")
    b_fails, a_answers = asyncio.Event(), asyncio.Event()
    hub.fake.script("cheap", Gated(b_fails, Fail(401)), Gated(a_answers))
    b = asyncio.ensure_future(_completions(hub, key))
    await hub.fake.wait_until(lambda: hub.fake.in_flight == 1)
    a = asyncio.ensure_future(_completions(hub, key, max_tokens=20))  # worst case 10 x 0.001 + 20 x 0.002: 2.5x
    await hub.fake.wait_until(lambda: hub.fake.in_flight == 2)
    b_fails.set()
    status, body = await b
    assert status == 429 and body["error"]["code"] == "monthly_budget_exceeded", body
    assert "reserved by requests in flight" in body["error"]["message"]
    assert hub.fake.calls("dear") == 0
    a_answers.set()
    assert (await a)[0] == 200 and _settled(hub)
    assert hub.services.key_ledger.spent(key_id, time.time()) == pytest.approx(COST)


async def test_a_cut_stream_is_charged_what_it_delivered_and_releases(hub: Hub) -> None:
    key, key_id = await _setup(hub, 1.0)
    hub.fake.script("gpt-test", StreamCut(after=2))
    body = {"model": "auto", "messages": [{"role": "user", "content": PROMPT}], "stream": True, "max_tokens": 50}
    resp = await hub.client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 200 and '"error"' in await resp.text()
    await until(lambda: _settled(hub), 5)
    charged = hub.services.key_ledger.spent(key_id, time.time())
    assert charged > 0 and await _logged_spend(hub, key_id) == pytest.approx(charged)


async def test_a_client_leaving_a_stream_releases_the_hold(hub: Hub) -> None:
    key, key_id = await _setup(hub, 1.0)
    hub.fake.script("gpt-test", Reply(content="word " * 200, chunk_delay=0.05))
    body = {"model": "auto", "messages": [{"role": "user", "content": PROMPT}], "stream": True, "max_tokens": 500}
    resp = await hub.client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
    await resp.content.readline()  # the stream is flowing
    assert hub.services.reservations.holders == 1
    resp.close()
    await until(lambda: _settled(hub), 5)
    charged = hub.services.key_ledger.spent(key_id, time.time())
    assert charged > 0 and await _logged_spend(hub, key_id) == pytest.approx(charged)


async def test_a_client_leaving_before_the_answer_releases_the_hold(make_hub: Callable[..., Any]) -> None:
    hub = await make_hub(provider_timeout_secs=60)  # the hold can end only by the client's leaving
    key, key_id = await _setup(hub, 1.0)
    hub.fake.script("gpt-test", Gated(asyncio.Event()))  # never answers
    call = asyncio.ensure_future(_completions(hub, key))
    await hub.fake.wait_until(lambda: hub.fake.in_flight == 1)
    assert hub.services.reservations.holders == 1
    call.cancel()  # the client leaves: its connection closes
    await until(lambda: _settled(hub), 15)
    assert hub.services.key_ledger.spent(key_id, time.time()) == 0.0


async def test_a_cancelled_request_releases_its_hold(hub: Hub) -> None:
    key, key_id = await _setup(hub, 1.0)
    hub.fake.script("gpt-test", Hang(5))
    services = hub.services
    ctx = RequestContext(
        request_id=new_request_id(),
        scope="chat",
        client_ip="127.0.0.1",
        request=ChatRequest(messages=[Message("user", PROMPT)], parameters={"max_tokens": 5}),
        presented_key=True,
        api_key=services.identify(key),
    )
    task = asyncio.ensure_future(hub.client.server.app[PIPELINES].chain_for("default")(ctx))
    await hub.fake.wait_until(lambda: hub.fake.in_flight == 1)
    assert services.reservations.reserved(f"key:{key_id}") > 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert isinstance(ctx.error, RequestCancelled) and _settled(hub)
    assert services.key_ledger.spent(key_id, time.time()) == 0.0


async def test_an_uncapped_request_alone_may_take_what_is_left_but_not_beside_another(hub: Hub) -> None:
    # No max_tokens, no max_output_tokens: the worst case is 4096 output tokens ($0.0082), the routing estimate
    # 512 ($0.001). With $0.002 left it runs alone, holding all that is left; a second one beside it is refused.
    key, key_id = await _setup(hub, 0.002)
    answer = asyncio.Event()
    hub.fake.script("gpt-test", Gated(answer))
    first = asyncio.ensure_future(_completions(hub, key, max_tokens=None))
    await hub.fake.wait_until(lambda: hub.fake.in_flight == 1)
    assert hub.services.reservations.reserved(f"key:{key_id}") == pytest.approx(0.002)
    status, body = await _completions(hub, key, max_tokens=None)
    assert status == 429 and body["error"]["code"] == "monthly_budget_exceeded"
    answer.set()
    assert (await first)[0] == 200 and _settled(hub)


def test_local_reservations_hold_settle_and_release() -> None:
    res = LocalReservations()
    key = BudgetAccount("key:k", 1.0, 0.25)
    plan = BudgetAccount("plan:p", 0.5, 0.0)
    assert res.reserve("a", (key, plan), 0.3, 0.3) is None
    assert res.reserved("key:k") == pytest.approx(0.3) and res.reserved("plan:p") == pytest.approx(0.3)
    assert res.reserve("b", (key, plan), 0.3, 0.3) is plan  # 0.3 + 0.3 > 0.5: the plan refuses, nothing held
    assert res.holders == 1 and res.total_usd == pytest.approx(0.3)
    assert res.reserve("b", (key, plan), 0.5, 0.1) is None  # the worst case does not fit: it takes what is left
    assert res.reserved("plan:p") == pytest.approx(0.5)
    res.reserve("a", (key,), 0.1, 0.1)  # a failover: replaces a's hold
    assert res.reserved("key:k") == pytest.approx(0.3) and res.reserved("plan:p") == pytest.approx(0.2)
    res.settle("a", 0.05)
    assert res.reserved("key:k") == pytest.approx(0.25)
    res.release("a")
    res.release("b")
    res.release("unknown")
    assert res.holders == 0 and res.total_usd == 0.0 and res.reserved("key:k") == 0.0
