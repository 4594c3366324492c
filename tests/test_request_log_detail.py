"""The request log's keyset paging (`cursor`), text search (`q`) and one request's detail (GET /logs/{id}),
over HTTP; and the page query's plan on a million rows."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from store.analytics import REQUEST_LOG_COLUMNS, AnalyticsStore
from store.request_queries import LogCursor, LogFilter, query_logs
from tests.conftest import Hub
from tests.fakes.openai_fake import Fail


async def _two_models(hub: Hub) -> str:
    await hub.add_provider()
    await hub.add_model("primary", weight=5, input_per_1k=0.0001, output_per_1k=0.0001, max_context_tokens=8000)
    await hub.add_model("backup", weight=5, input_per_1k=0.001, output_per_1k=0.001, max_context_tokens=8000)
    return await hub.new_key()


async def test_cursor_pages_walk_the_log_newest_first_without_overlap(hub: Hub) -> None:
    key = await _two_models(hub)
    for i in range(7):
        assert (await hub.chat(key, f"hello {i}", headers={"X-Request-Id": f"walk-{i}"}))[0] == 200
    everything = (await hub.admin("GET", "/logs?limit=1000"))["logs"]
    seen, cursor = [], None
    while True:
        page = await hub.admin("GET", f"/logs?limit=3{f'&cursor={cursor}' if cursor else ''}", expect=200)
        assert page["total"] == 7  # the count is of every match, not of what is left after the cursor
        seen += [row["request_id"] for row in page["logs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [row["request_id"] for row in everything] and len(set(seen)) == 7
    # a cursor combines with the filters
    first = await hub.admin("GET", "/logs?limit=1&model=primary")
    rest = await hub.admin("GET", f"/logs?limit=100&model=primary&cursor={first['next_cursor']}")
    assert {r["model_id"] for r in rest["logs"]} == {"primary"} and len(rest["logs"]) == 6
    assert rest["next_cursor"] is None


async def test_a_forged_cursor_is_a_400_naming_it(hub: Hub) -> None:
    for bad in ("not-a-cursor", "%%%", "MTIz"):  # the last is base64 of "123": no request id
        error = (await hub.admin("GET", f"/logs?cursor={bad}", expect=400))["error"]
        assert error["field"] == "cursor" and "next_cursor" in error["message"]


async def test_text_search_matches_ids_and_error_messages(hub: Hub) -> None:
    key = await _two_models(hub)
    await hub.chat(key, headers={"X-Request-Id": "needle-abc"})
    await hub.chat(key, headers={"X-Request-Id": "hay-1"})
    assert (await hub.chat(key, []))[0] == 400  # refused: "messages must be a non-empty list"
    found = await hub.admin("GET", "/logs?q=needle")
    assert [r["client_request_id"] for r in found["logs"]] == ["needle-abc"] and found["total"] == 1
    own_id = found["logs"][0]["request_id"]
    assert [r["request_id"] for r in (await hub.admin("GET", f"/logs?q={own_id[3:20]}"))["logs"]] == [own_id]
    errors = (await hub.admin("GET", "/logs?q=NON-EMPTY"))["logs"]
    assert len(errors) == 1 and errors[0]["status"] >= 400
    assert (await hub.admin("GET", "/logs?q=nothing-like-this"))["total"] == 0
    for wildcard in ("%25", "_"):  # LIKE's wildcards are plain characters here
        assert (await hub.admin("GET", f"/logs?q={wildcard}"))["total"] == 0
    assert (await hub.admin("GET", "/logs?q=" + "x" * 300, expect=400))["error"]["field"] == "q"


async def test_one_request_shows_its_attempts_and_routing_reason(hub: Hub) -> None:
    key = await _two_models(hub)
    hub.fake.script("primary", Fail(500), Fail(500), Fail(500))  # the try and both retries: fail over
    status, body, resp = await hub.chat(key, policy={"mode": "cheap"})
    assert status == 200 and body["negotiated_model"] == "backup"
    request_id = resp.headers["X-Request-Id"]
    detail = await hub.admin("GET", f"/logs/{request_id}", expect=200)
    assert detail["request"]["request_id"] == request_id and detail["request"]["model_id"] == "backup"
    assert "primary failed (transient)" in detail["request"]["routing_reason"]
    assert detail["attempts"] == [
        {"model_id": "primary", "outcome": "transient", "provider_id": "fake"},
        {"model_id": "backup", "outcome": "ok", "provider_id": "fake"},
    ]
    assert detail["steps"] == []


async def test_a_plan_request_lists_its_steps(hub: Hub) -> None:
    key = await _two_models(hub)
    body = {
        "request": {"messages": [{"role": "user", "content": "Build a shed"}]},
        "orchestration": {"mode": "adversarial", "iterations": 1, "review_model_id": "backup"},
    }
    resp = await hub.client.post("/v1/plan", json=body, headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 200, await resp.text()
    plan_id = resp.headers["X-Request-Id"]
    detail = await hub.admin("GET", f"/logs/{plan_id}", expect=200)
    assert detail["request"]["endpoint"] == "plan"
    steps = detail["steps"]
    assert len(steps) == 3 and {s["parent_request_id"] for s in steps} == {plan_id}
    assert {s["endpoint"] for s in steps} == {"plan_step"}
    step_detail = await hub.admin("GET", f"/logs/{steps[0]['request_id']}", expect=200)
    assert step_detail["request"]["parent_request_id"] == plan_id and step_detail["steps"] == []


async def test_feedback_shows_on_the_request(hub: Hub) -> None:
    key = await _two_models(hub)
    _, _, resp = await hub.chat(key)
    request_id = resp.headers["X-Request-Id"]
    await hub.services.records.flush()
    fb = await hub.client.post(
        "/v1/feedback",
        json={"request_id": request_id, "score": 0.9, "comment": "spot on"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert fb.status in (200, 202), await fb.text()
    row = (await hub.admin("GET", f"/logs/{request_id}", expect=200))["request"]
    assert row["feedback_score"] == pytest.approx(0.9) and row["feedback_comment"] == "spot on"


async def test_an_unknown_request_is_a_404(hub: Hub) -> None:
    for unknown in ("th-000000000000-000000000000000000000000", "someone-elses-id"):
        error = (await hub.admin("GET", f"/logs/{unknown}", expect=404))["error"]
        assert unknown in error["message"] and error["request_id"]
    error = (await hub.admin("GET", "/logs/%20bad", expect=400))["error"]  # path ids are checked
    assert "path parameter" in error["message"]


def test_a_deep_page_of_a_million_rows_uses_the_cursor_filter_in_the_scan() -> None:
    """No timing here (a loaded machine would make it flaky): the plan shows the page is a Top-N over a scan
    whose own filter is the cursor's timestamp bound, so DuckDB skips every newer row group; see
    docs/admin-ui for the measured times."""
    store = AnalyticsStore(":memory:")
    store.open()
    try:
        store.db.execute(
            "INSERT INTO request_log (timestamp, request_id, tenant_id, api_key_id, endpoint, mode, model_id,"
            " provider_id, status, error_class, error_message, input_tokens, output_tokens, cost_usd, latency_ms,"
            " escalations, routing_reason)"
            " SELECT TIMESTAMPTZ '2026-01-01 00:00:00+00' + to_milliseconds(i * 100),"
            " 'th-' || lpad(i::VARCHAR, 8, '0'),"
            " 'default', 'k', 'chat', 'normal', 'm' || (i % 5), 'p', 200, '', '', 10, 5, 0.001, 100.0, 0, 'r'"
            " FROM range(1000000) t(i)"
        )
        db = store.new_cursor()
        where = LogFilter(model_id="m1")
        first = query_logs(db, where, 100, 0)
        assert first["total"] == 200_000 and first["logs"][0]["request_id"] == "th-00999996"
        deep = LogCursor.decode(first["next_cursor"])
        assert deep is not None and deep.request_id == first["logs"][-1]["request_id"]
        # jump deep: the cursor of row 72,001 (928,000 places down, where walking the pages would get)
        deep = LogCursor(datetime(2026, 1, 1, 2, 0, 0, 100_000, tzinfo=UTC), "th-00072001")
        page = query_logs(db, where, 100, 0, deep)
        assert [r["request_id"] for r in page["logs"][:2]] == ["th-00071996", "th-00071991"]
        assert len(page["logs"]) == 100 and page["next_cursor"]

        sql_where, params = where.where()
        plan = db.execute(
            f"EXPLAIN SELECT {', '.join(REQUEST_LOG_COLUMNS)} FROM request_log{sql_where}"
            " AND timestamp <= ? AND (timestamp < ? OR request_id > ?)"
            " ORDER BY timestamp DESC, request_id LIMIT 100",
            [*params, deep.timestamp, deep.timestamp, deep.request_id],
        ).fetchall()[0][1]
        assert "Top N" in plan and "ORDER_BY" not in plan.replace(" ", "_").upper().split("TOP")[0]
        scan = plan[plan.index("Seq Scan") :]
        assert "timestamp <=" in scan  # the cursor bound is a scan filter (zone maps skip row groups)
    finally:
        store.close()
