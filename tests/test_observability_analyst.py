"""POST /admin/v1/analytics/query: read-only SELECTs work; everything else is a clear 400 and changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN_TOKEN, Hub

# Each must be refused (400) whatever it would do: read or write files, reach the network, load
# extensions, change settings, write data, or run more than one statement.
FORBIDDEN = [
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_csv_auto('/etc/passwd')",
    "SELECT * FROM READ_CSV('/etc/passwd')",
    "SELECT * FROM main.read_csv('/etc/passwd')",
    "SELECT * FROM (SELECT * FROM read_csv('/etc/passwd')) AS t",
    "WITH t AS (SELECT * FROM read_csv('/etc/passwd')) SELECT * FROM t",
    "SELECT count(*) FROM request_log WHERE model_id IN (SELECT column0 FROM read_csv('/etc/passwd'))",
    "SELECT * FROM read_parquet('/tmp/x.parquet')",
    "SELECT * FROM parquet_metadata('/tmp/x.parquet')",
    "SELECT * FROM read_json('/etc/x.json')",
    "SELECT * FROM read_json_auto('/etc/x.json')",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM read_blob('/etc/hostname')",
    "SELECT * FROM glob('/*')",
    "SELECT * FROM sniff_csv('/etc/passwd')",
    "SELECT * FROM read_csv('https://example.com/x.csv')",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM 'data/tokenhub.sqlite'",
    "SELECT * FROM query('SELECT 1')",
    "SELECT * FROM query_table('request_log')",
    "SELECT * FROM checkpoint()",
    "SELECT * FROM force_checkpoint()",
    "SELECT * FROM json_execute_serialized_sql('{}')",
    "SELECT * FROM arrow_scan(1, 2, 3)",
    "SELECT * FROM duckdb_secrets()",
    "SELECT nextval('seq')",
    "COPY request_log TO '{tmp}/out.csv'",
    "COPY (SELECT 1) TO '{tmp}/out2.csv'",
    "COPY request_log FROM '/etc/passwd'",
    "EXPORT DATABASE '{tmp}/export'",
    "IMPORT DATABASE '{tmp}/export'",
    "ATTACH '{tmp}/other.duckdb' AS other",
    "ATTACH ':memory:' AS scratch",
    "DETACH other",
    "USE memory",
    "INSTALL httpfs",
    "FORCE INSTALL httpfs",
    "LOAD httpfs",
    "UPDATE EXTENSIONS",
    "SET threads = 4",
    "SET enable_external_access = true",
    "RESET threads",
    "PRAGMA database_list",
    "PRAGMA enable_profiling",
    "CALL pragma_version()",
    "CHECKPOINT",
    "VACUUM",
    "BEGIN TRANSACTION",
    "EXPLAIN ANALYZE SELECT 1",
    "PIVOT request_log ON model_id",
    "DELETE FROM request_log",
    "UPDATE request_log SET cost_usd = 0",
    "INSERT INTO tsdb_points SELECT * FROM tsdb_points",
    "TRUNCATE request_log",
    "DROP TABLE request_log",
    "ALTER TABLE request_log ADD COLUMN x INTEGER",
    "CREATE TABLE x AS SELECT 1",
    "CREATE VIEW v AS SELECT 1",
    "CREATE MACRO m() AS 1",
    "CREATE SECRET s (TYPE s3, KEY_ID 'k', SECRET 's')",
    "SELECT 1; DELETE FROM request_log",
    "SELECT 1; SELECT 2",
    "",
    "   ",
    "-- only a comment",
]


async def query(hub: Hub, sql: Any, **extra: Any) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    resp = await hub.client.post("/admin/v1/analytics/query", json={"sql": sql, **extra}, headers=headers)
    return resp.status, await resp.json()


async def fingerprint(hub: Hub) -> tuple[Any, ...]:
    analytics = hub.services.analytics
    return await analytics.read(
        lambda db: (
            db.execute("SELECT count(*), sum(cost_usd), max(request_id) FROM request_log").fetchall(),
            db.execute("SELECT count(*), sum(value) FROM tsdb_points").fetchall(),
            db.execute("SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall(),
            db.execute("SELECT current_setting('threads'), current_setting('enable_external_access')").fetchall(),
        )
    )


def outside_data_dir(root: Path) -> list[str]:
    """Files under ``root`` except the hub's own data directory, where DuckDB and SQLite may create and
    remove their WAL files at any time."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.relative_to(root).parts[0] != "data")


@pytest.fixture
async def busy_hub(ready_hub: tuple[Hub, str]) -> Hub:
    hub, key = ready_hub
    for i in range(3):
        assert (await hub.chat(key, headers={"X-Request-Id": f"q-{i}"}))[0] == 200
    await hub.services.records.flush()
    return hub


