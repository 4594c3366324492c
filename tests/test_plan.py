"""POST /v1/plan through the real server: adversarial, vote, refine, budgets, schema, streaming, cancellation."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from stages.plan_modes import parse_choice
from tests.conftest import Hub
from tests.fakes.openai_fake import Fail, Gated, Reply


def by_role(model: str, body: dict[str, Any]) -> str:
    """A fake that answers as the role its system prompt gives it, quoting what it was shown."""
    system = next((m["content"] for m in body["messages"] if m["role"] == "system"), "")
    user = body["messages"][-1]["content"]
    if "critical reviewer" in system:
        return f"CRITIQUE[{model}]"
    if "Refine the plan" in system:
        return f"REFINED[{model}]" + ("+C" if "CRITIQUE" in user else "")
    if "planning assistant" in system:
        return f"PLAN[{model}]"
    if "judge" in system:
        return "Response 2 is the best."
    if "improve the response" in system:
        return f"IMPROVED({user.split('Current response:')[1].split(chr(10))[1]})"
    return f"ANSWER[{model}]"


async def _setup(hub: Hub, *models: str, price: float = 0.001) -> str:
    hub.fake.responder = by_role
    await hub.add_provider()
    for index, model in enumerate(models):
        await hub.add_model(model, weight=9 - index, input_per_1k=price, output_per_1k=price, max_context_tokens=8000)
    return await hub.new_key()


async def _plan(hub: Hub, key: str, orchestration: dict[str, Any], content: str = "Build a shed", **extra: Any) -> Any:
    body = {"request": {"messages": [{"role": "user", "content": content}]}, "orchestration": orchestration, **extra}
    resp = await hub.client.post("/v1/plan", json=body, headers={"Authorization": f"Bearer {key}"})
    return resp, await resp.json()


async def _rows(hub: Hub) -> list[dict[str, Any]]:
    await hub.services.records.flush()
    return await hub.logs()


async def test_adversarial_runs_plan_critique_refine_in_order(hub: Hub) -> None:
    key = await _setup(hub, "planner", "critic")
    resp, body = await _plan(hub, key, {"mode": "adversarial", "iterations": 2, "review_model_id": "critic"})
    assert resp.status == 200, body
    assert [s["role"] for s in body["steps"]] == ["plan", "critique", "refine", "critique", "refine"]
    assert [s["model_id"] for s in body["steps"]] == ["planner", "critic", "planner", "critic", "planner"]
    assert body["response"] == {
        "initial_plan": "PLAN[planner]",
        "critique": "CRITIQUE[critic]",
        "refined_plan": "REFINED[planner]+C",
    }
    assert body["complete"] is True and body["negotiated_model"] == "planner"
    assert body["total_cost_usd"] == pytest.approx(sum(s["cost_usd"] for s in body["steps"]))
    assert body["total_cost_usd"] > 0
    # prompts carry what earlier steps produced
    second_critique = [r for r in hub.fake.requests if r["model"] == "critic"][1]["json"]["messages"][1]["content"]
    assert "REFINED[planner]" in second_critique and "Build a shed" in second_critique
    # one request-log row per step, linked to the plan's row
    plan_id = resp.headers["X-Request-Id"]
    rows = await _rows(hub)
    steps = [r for r in rows if r["parent_request_id"] == plan_id]
    assert sorted(r["request_id"] for r in steps) == sorted(s["request_id"] for s in body["steps"])
    assert {r["endpoint"] for r in steps} == {"plan_step"} and all(r["status"] == 200 for r in steps)
    (plan_row,) = [r for r in rows if r["request_id"] == plan_id]
    assert plan_row["endpoint"] == "plan" and plan_row["mode"] == "adversarial" and plan_row["cost_usd"] == 0


async def test_return_plan_only_stops_after_the_plan(hub: Hub) -> None:
    key = await _setup(hub, "planner")
    _, body = await _plan(hub, key, {"mode": "adversarial", "return_plan_only": True})
    assert body["response"] == {"initial_plan": "PLAN[planner]"} and len(body["steps"]) == 1


async def test_vote_fans_out_concurrently_and_the_judge_picks(hub: Hub) -> None:
    key = await _setup(hub, "a", "b", "c", "judge")
    answer = asyncio.Event()
    for model in ("a", "b", "c"):
        hub.fake.script(model, Gated(answer))
    plan = asyncio.ensure_future(_plan(hub, key, {"mode": "vote", "iterations": 3, "review_model_id": "judge"}))
    # all voters are in flight at once, not one after another (one at a time would never get there)
    await hub.fake.wait_until(lambda: hub.fake.in_flight == 3)
    answer.set()
    resp, body = await plan
    assert resp.status == 200, body
    assert sorted(s["model_id"] for s in body["steps"] if s["role"] == "vote") == ["a", "b", "c"]
    assert body["steps"][-1]["role"] == "judge" and body["steps"][-1]["model_id"] == "judge"
    composite = body["response"]
    assert composite["selected"] == 1 and composite["judge"] == "judge"
    assert [r["selected"] for r in composite["responses"]] == [False, True, False]
    assert body["negotiated_model"] == composite["responses"][1]["model"]
    judge_prompt = hub.fake.requests[-1]["json"]["messages"][1]["content"]
    assert "Response 1 (model" in judge_prompt and "Response 3 (model" in judge_prompt


async def test_a_failing_voter_does_not_fail_the_vote(hub: Hub) -> None:
    key = await _setup(hub, "a", "b", "c", "judge")
    hub.fake.script("b", Fail(400))  # rejected on its merits: that voter is dropped
    resp, body = await _plan(hub, key, {"mode": "vote", "iterations": 3, "review_model_id": "judge"})
    assert resp.status == 200, body
    assert sorted(r["model"] for r in body["response"]["responses"]) == ["a", "c"]
    assert "voter b failed" in body["routing_reason"]


async def test_all_voters_failing_is_an_error(hub: Hub) -> None:
    key = await _setup(hub, "a", "b", "judge")
    hub.fake.script("a", Fail(400))
    hub.fake.script("b", Fail(400))
    resp, body = await _plan(hub, key, {"mode": "vote", "iterations": 2, "review_model_id": "judge"})
    assert resp.status == 502 and "all voters failed" in body["error"]["message"]


async def test_refine_improves_with_the_same_model(hub: Hub) -> None:
    key = await _setup(hub, "solo", "other")
    _, body = await _plan(hub, key, {"mode": "refine", "iterations": 2})
    assert [s["role"] for s in body["steps"]] == ["initial", "refine", "refine"]
    assert {s["model_id"] for s in body["steps"]} == {"solo"}
    assert body["response"]["refined_response"] == "IMPROVED(IMPROVED(ANSWER[solo]))"
    assert body["response"]["completed_iterations"] == 2


async def test_the_budget_stops_the_plan_and_returns_what_was_done(hub: Hub) -> None:
    key = await _setup(hub, "planner", price=0.01)
    # each step is estimated at (a few + 512 output tokens) x $0.01/1k ~ $0.0052 and really costs ~$0.0051:
    # the first two fit in $0.011, the third's estimate exceeds what is left
    big = Reply(usage={"prompt_tokens": 10, "completion_tokens": 500, "total_tokens": 510})
    hub.fake.script("planner", big, big, big)
    resp, body = await _plan(hub, key, {"mode": "adversarial", "iterations": 1}, policy={"max_budget_usd": 0.011})
    assert resp.status == 200, body
    assert body["complete"] is False and "budget" in body["stop_reason"]
    assert [s["role"] for s in body["steps"]] == ["plan", "critique"]
    assert body["response"]["initial_plan"] == "PLAN[planner]" and body["response"]["refined_plan"] is None
    assert body["total_cost_usd"] <= 0.011


async def test_a_plan_without_a_budget_runs_every_step(make_hub: Any) -> None:
    """A budget that resolves to 0 is "no budget filter", for a plan as for a chat (it stopped every plan
    before its first step)."""
    hub = await make_hub(default_max_budget_usd=0)
    key = await _setup(hub, "planner", "critic")
    resp, body = await _plan(hub, key, {"mode": "adversarial", "iterations": 1, "review_model_id": "critic"})
    assert resp.status == 200, body
    assert [s["role"] for s in body["steps"]] == ["plan", "critique", "refine"] and body["complete"] is True
    assert body["total_cost_usd"] > 0


async def test_a_budget_too_small_for_the_first_step_is_422(hub: Hub) -> None:
    key = await _setup(hub, "planner", price=0.01)
    resp, body = await _plan(hub, key, {"mode": "adversarial"}, policy={"max_budget_usd": 0.001})
    assert resp.status == 422 and "first step" in body["error"]["message"]
    assert hub.fake.requests == []


async def test_output_schema_mismatch_is_a_clear_error(hub: Hub) -> None:
    key = await _setup(hub, "planner")
    schema = json.dumps({"type": "object", "properties": {"initial_plan": {"type": "number"}}})
    resp, body = await _plan(hub, key, {"mode": "adversarial", "return_plan_only": True, "output_schema": schema})
    assert resp.status == 502
    assert body["error"]["type"] == "output_schema_mismatch" and "initial_plan" in body["error"]["message"]
    ok_schema = {"type": "object", "required": ["initial_plan"]}
    resp, body = await _plan(hub, key, {"mode": "adversarial", "return_plan_only": True, "output_schema": ok_schema})
    assert resp.status == 200 and body["response"]["initial_plan"] == "PLAN[planner]", body


@pytest.mark.parametrize(
    ("orchestration", "field"),
    [
        ({"mode": "adversarial", "output_schema": "{not json"}, "orchestration.output_schema"),
        ({"mode": "adversarial", "output_schema": {"type": 12}}, "orchestration.output_schema"),
        ({"mode": "chaos"}, "orchestration.mode"),
        ({"mode": "vote", "iterations": 11}, "orchestration.iterations"),
    ],
)
async def test_bad_orchestration_is_rejected_before_any_step(hub: Hub, orchestration: Any, field: str) -> None:
    key = await _setup(hub, "planner")
    resp, body = await _plan(hub, key, orchestration)
    assert resp.status == 400 and body["error"]["field"] == field
    assert hub.fake.requests == []


async def test_directives_select_the_orchestration(hub: Hub) -> None:
    key = await _setup(hub, "solo")
    _, body = await _plan(hub, key, {}, content="@@tokenhub mode=refine iterations=1\nImprove my essay")
    assert [s["role"] for s in body["steps"]] == ["initial", "refine"]
    assert hub.fake.requests[0]["json"]["messages"][0]["content"] == "Improve my essay"


async def test_client_disconnect_cancels_outstanding_steps(make_hub: Any) -> None:
    hub = await make_hub(provider_timeout_secs=60)  # only the client's leaving can end the voters' calls
    key = await _setup(hub, "a", "b", "c")
    for model in ("a", "b", "c"):
        hub.fake.script(model, Gated(asyncio.Event()))
    body = {"request": {"messages": [{"role": "user", "content": "q"}]}, "orchestration": {"mode": "vote"}}
    task = asyncio.ensure_future(hub.client.post("/v1/plan", json=body, headers={"Authorization": f"Bearer {key}"}))
    await hub.fake.wait_until(lambda: hub.fake.in_flight == 3)  # every voter is at the provider
    task.cancel()  # the client gives up: its connection closes
    await hub.fake.wait_until(lambda: hub.fake.cancelled == 3)  # and every upstream call was cancelled
    rows = await _rows(hub)
    assert {r["status"] for r in rows} == {499}  # the plan and each voter step


async def test_streamed_plan_reports_each_step_as_it_happens(hub: Hub) -> None:
    key = await _setup(hub, "planner")
    body = {
        "request": {"messages": [{"role": "user", "content": "q"}], "stream": True},
        "orchestration": {"mode": "adversarial"},
    }
    resp = await hub.client.post("/v1/plan", json=body, headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    events = []
    for block in (await resp.text()).strip().split("\n\n"):
        name, data = block.split("\n")
        events.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    assert [name for name, _ in events] == [
        "step_started",
        "step_completed",
        "step_started",
        "step_completed",
        "step_started",
        "step_completed",
        "plan",
    ]
    assert [data["role"] for name, data in events if name == "step_completed"] == ["plan", "critique", "refine"]
    assert events[1][1]["content"] == "PLAN[planner]"
    assert events[-1][1]["response"]["refined_plan"] == "REFINED[planner]+C"


async def test_a_streamed_plan_that_fails_ends_with_an_error_event(hub: Hub) -> None:
    key = await _setup(hub, "planner")
    hub.fake.script("planner", Reply(), Fail(400))  # the plan succeeds, the critique is rejected
    body = {
        "request": {"messages": [{"role": "user", "content": "q"}], "stream": True},
        "orchestration": {"mode": "adversarial"},
    }
    resp = await hub.client.post("/v1/plan", json=body, headers={"Authorization": f"Bearer {key}"})
    text = await resp.text()
    last = text.strip().split("\n\n")[-1]
    assert last.startswith("event: error") and "adversarial critique phase" in last


def test_judge_answer_parsing() -> None:
    assert parse_choice("I pick 2.", 3) == 1
    assert parse_choice("Response 3 beats 1", 3) == 2
    assert parse_choice("The best is #10 no wait 1", 3) == 0
    assert parse_choice("answer two-3x", 3) == 2  # no standalone number: the original's substring rule
    assert parse_choice("none of them", 3) == 0
