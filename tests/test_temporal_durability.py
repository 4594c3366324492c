"""The point of Temporal, proven: a `tokenhub serve` killed with SIGKILL in the middle of a 3-step plan is
started again on the same data directory, and the plan completes without sending (or charging) the finished
step a second time; the request log has exactly one row per step and one for the plan."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from stages.plan_modes import PLAN_SYSTEM
from tests.conftest import ADMIN_TOKEN
from tests.fakes.openai_fake import FakeOpenAI, Hang, Reply
from tests.fakes.temporal_server import TemporalDevServer
from tests.support.server import free_port
from tests.test_plan import by_role
from tests.test_temporal import wait_for

ROOT = Path(__file__).resolve().parent.parent
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def temporal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemporalDevServer]:
    server = TemporalDevServer(tmp_path_factory.mktemp("temporal"))
    asyncio.run(server.start())
    yield server
    server.stop()


class Served:
    """One `tokenhub serve` process (this worktree's code) and an HTTP session to it."""

    def __init__(self, data_dir: Path, temporal: TemporalDevServer, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "TOKENHUB_LISTEN_ADDR": f"127.0.0.1:{self.port}",
            "TOKENHUB_DATA_DIR": str(data_dir),
            "TOKENHUB_ADMIN_TOKEN": ADMIN_TOKEN,
            "TOKENHUB_HEALTH_PROBE_INTERVAL_SECS": "0",
            "TOKENHUB_EXPLORATION_TEMP": "0",
            "TOKENHUB_CREDENTIALS_FILE": str(data_dir / "no-credentials"),
            "TOKENHUB_TEMPORAL_ENABLED": "true",
            "TOKENHUB_TEMPORAL_HOST": temporal.address,
            "TOKENHUB_TEMPORAL_TASK_QUEUE": "durability",
            "TOKENHUB_LOG_LEVEL": "warn",
        }
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pipeline", "serve"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    async def ready(self, session: aiohttp.ClientSession) -> None:
        async def temporal_up() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"tokenhub serve exited with {self.process.returncode}")
            try:
                async with session.get(f"{self.url}/healthz") as resp:
                    return (await resp.json()).get("temporal", {}).get("state") == "up"
            except aiohttp.ClientError:
                return False

        await wait_for(temporal_up, "tokenhub serve with Temporal up", timeout=60)

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def _admin(session: aiohttp.ClientSession, url: str, method: str, path: str, body: Any = None) -> Any:
    async with session.request(method, f"{url}/admin/v1{path}", json=body, headers=ADMIN) as resp:
        data = await resp.json()
        assert resp.status < 300, (resp.status, data)
        return data


async def test_a_plan_survives_kill_9_without_paying_a_step_twice(
    temporal: TemporalDevServer, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    data_dir, log = tmp_path / "data", tmp_path / "tokenhub.log"
    async with FakeOpenAI() as fake:
        fake.responder = by_role
        # The critique (step 2) hangs on its first call: the kill lands while it is in flight.
        fake.script("critic", Hang(30), Reply())
        first = Served(data_dir, temporal, log)
        try:
            await first.ready(session)
            url = first.url
            await _admin(
                session, url, "POST", "/providers", {"id": "fake", "base_url": fake.base_url, "api_key": "sk-x"}
            )
            for model, weight in (("planner", 9), ("critic", 8)):
                body = {
                    "id": model,
                    "provider_id": "fake",
                    "weight": weight,
                    "input_per_1k": 0.001,
                    "output_per_1k": 0.001,
                    "max_context_tokens": 8000,
                }
                await _admin(session, url, "POST", "/models", body)
            key = (await _admin(session, url, "POST", "/apikeys", {"name": "durable"}))["key"]
            plan = {
                "request": {"messages": [{"role": "user", "content": "Build a shed"}]},
                "orchestration": {"mode": "adversarial", "iterations": 1, "review_model_id": "critic"},
            }
            headers = {"Authorization": f"Bearer {key}"}

            async def post_plan() -> None:
                async with session.post(f"{url}/v1/plan", json=plan, headers=headers) as resp:
                    await resp.read()

            posted = asyncio.ensure_future(post_plan())
            await wait_for(lambda: fake.calls("critic") == 1, "step 2 (critique) in flight", timeout=30)
            assert fake.calls("planner") == 1  # step 1 answered
            first.kill()
            with pytest.raises(aiohttp.ClientError):
                await posted
        finally:
            first.stop()

        second = Served(data_dir, temporal, log)
        try:
            await second.ready(session)
            url = second.url
            listed = await _admin(session, url, "GET", "/workflows?limit=50")
            (plan_workflow,) = [w for w in listed["workflows"] if w["workflow_id"].startswith("plan-")]
            workflow_id = plan_workflow["workflow_id"]
            plan_id = workflow_id.removeprefix("plan-")

            async def completed() -> bool:
                described = await _admin(session, url, "GET", f"/workflows/{workflow_id}")
                return described["status"] == "COMPLETED"

            await wait_for(completed, "the plan to complete after the restart", timeout=90)
            # Step 1 went to the provider once; step 2 twice (its first call died with the process); step 3 once.
            plan_prompts = [r for r in fake.requests if r["json"]["messages"][0]["content"] == PLAN_SYSTEM]
            assert len(plan_prompts) == 1
            assert fake.calls("critic") == 2 and fake.calls("planner") == 2
            history = await _admin(session, url, "GET", f"/workflows/{workflow_id}/history")
            steps = [a for a in history["activities"] if a["activity"] == "run_step"]
            assert [a["status"] for a in steps] == ["completed"] * 3
            assert all(a["model"] and a["cost_usd"] > 0 and a["duration_ms"] >= 0 for a in steps)
            logs = (await _admin(session, url, "GET", "/logs?limit=1000"))["logs"]
            step_rows = [r for r in logs if r["parent_request_id"] == plan_id]
            assert sorted(r["request_id"] for r in step_rows) == sorted(
                f"{plan_id}.{i}-{role}" for i, role in ((1, "plan"), (2, "critique"), (3, "refine"))
            )
            assert all(r["status"] == 200 and r["api_key_id"] for r in step_rows)
            (plan_row,) = [r for r in logs if r["request_id"] == plan_id]
            assert plan_row["status"] == 200 and plan_row["mode"] == "adversarial"
            # The key was charged once per step: its month-to-date spend is the three rows' cost.
            keys = (await _admin(session, url, "GET", "/apikeys"))["keys"]
            (listed_key,) = [k for k in keys if k["name"] != "host-local"]  # beside the host's own key
            assert listed_key["current_spend_usd"] == pytest.approx(sum(r["cost_usd"] for r in step_rows))
        finally:
            second.stop()
