"""Durable orchestration on a real Temporal dev server: chats and every plan mode as workflows, the same rows
as the direct path, async plans, the workflow endpoints, and the fallback when Temporal goes away."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import Hub
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


@pytest.fixture
async def durable(make_hub: Callable[..., Any], temporal: TemporalDevServer) -> Hub:
    hub = await make_hub(
        temporal_enabled=True, temporal_host=temporal.address, temporal_task_queue=f"q-{uuid.uuid4().hex[:8]}"
    )
    await wait_for(lambda: hub.services.temporal.up, "Temporal to be up")
    return hub


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
