"""Observability through the real server: request log and time series after a burst and after a graceful
stop, Prometheus text, stats, trends, the tsdb endpoints and retention."""

from __future__ import annotations

import asyncio
import io
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import structlog
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.logging import QueuedStream, configure_logging
from pipeline.metrics import Metrics
from store.tsdb import Point, write_points
from tests.conftest import ADMIN_TOKEN, Hub
from tests.fakes.openai_fake import Fail

BURST = 120


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text page, keyed by name and labels (parsed by prometheus_client)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, frozenset(s.labels.items())] = s.value
    return out


def value(parsed: dict[Any, float], name: str, **labels: str) -> float:
    return parsed.get((name, frozenset(labels.items())), 0.0)


async def burst(hub: Hub, key: str, n: int) -> list[int]:
    results = await asyncio.gather(*(hub.chat(key, headers={"X-Request-Id": f"burst-{i}"}) for i in range(n)))
    return [status for status, _, _ in results]


async def test_a_burst_is_fully_recorded_in_the_log_and_the_time_series(ready_hub: tuple[Hub, str]) -> None:
    hub, key = ready_hub
    assert await burst(hub, key, BURST) == [200] * BURST
    page = await hub.admin("GET", "/logs?limit=10&model=gpt-test", expect=200)
    assert page["total"] == BURST and len(page["logs"]) == 10
    ids = Counter(row["client_request_id"] for row in (await hub.admin("GET", "/logs?limit=1000"))["logs"])
    assert all(ids[f"burst-{i}"] == 1 for i in range(BURST))
    requests = await hub.admin("GET", "/tsdb/query?metric=requests&agg=sum&step=86400000", expect=200)
    assert sum(p["v"] for s in requests["series"] for p in s["points"]) == BURST
    metrics = await hub.admin("GET", "/tsdb/metrics", expect=200)
    assert {"cost", "latency", "requests", "tokens"} <= set(metrics["metrics"])


async def test_nothing_accepted_is_lost_on_a_graceful_stop(make_hub: Callable[..., Any], tmp_path: Path) -> None:
    hub = await make_hub()
    await hub.add_provider()
    await hub.add_model("gpt-test")
    key = await hub.new_key()
    assert await burst(hub, key, BURST) == [200] * BURST
    await hub.chat(None)  # a failure is recorded too
    await hub.client.close()  # graceful stop: drains the record queue into DuckDB, then closes it
    db = duckdb.connect(str(tmp_path / "data" / "tokenhub.duckdb"), read_only=True)
    try:
        assert db.execute("SELECT count(*) FROM request_log").fetchall() == [(BURST + 1,)]
        points = db.execute("SELECT metric, sum(samples) FROM tsdb_points GROUP BY 1").fetchall()
        assert dict(points)["requests"] == BURST + 1 and dict(points)["errors"] == 1
    finally:
        db.close()


async def test_metrics_text_parses_and_counts_match(ready_hub: tuple[Hub, str]) -> None:
    hub, key = ready_hub
    for _ in range(3):
        await hub.chat_ok(key, policy={"mode": "cheap"})
    await hub.chat(None)
    await hub.chat(None)
    hub.fake.script("gpt-test", Fail(400))  # a fatal provider error: not retried, the request fails
    failed_status = (await hub.chat(key, policy={"mode": "cheap"}))[0]
    assert failed_status >= 400
    text = await (await hub.client.get("/metrics")).text()
    parsed = samples(text)
    ok = {"mode": "cheap", "model": "gpt-test", "provider": "fake"}
    assert value(parsed, "tokenhub_requests_total", **ok, status="ok") == 3
    assert value(parsed, "tokenhub_requests_total", mode="cheap", model="", provider="", status="error") == 1
    assert (
        value(
            parsed, "tokenhub_request_errors_total", mode="cheap", model="", provider="", http_status=str(failed_status)
        )
        == 1
    )
    assert value(parsed, "tokenhub_provider_attempts_total", provider="fake", outcome="fatal") == 1
    assert value(parsed, "tokenhub_requests_total", mode="", model="", provider="", status="error") == 2
    assert value(parsed, "tokenhub_request_errors_total", mode="", model="", provider="", http_status="401") == 2
    assert value(parsed, "tokenhub_request_latency_ms_count", mode="cheap", model="gpt-test", provider="fake") == 3
    assert value(parsed, "tokenhub_tokens_total", model="gpt-test", provider="fake", direction="input") == 30
    assert value(parsed, "tokenhub_tokens_total", model="gpt-test", provider="fake", direction="output") == 15
    assert value(parsed, "tokenhub_cost_usd_total", model="gpt-test", provider="fake") > 0
    assert value(parsed, "tokenhub_provider_attempts_total", provider="fake", outcome="ok") == 3
    # Overhead is observed for served requests whose provider time is fully known: the three successes.
    assert value(parsed, "tokenhub_overhead_ms_count") == 3
    assert (
        0
        < value(parsed, "tokenhub_overhead_ms_sum")
        < value(parsed, "tokenhub_request_latency_ms_sum", mode="cheap", model="gpt-test", provider="fake")
    )
    assert value(parsed, "tokenhub_provider_health_state", provider="fake") == 2
    assert ("tokenhub_record_queue_depth", frozenset()) in parsed
    assert ("tokenhub_log_dropped_total", frozenset()) in parsed
    assert value(parsed, "tokenhub_analytics_reopens_total") == 0
    assert value(parsed, "tokenhub_store_dropped_total", op="log_request") == 0
    assert value(parsed, "tokenhub_event_subscribers") == 0
    assert value(parsed, "tokenhub_asyncio_tasks") >= 1  # at least the handler that is scraping
    labels = {label for (_, ls) in parsed for label, _ in ls}
    assert "request_id" not in labels and "api_key_id" not in labels
    assert key not in text and "sk-test-secret" not in text and ADMIN_TOKEN not in text


