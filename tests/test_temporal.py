"""Durable orchestration on a real Temporal dev server: chats and every plan mode as workflows, the same rows
as the direct path, async plans, the workflow endpoints, and the fallback when Temporal goes away."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import Hub
from tests.fakes.openai_fake import Gated
from tests.fakes.temporal_server import TemporalDevServer
from tests.test_plan import _plan, _rows, _setup


@pytest.fixture(scope="module")
def temporal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemporalDevServer]:
    server = TemporalDevServer(tmp_path_factory.mktemp("temporal"))
    asyncio.run(server.start())
    yield server
    server.stop()


async def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def _durable_hub(make_hub: Callable[..., Any], temporal: TemporalDevServer, **overrides: Any) -> Hub:
    hub = await make_hub(
        temporal_enabled=True,
        temporal_host=temporal.address,
        temporal_task_queue=f"q-{uuid.uuid4().hex[:8]}",
        **overrides,
    )
    await wait_for(lambda: hub.services.temporal.up, "Temporal to be up")
    return hub


@pytest.fixture
async def durable(make_hub: Callable[..., Any], temporal: TemporalDevServer) -> Hub:
    return await _durable_hub(make_hub, temporal)


async def test_chat_runs_as_a_workflow_with_the_direct_paths_row(durable: Hub) -> None:
    hub = durable
    await hub.add_provider()
    await hub.add_model("gpt-test", weight=5, input_per_1k=0.001, output_per_1k=0.002, max_context_tokens=8000)
    key = await hub.new_key()
    status, body, resp = await hub.chat(key, "hello")
    assert status == 200, body
    rid = resp.headers["X-Request-Id"]
    assert body["negotiated_model"] == "gpt-test" and body["response"]["choices"][0]["message"]["content"]
    assert resp.headers["X-Provider"] == "fake"
    assert hub.fake.calls("gpt-test") == 1
    described = await hub.admin("GET", f"/workflows/chat-{rid}", expect=200)
    assert described["status"] == "COMPLETED" and described["type"] == "ChatWorkflow"
    rows = [r for r in await _rows(hub) if r["request_id"] == rid]
    assert len(rows) == 1 and rows[0]["status"] == 200 and rows[0]["endpoint"] == "chat"
    assert rows[0]["api_key_id"] and rows[0]["cost_usd"] == body["estimated_cost_usd"] > 0


@pytest.mark.parametrize(
    ("orchestration", "roles"),
    [
        ({"mode": "adversarial", "iterations": 1, "review_model_id": "critic"}, ["plan", "critique", "refine"]),
        ({"mode": "vote", "iterations": 2}, ["vote", "vote", "judge"]),
        ({"mode": "refine", "iterations": 1}, ["initial", "refine"]),
        ({"mode": "planning"}, ["answer"]),
    ],
)
async def test_each_plan_mode_runs_as_a_workflow_with_one_row_per_step(
    durable: Hub, orchestration: dict[str, Any], roles: list[str]
) -> None:
    hub = durable
    key = await _setup(hub, "planner", "critic")
    resp, body = await _plan(hub, key, orchestration)
    assert resp.status == 200, body
    plan_id = resp.headers["X-Request-Id"]
    assert sorted(s["role"] for s in body["steps"]) == sorted(roles) and body["complete"] is True
    assert body["total_cost_usd"] == pytest.approx(sum(s["cost_usd"] for s in body["steps"]))
    assert body["total_cost_usd"] > 0
    described = await hub.admin("GET", f"/workflows/plan-{plan_id}", expect=200)
    assert described["status"] == "COMPLETED" and described["type"] == "OrchestrationWorkflow"
    rows = await _rows(hub)
    steps = [r for r in rows if r["parent_request_id"] == plan_id]
    assert sorted(r["request_id"] for r in steps) == sorted(s["request_id"] for s in body["steps"])
    assert all(r["status"] == 200 and r["endpoint"] == "plan_step" and r["api_key_id"] for r in steps)
    (plan_row,) = [r for r in rows if r["request_id"] == plan_id]
    assert plan_row["endpoint"] == "plan" and plan_row["routing_reason"] == body["routing_reason"]
    assert len(hub.fake.requests) == len(roles)  # nothing sent twice


async def _async_plan(hub: Hub, key: str, orchestration: dict[str, Any]) -> tuple[int, Any]:
    body = {"request": {"messages": [{"role": "user", "content": "Build a shed"}]}, "orchestration": orchestration}
    resp = await hub.client.post("/v1/plan", json={**body, "async": True}, headers={"Authorization": f"Bearer {key}"})
    return resp.status, await resp.json()


async def _status(hub: Hub, key: str, plan_id: str, method: str = "GET") -> tuple[int, Any]:
    resp = await hub.client.request(method, f"/v1/plans/{plan_id}", headers={"Authorization": f"Bearer {key}"})
    return resp.status, await resp.json()


async def test_async_plan_answers_202_and_only_its_key_follows_it(durable: Hub) -> None:
    hub = durable
    key = await _setup(hub, "planner", "critic")
    other = await hub.new_key()
    status, started = await _async_plan(hub, key, {"mode": "adversarial", "review_model_id": "critic"})
    assert status == 202, started
    plan_id = started["plan_id"]
    assert started["status_url"] == f"/v1/plans/{plan_id}"

    async def done() -> Any:
        got, body = await _status(hub, key, plan_id)
        assert got == 200, body
        return body if body["status"] != "running" else None

    body = await wait_for(done, "the async plan to finish")
    assert body["status"] == "completed"
    assert [s["role"] for s in body["steps"]] == ["plan", "critique", "refine"]
    assert body["result"]["response"]["refined_plan"] == "REFINED[planner]+C"
    assert [s["request_id"] for s in body["result"]["steps"]] == [s["request_id"] for s in body["steps"]]
    for method in ("GET", "DELETE"):  # another key cannot tell the plan exists
        got, refused = await _status(hub, other, plan_id, method)
        assert got == 404 and refused["error"]["type"] == "not_found"
    got, _ = await _status(hub, "", plan_id)
    assert got == 401
    rows = await _rows(hub)
    assert len([r for r in rows if r["parent_request_id"] == plan_id]) == 3
    assert [r["status"] for r in rows if r["request_id"] == plan_id] == [200]


async def test_cancelling_an_async_plan_cancels_its_step_in_flight(
    make_hub: Callable[..., Any], temporal: TemporalDevServer
) -> None:
    # The critique is held until cancelled: only the DELETE (via the activity's heartbeats) can end it, never
    # the provider timeout (the tests' 2 s, which a loaded machine's heartbeats could lose to).
    hub = await _durable_hub(make_hub, temporal, provider_timeout_secs=120)
    key = await _setup(hub, "planner", "critic")
    hub.fake.script("critic", Gated(asyncio.Event()))  # never set
    status, started = await _async_plan(hub, key, {"mode": "adversarial", "review_model_id": "critic"})
    assert status == 202, started
    plan_id = started["plan_id"]
    await wait_for(lambda: hub.fake.calls("critic") == 1, "the critique to be in flight")
    got, body = await _status(hub, key, plan_id, "DELETE")
    assert got == 200 and body["cancelled"] is True, body

    async def cancelled() -> Any:
        _, body = await _status(hub, key, plan_id)
        return body if body["status"] == "cancelled" else None

    body = await wait_for(cancelled, "the plan to be cancelled")
    assert [s["role"] for s in body["steps"]] == ["plan"]
    await hub.fake.wait_until(lambda: hub.fake.cancelled == 1)  # the critique's call was hung up on
    await asyncio.sleep(1.5)
    assert hub.fake.calls("planner") == 1 and hub.fake.calls("critic") == 1  # nothing after the cancel
    rows = await _rows(hub)
    by_id = {r["request_id"]: r for r in rows}
    assert by_id[f"{plan_id}.2-critique"]["status"] == 499 and by_id[f"{plan_id}.2-critique"]["cost_usd"] == 0
    assert by_id[plan_id]["status"] == 499
    got, again = await _status(hub, key, plan_id, "DELETE")
    assert got == 200 and again["cancelled"] is False and again["status"] == "cancelled"


async def test_async_plan_without_temporal_is_refused(ready_hub: tuple[Hub, str]) -> None:
    hub, key = ready_hub
    status, body = await _async_plan(hub, key, {"mode": "planning"})
    assert status == 400 and body["error"]["field"] == "async" and "Temporal" in body["error"]["message"]
    assert hub.fake.calls("gpt-test") == 0
    got, off = await _status(hub, key, "th-0123")
    assert got == 400 and "TOKENHUB_TEMPORAL_ENABLED" in off["error"]["message"]
    assert await hub.admin("GET", "/workflows", expect=200) == {"workflows": [], "temporal_enabled": False}
    assert await hub.admin("GET", "/workflows/chat-x", expect=200) == {"temporal_enabled": False}
    health = await (await hub.client.get("/healthz")).json()
    assert health["temporal"] == {"enabled": False}
    status, body, _ = await hub.chat(key)  # and chats run directly, as ever
    assert status == 200


async def test_workflow_endpoints_list_filter_and_history(durable: Hub) -> None:
    hub = durable
    key = await _setup(hub, "planner", "critic")
    resp, body = await _plan(hub, key, {"mode": "refine", "iterations": 1})
    assert resp.status == 200, body
    plan_id = resp.headers["X-Request-Id"]
    listed = await hub.admin("GET", "/workflows?status=COMPLETED&limit=200", expect=200)
    assert f"plan-{plan_id}" in {w["workflow_id"] for w in listed["workflows"]}
    assert all(w["status"] == "COMPLETED" and w["duration_ms"] >= 0 for w in listed["workflows"])
    running = await hub.admin("GET", "/workflows?status=RUNNING", expect=200)
    assert f"plan-{plan_id}" not in {w["workflow_id"] for w in running["workflows"]}
    refused = await hub.admin("GET", "/workflows?status=DONE", expect=400)
    assert "invalid status filter" in refused["error"]["message"]
    await hub.admin("GET", "/workflows?limit=0", expect=400)
    history = await hub.admin("GET", f"/workflows/plan-{plan_id}/history", expect=200)
    assert history["events"][0]["event_type"] == "WORKFLOW_EXECUTION_STARTED"
    steps = [a for a in history["activities"] if a["activity"] == "run_step"]
    assert [a["request_id"] for a in steps] == [s["request_id"] for s in body["steps"]]
    assert all(a["status"] == "completed" and a["model"] and a["cost_usd"] > 0 for a in steps)
    assert [a["activity"] for a in history["activities"]][-1] == "finish_plan"
    missing = await hub.admin("GET", "/workflows/plan-nope", expect=404)
    assert missing["error"]["type"] == "not_found"


async def test_fallback_when_temporal_stops_and_recovery_when_it_returns(
    durable: Hub, temporal: TemporalDevServer
) -> None:
    hub = durable
    await hub.add_provider()
    await hub.add_model("gpt-test", weight=5, input_per_1k=0.001, output_per_1k=0.002, max_context_tokens=8000)
    key = await hub.new_key()
    temporal.stop()
    try:
        await wait_for(lambda: not hub.services.temporal.up, "Temporal to be seen down")
        status, body, resp = await hub.chat(key, "while Temporal is down")
        assert status == 200, body
        rid = resp.headers["X-Request-Id"]
        health = await hub.client.get("/healthz")
        state = (await health.json())["temporal"]
        assert health.status == 200 and state["enabled"] is True and state["state"] == "down"
        metrics = await (await hub.client.get("/metrics")).text()
        assert 'tokenhub_temporal_fallback_total{reason="unavailable"} 1.0' in metrics
        assert "tokenhub_temporal_up 0.0" in metrics
        rows = [r for r in await _rows(hub) if r["request_id"] == rid]
        assert len(rows) == 1 and rows[0]["status"] == 200
    finally:
        await temporal.start()
    await wait_for(lambda: hub.services.temporal.up, "Temporal to be up again", timeout=30)
    status, body, resp = await hub.chat(key, "after the restart")
    assert status == 200, body
    described = await hub.admin("GET", f"/workflows/chat-{resp.headers['X-Request-Id']}", expect=200)
    assert described["status"] == "COMPLETED"
    assert "tokenhub_temporal_up 1.0" in await (await hub.client.get("/metrics")).text()
