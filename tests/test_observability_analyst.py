"""POST /admin/v1/analytics/query: read-only SELECTs work; everything else is a clear 400 and changes nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest

from tests.conftest import ADMIN_TOKEN, Hub

# Each must be refused (400, query_refused) whatever it would do: read or write files, reach the network,
# load extensions, read or change settings, write data, or run more than one statement. The second
# element says whether the statement does its work on a plain DuckDB with no sandbox (checked by
# test_forbidden_statements_work_without_the_sandbox, so a refusal here is the sandbox's doing, not a
# statement that would have failed anyway); False only where no offline, plain DuckDB can run it.
# {files} holds real input files; {out} is where a write would land.
FORBIDDEN: list[tuple[str, bool]] = [
    ("SELECT * FROM read_csv('{files}/data.csv')", True),
    ("SELECT * FROM read_csv_auto('{files}/data.csv')", True),
    ("SELECT * FROM READ_CSV('{files}/data.csv')", True),
    ("SELECT * FROM main.read_csv('{files}/data.csv')", True),
    ("SELECT * FROM (SELECT * FROM read_csv('{files}/data.csv')) AS t", True),
    ("WITH t AS (SELECT * FROM read_csv('{files}/data.csv')) SELECT * FROM t", True),
    ("SELECT count(*) FROM request_log WHERE model_id IN (SELECT column0 FROM read_csv('{files}/data.csv'))", True),
    ("SELECT * FROM read_parquet('{files}/x.parquet')", True),
    ("SELECT * FROM parquet_metadata('{files}/x.parquet')", True),
    ("SELECT * FROM read_json('{files}/x.json')", True),
    ("SELECT * FROM read_json_auto('{files}/x.json')", True),
    ("SELECT * FROM read_text('{files}/note.txt')", True),
    ("SELECT * FROM read_blob('{files}/note.txt')", True),
    ("SELECT * FROM glob('{files}/*')", True),
    ("SELECT * FROM sniff_csv('{files}/data.csv')", True),
    ("SELECT * FROM '{files}/data.csv'", True),  # a replacement scan: the "table" is a file
    ("SELECT * FROM '/etc/passwd'", False),  # no reader for a file without an extension: the line above is the case
    ("SELECT * FROM read_csv('https://example.com/x.csv')", False),  # needs the network and httpfs
    ("SELECT * FROM query('SELECT 1')", True),
    ("SELECT * FROM query_table('request_log')", True),
    ("SELECT * FROM checkpoint()", True),
    ("SELECT * FROM force_checkpoint()", False),  # refused inside the client's own transaction anyway
    ("SELECT * FROM json_execute_serialized_sql(json_serialize_sql('SELECT 1'))", True),
    ("SELECT * FROM arrow_scan(1, 2, 3)", False),  # a real call passes memory addresses
    ("SELECT * FROM duckdb_secrets()", True),
    ("SELECT * FROM duckdb_settings()", True),
    ("SELECT current_setting('home_directory'), current_setting('temp_directory')", True),
    ("SELECT getvariable('x')", True),
    ("SELECT nextval('seq')", True),
    ("COPY request_log TO '{out}/out.csv'", True),
    ("COPY (SELECT 1) TO '{out}/out2.csv'", True),
    ("COPY request_log FROM '{files}/data.csv'", True),
    ("EXPORT DATABASE '{out}/export'", True),
    ("IMPORT DATABASE '{files}/export'", True),
    ("ATTACH '{out}/other.duckdb' AS other", True),
    ("ATTACH ':memory:' AS scratch", True),
    ("DETACH side", True),
    ("USE memory", True),
    ("INSTALL httpfs", False),  # downloads: no network here
    ("FORCE INSTALL httpfs", False),
    ("LOAD httpfs", False),  # nothing installed to load
    ("UPDATE EXTENSIONS", True),
    ("SET threads = 4", True),
    ("SET enable_external_access = true", False),  # already on in a plain DuckDB (it can only be turned off)
    ("RESET threads", True),
    ("PRAGMA database_list", True),
    ("PRAGMA enable_profiling", True),
    ("CALL pragma_version()", True),
    ("CHECKPOINT", True),
    ("VACUUM", True),
    ("BEGIN TRANSACTION", True),
    ("EXPLAIN ANALYZE SELECT 1", True),
    ("PIVOT request_log ON model_id", True),
    ("DELETE FROM request_log", True),
    ("UPDATE request_log SET cost_usd = 0", True),
    ("INSERT INTO tsdb_points SELECT * FROM tsdb_points", True),
    ("TRUNCATE request_log", True),
    ("DROP TABLE request_log", True),
    ("ALTER TABLE request_log ADD COLUMN x INTEGER", True),
    ("CREATE TABLE x AS SELECT 1", True),
    ("CREATE VIEW v AS SELECT 1", True),
    ("CREATE MACRO m() AS 1", True),
    ("CREATE SECRET s (TYPE s3, KEY_ID 'k', SECRET 's')", False),  # the s3 type comes with httpfs
    ("SELECT 1; DELETE FROM request_log", True),
    ("SELECT 1; SELECT 2", True),
    ("-- only a comment", True),
]


def input_files(root: Path) -> Path:
    """Real files for the statements to read: a CSV, a Parquet file, JSON, text, an exported database."""
    files = root / "files"
    files.mkdir()
    conn = duckdb.connect()
    conn.execute(f"COPY (SELECT 'gpt-test' AS model_id, 2.0 AS cost_usd) TO '{files}/data.csv' (HEADER false)")
    conn.execute(f"COPY (SELECT 1 AS a) TO '{files}/x.parquet' (FORMAT parquet)")
    conn.execute("CREATE TABLE t AS SELECT 1 AS a")
    conn.execute(f"EXPORT DATABASE '{files}/export'")
    conn.close()
    (files / "x.json").write_text('{"a": 1}\n')
    (files / "note.txt").write_text("hello\n")
    return files


def test_forbidden_statements_work_without_the_sandbox(tmp_path: Path) -> None:
    files = input_files(tmp_path)
    for index, (template, works) in enumerate(FORBIDDEN):
        if not works:
            continue
        out = tmp_path / f"out-{index}"
        out.mkdir()
        conn = duckdb.connect()  # no sandbox: what the statement would do if TokenHub let it through
        try:
            if not template.startswith("IMPORT"):  # IMPORT creates the tables itself
                conn.execute("CREATE TABLE request_log AS SELECT 'gpt-test' AS model_id, 1.0 AS cost_usd")
                conn.execute("CREATE TABLE tsdb_points AS SELECT 1.0 AS value")
            conn.execute("CREATE SEQUENCE seq")
            conn.execute("ATTACH ':memory:' AS side")
            conn.execute("SET VARIABLE x = 42")
            conn.execute(template.format(files=files, out=out))
        finally:
            conn.close()


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
        await hub.chat_ok(key, headers={"X-Request-Id": f"q-{i}"})
    await hub.services.records.flush()
    return hub


async def test_every_forbidden_statement_is_refused_and_changes_nothing(busy_hub: Hub, tmp_path: Path) -> None:
    hub = busy_hub
    files = input_files(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    before = await fingerprint(hub)
    files_before = outside_data_dir(tmp_path)
    for template, _works in FORBIDDEN:
        sql = template.format(files=files, out=out)
        status, body = await query(hub, sql)
        assert status == 400, (sql, body)
        error = body["error"]
        assert error["type"] == "query_refused", (sql, error)  # refused, not merely failed
        assert error["message"] and error["request_id"], (sql, error)
        assert "hello" not in error["message"] and "gpt-test,2.0" not in error["message"]  # no file content
    for blank in ("", "   "):
        status, body = await query(hub, blank)
        assert status == 400 and body["error"]["type"] == "invalid_request" and body["error"]["field"] == "sql"
    assert await fingerprint(hub) == before
    assert outside_data_dir(tmp_path) == files_before  # nothing written by any statement
    assert list(out.iterdir()) == []
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
        status, body = await query(busy_hub, bad)
        assert status == 400 and (body["error"]["type"], body["error"]["field"]) == ("invalid_request", "sql")
    status, body = await query(busy_hub, "SELECT 1", max_rows=0)
    assert status == 400 and (body["error"]["type"], body["error"]["field"]) == ("invalid_request", "max_rows")


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
    status, body = await query(busy_hub, "FROM request_log SELECT client_request_id ORDER BY client_request_id;")
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
    # 1 s: the quick queries finish within it on a loaded machine; the count below takes minutes
    hub = await make_hub(analytics_query_timeout_secs=1, analytics_query_max_rows=50)
    status, body = await query(hub, "SELECT * FROM range(1000)")
    assert status == 200 and body["row_count"] == 50 and body["truncated"] is True
    status, body = await query(hub, "SELECT * FROM range(1000)", max_rows=7)
    assert body["row_count"] == 7 and body["rows"][-1] == [6]
    status, body = await query(hub, "SELECT * FROM range(1000)", max_rows=10_000)  # capped by the setting
    assert body["row_count"] == 50
    status, body = await query(hub, "SELECT count(*) FROM range(100000000000) a")
    assert status == 400 and body["error"]["type"] == "query_timeout", body
    assert "the 1 s limit" in body["error"]["message"]
    status, body = await query(hub, "SELECT 42 AS answer")  # the reader is usable again afterwards
    assert body["rows"] == [[42]]


async def test_results_are_capped_in_bytes_too(make_hub: Callable[..., Any]) -> None:
    hub = await make_hub(analytics_query_max_bytes=1024)
    status, body = await query(hub, "SELECT repeat('x', 100) AS s FROM range(100)")
    assert status == 200 and body["truncated"] is True and body["truncated_by"] == "bytes"
    assert 0 < body["row_count"] == len(body["rows"]) < 100
    assert len(json.dumps(body["rows"])) <= 1024 and body["rows"][0] == ["x" * 100]
    status, body = await query(hub, "SELECT 1 AS one FROM range(5)")
    assert (body["row_count"], body["truncated"], body["truncated_by"]) == (5, False, None)
    status, body = await query(hub, "SELECT 1 AS one FROM range(5)", max_rows=2)
    assert (body["row_count"], body["truncated"], body["truncated_by"]) == (2, True, "rows")


async def test_duckdb_memory_and_spill_limits_apply_to_analyst_queries(make_hub: Callable[..., Any]) -> None:
    hub = await make_hub(analytics_memory_limit_mib=64, analytics_temp_limit_mib=0)
    limits = await hub.services.analytics.read(
        lambda db: db.execute(
            "SELECT current_setting('memory_limit'), current_setting('max_temp_directory_size')"
        ).fetchall()
    )
    assert limits == [("64.0 MiB", "0 bytes")]
    status, body = await query(
        hub, "SELECT count(*) FROM (SELECT md5(range::VARCHAR) AS m FROM range(5000000) ORDER BY m)"
    )
    assert status == 400 and body["error"]["type"] == "query_failed", body
    assert body["error"]["message"].startswith("the query needs more memory than the analytics limit allows")
    status, body = await query(hub, "SELECT 42 AS answer")  # the reader is usable again afterwards
    assert body["rows"] == [[42]]


async def test_settings_and_paths_are_not_readable(busy_hub: Hub) -> None:
    status, body = await query(busy_hub, "SELECT current_setting('temp_directory') AS t")
    assert status == 400 and body["error"]["type"] == "query_refused"
    assert body["error"]["message"] == "function(s) not allowed: current_setting" and "/" not in str(body)
    status, body = await query(busy_hub, "SELECT * FROM 'data/tokenhub.sqlite'")
    assert status == 400 and body["error"]["type"] == "query_refused"
    assert "look like files" in body["error"]["message"]