async def test_dropped_records_show_up_in_the_metric(make_hub: Callable[..., Any]) -> None:
    hub = await make_hub(record_queue_size=1)
    await hub.services.records.stop()  # no writer: the one-slot queue stays full
    for _ in range(4):
        await hub.chat(None)
    parsed = samples(await (await hub.client.get("/metrics")).text())
    assert value(parsed, "tokenhub_store_dropped_total", op="log_request") == 3
    assert value(parsed, "tokenhub_record_queue_depth") == 1


async def test_logs_filter_and_paginate_over_http(ready_hub: tuple[Hub, str]) -> None:
    hub, key = ready_hub
    for i in range(5):
        await hub.chat(key, headers={"X-Request-Id": f"ok-{i}"})
    await hub.chat(None, headers={"X-Request-Id": "anon"})
    errors = await hub.admin("GET", "/logs?outcome=error", expect=200)
    assert [row["client_request_id"] for row in errors["logs"]] == ["anon"] and errors["total"] == 1
    assert errors["logs"][0]["status"] == 401 and errors["logs"][0]["model_id"] == ""
    one = await hub.admin("GET", "/logs?client_request_id=ok-3", expect=200)
    assert [row["client_request_id"] for row in one["logs"]] == ["ok-3"]
    by_ours = await hub.admin("GET", f"/logs?request_id={one['logs'][0]['request_id']}", expect=200)
    assert [row["client_request_id"] for row in by_ours["logs"]] == ["ok-3"]
    page = await hub.admin("GET", "/logs?limit=2&offset=1&status=200", expect=200)
    assert page["total"] == 5 and [row["client_request_id"] for row in page["logs"]] == ["ok-3", "ok-2"]
    assert (await hub.admin("GET", "/logs?model=", expect=200))["total"] == 1  # never reached a model
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert (await hub.admin("GET", f"/logs?start={later.replace('+00:00', 'Z')}", expect=200))["total"] == 0
    bad = await hub.admin("GET", "/logs?start=yesterday", expect=400)
    assert bad["error"]["field"] == "start"
    assert (await hub.admin("GET", "/logs?limit=0", expect=400))["error"]["field"] == "limit"
    assert (await hub.admin("GET", "/logs?outcome=maybe", expect=400))["error"]["field"] == "outcome"


async def test_stats_and_trends_over_http(ready_hub: tuple[Hub, str]) -> None:
    hub, key = ready_hub
    for _ in range(4):
        await hub.chat(key)
    await hub.chat(None)
    stats = await hub.admin("GET", "/stats", expect=200)
    minute = stats["global"][0]
    assert minute["window"] == "1m" and minute["request_count"] == 5 and minute["error_count"] == 1
    assert minute["error_rate"] == 0.2 and minute["p95_latency_ms"] >= minute["p50_latency_ms"] > 0
    (model,) = [m for m in stats["by_model"]["1m"] if m["model_id"] == "gpt-test"]
    assert model["request_count"] == 4 and model["total_cost_usd"] > 0
    assert [k["api_key_name"] for k in stats["by_api_key"]["1m"] if k["api_key_id"]] == ["test"]
    trends = await hub.admin("GET", "/analytics/trends?bucket=hour", expect=200)
    assert sum(row["requests"] for row in trends["error_rate"]) == 5
    assert [row["model_id"] for row in trends["cost_per_model"]] == ["gpt-test"]
    assert trends["latency_per_provider"][0]["provider_id"] == "fake"
    assert sum(row["input_tokens"] for row in trends["tokens_per_tenant"]) == 40
    three_days_ago_ms = int((datetime.now(UTC) - timedelta(days=3)).timestamp() * 1000)
    day = await hub.admin("GET", f"/analytics/trends?bucket=day&start={three_days_ago_ms}", expect=200)
    assert sum(row["requests"] for row in day["error_rate"]) == 5
    too_long = await hub.admin("GET", "/analytics/trends?bucket=hour&start=0", expect=400)
    assert "narrow" in too_long["error"]["message"]
    await hub.admin("GET", "/analytics/trends?bucket=week", expect=400)


