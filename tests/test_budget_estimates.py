"""Honest budgets: the output estimate is max_tokens x n (else the model's output cap, else 512), the per-request
budget and the API key's remaining monthly budget are checked against it before dispatch, and /v1/plan checks
the key again for every step."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.types import ModelInfo
from stages.scoring import OUTPUT_TOKENS_ESTIMATE, estimate_cost, estimate_output_tokens, requested_output
from tests.conftest import Hub
from tests.fakes.openai_fake import Reply

PRICE = 0.01  # $ per 1k output tokens (input is free here, so the estimate is all output)


async def _setup(hub: Hub, **model: Any) -> None:
    await hub.add_provider()
    await hub.add_model("gpt-test", weight=5, input_per_1k=0.0, output_per_1k=PRICE, **model)


async def _completions(hub: Hub, key: str, **fields: Any) -> tuple[int, dict[str, Any]]:
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], **fields}
    resp = await hub.client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
    return resp.status, await resp.json()


def test_output_estimate_rules() -> None:
    plain = ModelInfo("m", "p", output_per_1k=1.0)
    capped = ModelInfo("m", "p", output_per_1k=1.0, max_output_tokens=1000)
    assert estimate_output_tokens(plain) == OUTPUT_TOKENS_ESTIMATE
    assert estimate_output_tokens(plain, 4000, 3) == 12_000  # max_tokens x n
    assert estimate_output_tokens(plain, 0, 2) == 2 * OUTPUT_TOKENS_ESTIMATE
    assert estimate_output_tokens(capped) == 1000  # no client cap: the model's
    assert estimate_output_tokens(capped, 4000, 2) == 2000  # the client's cap, clipped to the model's
    assert estimate_cost(capped, 0, 200, 2) == pytest.approx(0.4)
    assert requested_output({"max_tokens": 300, "n": 2}) == (300, 2)
    assert requested_output({"max_tokens": 300, "max_completion_tokens": 50}) == (50, 1)  # as the adapters send
    # native parameters are untyped: what is not a positive integer is no cap
    assert requested_output({"max_tokens": "900", "n": True}) == (0, 1)
    assert requested_output({"max_tokens": -5, "n": 0}) == (0, 1)
    assert requested_output({}) == (0, 1)


async def test_the_per_request_budget_covers_max_tokens_times_n(hub: Hub) -> None:
    await _setup(hub)
    key = await hub.new_key()
    budget = {"tokenhub": {"max_budget_usd": 0.02}}
    assert (await _completions(hub, key, **budget))[0] == 200  # 512 x $0.01/1k = $0.00512
    assert (await _completions(hub, key, max_tokens=1000, **budget))[0] == 200  # $0.01
    status, body = await _completions(hub, key, max_tokens=1000, n=3, **budget)  # $0.03
    assert status == 422 and "budget_exceeded" in body["error"]["message"], body
    status, body = await _completions(hub, key, max_tokens=3000, **budget)
    assert status == 422 and "budget_exceeded" in body["error"]["message"], body
    assert len(hub.fake.requests) == 2
    # the native endpoint's parameters count the same way
    status, _, _ = await hub.chat(key, policy={"max_budget_usd": 0.02}, parameters={"max_tokens": 3000})
    assert status == 422
    assert (await hub.chat(key, policy={"max_budget_usd": 0.02}, parameters={"max_tokens": 1500}))[0] == 200
    assert len(hub.fake.requests) == 3


async def test_a_model_output_cap_bounds_the_estimate(hub: Hub) -> None:
    await _setup(hub, max_output_tokens=4000)
    key = await hub.new_key()
    listed = (await hub.admin("GET", "/models"))["items"]
    assert listed[0]["max_output_tokens"] == 4000
    budget = {"max_budget_usd": 0.02}
    status, body, _ = await hub.chat(key, policy=budget)  # no max_tokens: the model's 4000 -> $0.04
    assert status == 422 and "budget_exceeded" in body["error"]["message"]
    assert (await hub.chat(key, policy=budget, parameters={"max_tokens": 1000}))[0] == 200
    patched = await hub.admin("PATCH", "/models/gpt-test", {"max_output_tokens": 1000}, expect=200)
    assert patched["model"]["max_output_tokens"] == 1000
    assert (await hub.chat(key, policy=budget))[0] == 200  # now $0.01
    assert (await hub.chat(key, policy=budget, parameters={"max_tokens": 100_000}))[0] == 200  # clipped to 1000
    await hub.admin("PATCH", "/models/gpt-test", {"max_output_tokens": -1}, expect=400)
    assert len(hub.fake.requests) == 3


async def test_a_key_budget_refuses_a_request_it_cannot_cover_before_dispatch(hub: Hub) -> None:
    await _setup(hub)
    await hub.add_model("gpt-cheap", weight=1, input_per_1k=0.0, output_per_1k=PRICE / 100)
    data = await hub.admin("POST", "/apikeys", {"name": "capped", "monthly_budget_usd": 0.01}, expect=201)
    key, key_id = data["key"], data["id"]
    # gpt-test would cost $0.02 on 2000 tokens, more than the $0.01 the key has: the cheaper model serves it
    status, body, _ = await hub.chat(key, parameters={"max_tokens": 2000})
    assert status == 200 and body["negotiated_model"] == "gpt-cheap"
    assert "gpt-test (key_budget_exceeded)" in body["routing_reason"]
    # no model fits 200 000 tokens in what is left: the key's 429, in every endpoint's shape, nothing sent
    status, body, _ = await hub.chat(key, parameters={"max_tokens": 200_000})
    assert status == 429 and body["error"]["type"] == "monthly_budget_exceeded"
    assert "estimated cost" in body["error"]["message"] and body["error"]["budget_usd"] == 0.01
    status, body = await _completions(hub, key, max_tokens=100_000, n=2)
    assert status == 429 and body["error"]["code"] == "monthly_budget_exceeded"
    assert len(hub.fake.requests) == 1
    spend = next(k for k in (await hub.admin("GET", "/apikeys"))["keys"] if k["id"] == key_id)["current_spend_usd"]
    assert spend == pytest.approx(5 / 1000 * PRICE / 100)  # only the request that was served


async def _plan(hub: Hub, key: str) -> tuple[int, dict[str, Any]]:
    body = {
        "request": {"messages": [{"role": "user", "content": "Build a shed"}]},
        "orchestration": {"mode": "adversarial"},
        "policy": {"max_budget_usd": 1.0},  # the plan's own budget is no constraint here: the key's is
    }
    resp = await hub.client.post("/v1/plan", json=body, headers={"Authorization": f"Bearer {key}"})
    return resp.status, await resp.json()


async def test_a_plan_checks_the_key_budget_before_every_step(hub: Hub) -> None:
    await _setup(hub)
    key = await hub.new_key(monthly_budget_usd=0.05)
    # the first step is estimated at ~$0.005 but reports 10 000 output tokens ($0.10): the key is spent
    hub.fake.script("gpt-test", Reply(usage={"prompt_tokens": 10, "completion_tokens": 10_000, "total_tokens": 10_010}))
    status, body = await _plan(hub, key)
    assert status == 200, body
    assert [step["role"] for step in body["steps"]] == ["plan"]
    assert body["complete"] is False and "monthly budget exceeded" in body["stop_reason"]
    assert len(hub.fake.requests) == 1  # critique and refine were never sent
    # the next plan is refused before its first step
    status, body = await _plan(hub, key)
    assert status == 429 and body["error"]["type"] == "monthly_budget_exceeded"
    assert len(hub.fake.requests) == 1


async def test_a_plan_whose_first_step_the_key_cannot_cover_is_refused(hub: Hub) -> None:
    await _setup(hub)
    key = await hub.new_key(monthly_budget_usd=0.001)  # less than one step's ~$0.005 estimate
    status, body = await _plan(hub, key)
    assert status == 429 and body["error"]["type"] == "monthly_budget_exceeded", body
    assert "estimated cost" in body["error"]["message"]
    assert hub.fake.requests == []