async def test_every_forbidden_statement_is_refused_and_changes_nothing(busy_hub: Hub, tmp_path: Path) -> None:
    hub = busy_hub
    before = await fingerprint(hub)
    files_before = outside_data_dir(tmp_path)
    for template in FORBIDDEN:
        sql = template.replace("{tmp}", str(tmp_path))
        status, body = await query(hub, sql)
        assert status == 400, (sql, body)
        error = body["error"]
        assert error["type"] in ("query_refused", "query_failed", "invalid_request"), (sql, error)
        assert error["message"] and error["request_id"], (sql, error)
    assert await fingerprint(hub) == before
    assert outside_data_dir(tmp_path) == files_before  # nothing written by any statement
    for target in ("out.csv", "out2.csv", "export", "other.duckdb"):
        assert not (tmp_path / target).exists()
    assert before[0][0][0] == 3


async def test_refusals_say_why(busy_hub: Hub) -> None:
    status, body = await query(busy_hub, "SELECT * FROM read_csv('/etc/passwd')")
    assert status == 400 and body["error"]["type"] == "query_refused"
    assert "read_csv" in body["error"]["message"] and "root:" not in str(body)
    status, body = await query(busy_hub, "COPY request_log TO '/tmp/x.csv'")
    assert body["error"]["type"] == "query_refused" and "COPY" in body["error"]["message"]
    status, body = await query(busy_hub, "SELECT 1; SELECT 2")
    assert "exactly one statement" in body["error"]["message"]
    status, body = await query(busy_hub, "SELEC 1")
    assert body["error"]["type"] == "query_failed" and "syntax error" in body["error"]["message"]
    status, body = await query(busy_hub, "SELECT nope FROM request_log")
    assert status == 400 and body["error"]["type"] == "query_failed"
    for bad in (None, 42, ["SELECT 1"]):
        assert (await query(busy_hub, bad))[0] == 400
    assert (await query(busy_hub, "SELECT 1", max_rows=0))[0] == 400


async def test_selects_over_the_request_log_and_time_series(busy_hub: Hub) -> None:
    status, body = await query(
        busy_hub,
        "WITH ok AS (SELECT * FROM request_log WHERE status = 200) "
        "SELECT model_id, count(*) AS n, sum(input_tokens) AS tokens_in FROM ok GROUP BY ALL",
    )
    assert status == 200, body
    assert body["columns"] == [
        {"name": "model_id", "type": "VARCHAR"},
        {"name": "n", "type": "BIGINT"},
        {"name": "tokens_in", "type": "HUGEINT"},
    ]
    assert body["rows"] == [["gpt-test", 3, 30]] and body["truncated"] is False and body["row_count"] == 1
    status, body = await query(busy_hub, "SELECT sum(samples) FROM tsdb_points WHERE metric = 'requests'")
    assert body["rows"] == [[3]]
    status, body = await query(busy_hub, "FROM request_log SELECT request_id ORDER BY request_id;")
    assert [row[0] for row in body["rows"]] == ["q-0", "q-1", "q-2"]
    status, body = await query(
        busy_hub,
        "SELECT timestamp, 1.5::DECIMAL(4, 2) AS d, INTERVAL 90 SECOND AS i, 'ab'::BLOB AS b, 'nan'::DOUBLE"
        " AS n FROM request_log LIMIT 1",
    )
    assert status == 200, body
    row = body["rows"][0]
    assert row[0].endswith("+00:00") and row[1:] == [1.5, 90.0, "6162", None]
    status, body = await query(busy_hub, "DESCRIBE request_log")
    assert status == 200 and "reward" in [row[0] for row in body["rows"]]


async def test_row_cap_and_time_limit(make_hub: Callable[..., Any]) -> None:
    hub = await make_hub(analytics_query_timeout_secs=0.2, analytics_query_max_rows=50)
    status, body = await query(hub, "SELECT * FROM range(1000)")
    assert status == 200 and body["row_count"] == 50 and body["truncated"] is True
    status, body = await query(hub, "SELECT * FROM range(1000)", max_rows=7)
    assert body["row_count"] == 7 and body["rows"][-1] == [6]
    status, body = await query(hub, "SELECT * FROM range(1000)", max_rows=10_000)  # capped by the setting
    assert body["row_count"] == 50
    status, body = await query(hub, "SELECT count(*) FROM range(100000000000) a")
    assert status == 400 and body["error"]["type"] == "query_timeout", body
    assert "0.2 s" in body["error"]["message"]
    status, body = await query(hub, "SELECT 42 AS answer")  # the reader is usable again afterwards
    assert body["rows"] == [[42]]
