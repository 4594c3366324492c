"""Exactly one record per request (success or failure) in the DuckDB request log, metrics and no secrets."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.conftest import Hub
from tests.fakes.openai_fake import Fail


async def test_exactly_one_record_per_request_including_failures(make_hub) -> None:  # type: ignore[no-untyped-def]
    hub: Hub = await make_hub(rate_limit_rps=0.01, rate_limit_burst=5)
    await hub.add_provider()
    await hub.add_model("primary", weight=5, input_per_1k=0.0001, output_per_1k=0.0001)
    await hub.add_model("backup", weight=5, input_per_1k=0.001, output_per_1k=0.001)
    key = await hub.new_key()

    def rid(name: str) -> dict[str, str]:
        return {"X-Request-Id": name}

    statuses = {
        "ok": (await hub.chat(key, policy={"mode": "cheap"}, headers=rid("ok")))[0],
        "no-key": (await hub.chat(None, headers=rid("no-key")))[0],
        "bad": (await hub.chat(key, [], headers=rid("bad")))[0],  # rejected while decoding: its token is used too
        "no-model": (await hub.chat(key, policy={"max_budget_usd": 1e-9}, headers=rid("no-model")))[0],
    }
    hub.fake.script("primary", Fail(500), Fail(500), Fail(500))  # retried, then escalated to backup
    statuses["escalated"] = (await hub.chat(key, policy={"mode": "cheap"}, headers=rid("escalated")))[0]
    statuses["limited"] = (await hub.chat(key, headers=rid("limited")))[0]  # the burst of 5 is spent
    assert statuses == {"ok": 200, "no-key": 401, "bad": 400, "no-model": 422, "escalated": 200, "limited": 429}

    logs = await hub.logs()
    per_id = Counter(row["client_request_id"] for row in logs)  # the ids sent; each row has its own id too
    for name in statuses:
        assert per_id[name] == 1, (name, per_id)
    assert len({row["request_id"] for row in logs}) == len(logs)
    by_id = {row["client_request_id"]: row for row in logs}
    assert by_id["ok"]["status"] == 200 and by_id["ok"]["model_id"] in ("primary", "backup")
    assert by_id["no-key"]["status"] == 401 and by_id["no-key"]["error_class"] == "unauthorized"
    assert by_id["bad"]["status"] == 400
    assert by_id["no-model"]["status"] == 422 and by_id["no-model"]["error_class"] == "no_eligible_model"
    assert by_id["limited"]["status"] == 429
    escalated = by_id["escalated"]
    assert escalated["status"] == 200 and escalated["model_id"] == "backup" and escalated["escalations"] == 1
    assert escalated["provider_id"] == "fake" and escalated["api_key_id"] and escalated["tenant_id"] == "default"
    assert escalated["input_tokens"] == 10 and escalated["output_tokens"] == 5
    assert escalated["cost_usd"] > 0 and escalated["latency_ms"] > 0
    assert "served by backup" in escalated["routing_reason"]
    assert key not in str(logs)


async def test_metrics_count_requests_tokens_cost_and_errors(ready_hub: tuple[Hub, str]) -> None:
    hub, key = ready_hub
    await hub.chat(key, policy={"mode": "cheap"})
    await hub.chat(None)
    text = await (await hub.client.get("/metrics")).text()
    assert 'tokenhub_requests_total{mode="cheap",model="gpt-test",provider="fake",status="ok"} 1.0' in text
    assert 'tokenhub_tokens_total{direction="input",model="gpt-test",provider="fake"} 10.0' in text
    assert 'tokenhub_request_errors_total{http_status="401",mode="",model="",provider=""} 1.0' in text
    assert 'tokenhub_provider_attempts_total{outcome="ok",provider="fake"} 1.0' in text
    assert "tokenhub_request_latency_ms_bucket" in text and "tokenhub_cost_usd_total" in text
    assert key not in text and "sk-test-secret" not in text


async def test_record_queue_is_drained_on_shutdown(make_hub, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import duckdb

    hub = await make_hub()
    await hub.add_provider()
    await hub.add_model("gpt-test")
    key = await hub.new_key()
    for _ in range(25):
        await hub.chat_ok(key)
    await hub.client.close()  # runs the app's cleanup: drain the queue, close DuckDB
    db = duckdb.connect(str(tmp_path / "data" / "tokenhub.duckdb"), read_only=True)
    assert db.execute("SELECT count(*) FROM request_log WHERE status = 200").fetchone() == (25,)


async def test_a_cancelled_request_is_recorded_as_cancelled(ready_hub: tuple[Hub, str]) -> None:
    import asyncio

    from pipeline.context import RequestContext
    from pipeline.types import ChatRequest, Message
    from pipeline.web import PIPELINES
    from tests.fakes.openai_fake import Hang

    hub, key = ready_hub
    hub.fake.script("gpt-test", Hang(5))
    ctx = RequestContext(
        request_id="cancel-me",
        scope="chat",
        client_ip="127.0.0.1",
        request=ChatRequest(messages=[Message("user", "hi")]),
        presented_key=True,
        api_key=hub.services.identify(key),
    )
    task = asyncio.create_task(hub.client.server.app[PIPELINES].chain_for("default")(ctx))
    await hub.fake.wait_until(lambda: hub.fake.in_flight == 1)  # dispatched: the call is at the provider
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    rows = [row for row in await hub.logs() if row["request_id"] == "cancel-me"]
    assert len(rows) == 1
    assert rows[0]["status"] == 499 and rows[0]["error_class"] == "cancelled"