async def test_tsdb_query_validation_and_retention_endpoints(hub: Hub) -> None:
    missing = await hub.admin("GET", "/tsdb/query", expect=400)
    assert missing["error"]["message"] == "metric parameter required"
    await hub.admin("GET", "/tsdb/query?metric=latency&step=0", expect=400)
    await hub.admin("GET", "/tsdb/query?metric=latency&agg=median", expect=400)
    await hub.admin("GET", "/tsdb/query?metric=latency&start=2&end=1", expect=400)
    assert await hub.admin("GET", "/tsdb/query?metric=latency", expect=200) == {
        "series": [],
        "step_ms": None,
        "aggregate": "avg",
        "truncated": False,
    }

    assert (await hub.admin("GET", "/tsdb/retention", expect=200))["retention_days"] == 7  # the spec's default
    for bad in ({"days": 0}, {"days": -3}, {"days": 800_000}, {"days": 3651}):
        error = (await hub.admin("PUT", "/tsdb/retention", bad, expect=400))["error"]
        assert (error["message"], error["field"]) == ("days must be between 1 and 3650", "days")
    for bad in ({"days": "3"}, {"days": 2.5}, {}, [1]):
        error = (await hub.admin("PUT", "/tsdb/retention", bad, expect=400))["error"]
        assert error["message"] == 'body must be {"days": <integer 1..3650>}'
    assert (await hub.admin("GET", "/tsdb/retention", expect=200))["retention_days"] == 7  # nothing changed
    assert await hub.admin("PUT", "/tsdb/retention", {"days": 3650}, expect=200) == {
        "ok": True,
        "retention_days": 3650,
    }
    assert (await hub.admin("POST", "/tsdb/prune", expect=200))["retention_days"] == 3650  # the prune still works
    assert await hub.admin("PUT", "/tsdb/retention", {"days": 2}, expect=200) == {"ok": True, "retention_days": 2}

    analytics = hub.services.analytics
    now = datetime.now(UTC)
    await analytics.call(
        write_points,
        analytics.db,
        [Point(now - timedelta(days=days), "probe", float(v), "m", "p") for v, days in ((1, 3), (2, 1))],
    )
    assert (await hub.admin("POST", "/tsdb/prune", expect=200))["deleted"] == 1
    left = await hub.admin("GET", "/tsdb/query?metric=probe&model=m&provider=p", expect=200)
    assert [p["v"] for p in left["series"][0]["points"]] == [2.0]
    assert (await hub.admin("POST", "/tsdb/prune", expect=200))["deleted"] == 0


async def test_observability_endpoints_need_the_admin_token(hub: Hub) -> None:
    for method, path in [
        ("GET", "/logs"),
        ("GET", "/stats"),
        ("GET", "/tsdb/query?metric=latency"),
        ("GET", "/tsdb/metrics"),
        ("PUT", "/tsdb/retention"),
        ("POST", "/tsdb/prune"),
        ("POST", "/analytics/query"),
        ("GET", "/analytics/trends"),
        ("GET", "/events"),
    ]:
        resp = await hub.client.request(method, f"/admin/v1{path}")
        assert resp.status == 401, path


async def test_request_ids_are_ours_and_client_ids_validated_echoed_and_recorded(ready_hub: tuple[Hub, str]) -> None:
    hub, key = ready_hub
    _, _, kept = await hub.chat(key, headers={"X-Request-Id": "client-42:a/b@c"})
    ours = kept.headers["X-Request-Id"]
    assert ours.startswith("th-") and kept.headers["X-Client-Request-Id"] == "client-42:a/b@c"
    for bad in ("has spaces", "x" * 129, "semi;colon", 'quote"d'):
        _, body, resp = await hub.chat(key, headers={"X-Request-Id": bad})
        generated = resp.headers["X-Request-Id"]
        assert generated != bad and generated.startswith("th-") and "X-Client-Request-Id" not in resp.headers
        (row,) = (await hub.admin("GET", f"/logs?request_id={generated}"))["logs"]
        assert row["client_request_id"] == ""
    _, body, resp = await hub.chat(None, headers={"X-Request-Id": "bad id"})  # errors carry it as well
    assert body["error"]["request_id"] == resp.headers["X-Request-Id"] != "bad id"
    (row,) = (await hub.admin("GET", "/logs?client_request_id=client-42:a/b@c"))["logs"]
    assert row["request_id"] == ours


def test_the_log_overflow_counter_reads_the_installed_log_stream() -> None:
    stream = QueuedStream(io.BytesIO(), interval=60, max_pending=1)
    structlog.configure(logger_factory=lambda *_: stream)
    try:
        for line in (b"a", b"b", b"c"):
            stream.msg(line)
        metrics = Metrics()
        metrics.watch(health_states=dict, record_queue_depth=lambda: 0, event_subscribers=lambda: 0)
        assert value(samples(generate_latest(metrics.registry).decode()), "tokenhub_log_dropped_total") == 2
    finally:
        stream.close()
        configure_logging("error")  # leave the suite quiet
