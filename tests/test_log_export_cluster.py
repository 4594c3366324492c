"""Cluster-wide analytics end to end: two replicas (two servers, separate DuckDB files, one export directory)
serve requests, and the admin analytics of either show both replicas' rows exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from store.segments import list_segments
from tests.conftest import Hub

WAIT_SECS = 30.0  # bound on a loaded machine; the export job runs every second with 1 s segments


async def start_replica(make_hub: Callable[..., Any], tmp_path: Path, name: str, **extra: Any) -> tuple[Hub, str]:
    hub = await make_hub(
        data_dir=str(tmp_path / name),
        log_export_dir=str(tmp_path / "export"),
        log_export_segment_secs=1,
        log_export_replica_id=name,
        **extra,
    )
    await hub.add_provider()
    await hub.add_model("gpt-test", weight=5, input_per_1k=0.001, output_per_1k=0.002, max_context_tokens=8000)
    return hub, await hub.new_key()


async def serve(hub: Hub, key: str, *names: str) -> None:
    for name in names:
        assert (await hub.chat(key, headers={"X-Request-Id": name}))[0] == 200


async def logged(hub: Hub) -> Counter[str]:
    return Counter(row["client_request_id"] for row in await hub.logs())


async def until_counted(hub: Hub, path: str, expected: int) -> None:
    """Wait (bounded) until a time-series count through ``hub`` is ``expected``; more fails at once. Samples are
    written apart from their request rows, so a's newest sample may reach a segment a window after its row."""
    deadline = asyncio.get_running_loop().time() + WAIT_SECS
    while True:
        series = await hub.admin("GET", path, expect=200)
        count = sum(p["v"] for s in series["series"] for p in s["points"])
        assert count <= expected, f"a sample read twice: {count}"
        if count == expected or asyncio.get_running_loop().time() > deadline:
            assert count == expected
            return
        await asyncio.sleep(0.2)


async def until_logged(hub: Hub, expected: Counter[str]) -> None:
    """Wait (bounded) until ``hub``'s request log is exactly ``expected``; a duplicate fails at once."""
    deadline = asyncio.get_running_loop().time() + WAIT_SECS
    while True:
        seen = await logged(hub)
        assert all(n == 1 for n in seen.values()), f"a row read twice: {seen}"
        if seen == expected or asyncio.get_running_loop().time() > deadline:
            assert seen == expected
            return
        await asyncio.sleep(0.2)


async def test_analytics_through_either_replica_show_both_replicas_rows_once(
    make_hub: Callable[..., Any], tmp_path: Path
) -> None:
    a, key_a = await start_replica(make_hub, tmp_path, "a")
    b, key_b = await start_replica(make_hub, tmp_path, "b")
    await serve(a, key_a, "a-1", "a-2", "a-3")
    await serve(b, key_b, "b-1", "b-2")
    everyone = Counter(["a-1", "a-2", "a-3", "b-1", "b-2"])
    await until_logged(a, everyone)
    await until_logged(b, everyone)

    # a row is read once whether it is still local or already in a segment: keep serving and reading
    await serve(a, key_a, "a-4")
    assert await logged(a) == everyone + Counter(["a-4"])  # its own newest row, before any export
    await until_logged(b, everyone + Counter(["a-4"]))

    stats = await a.admin("GET", "/stats", expect=200)
    hour = next(item for item in stats["global"] if item["window"] == "1h")
    assert hour["request_count"] == 6
    by_replica = await b.admin(
        "POST", "/analytics/query", {"sql": "SELECT replica_id, count(*) FROM request_log GROUP BY 1 ORDER BY 1"}
    )
    assert by_replica["rows"] == [["a", 4], ["b", 2]], by_replica
    local = await b.admin("POST", "/analytics/query", {"sql": "SELECT count(*) FROM tokenhub.main.request_log"})
    assert local["rows"] == [[2]], local  # the local table, under its catalog name
    refused = await b.admin("POST", "/analytics/query", {"sql": "SELECT * FROM read_parquet('x/*.parquet')"})
    assert refused["error"]["type"] == "query_refused"
    trends = await b.admin("GET", "/analytics/trends?bucket=hour", expect=200)
    assert sum(item["requests"] for item in trends["error_rate"]) == 6
    await until_counted(b, "/tsdb/query?metric=latency&agg=count&step=86400000", 6)
    one = await b.admin("GET", "/logs?client_request_id=a-2", expect=200)
    detail = await b.admin("GET", f"/logs/{one['logs'][0]['request_id']}", expect=200)
    assert detail["request"]["client_request_id"] == "a-2"  # a's row, read from a's segment
    schema = await b.admin("GET", "/analytics/schema", expect=200)
    request_log = next(t for t in schema["tables"] if t["name"] == "request_log")
    assert "replica_id" in [c["name"] for c in request_log["columns"]]

    # a goes away: what it exported stays readable through b
    await a.client.close()
    assert await logged(b) == everyone + Counter(["a-4"])
    replicas = {s.replica for s in list_segments(tmp_path / "export", "request_log")}
    assert replicas == {"a", "b"}


async def test_a_restarted_replica_exports_from_its_watermark(make_hub: Callable[..., Any], tmp_path: Path) -> None:
    a, key = await start_replica(make_hub, tmp_path, "a")
    await serve(a, key, "r-1", "r-2")
    await until_segments(tmp_path, Counter(["r-1", "r-2"]), a)
    await a.client.close()  # clean stop
    again = await make_hub(
        data_dir=str(tmp_path / "a"),
        log_export_dir=str(tmp_path / "export"),
        log_export_segment_secs=1,
        log_export_replica_id="a",
    )
    await serve(again, key, "r-3")
    await until_segments(tmp_path, Counter(["r-1", "r-2", "r-3"]), again)
    await until_logged(again, Counter(["r-1", "r-2", "r-3"]))


async def until_segments(tmp_path: Path, expected: Counter[str], hub: Hub) -> None:
    """Wait (bounded) until the exported segments hold exactly ``expected`` (read through DuckDB's own
    Parquet reader, outside the server)."""
    import duckdb

    deadline = asyncio.get_running_loop().time() + WAIT_SECS
    while True:
        files = [s.path for s in list_segments(tmp_path / "export", "request_log")]
        seen: Counter[str] = Counter()
        if files:
            conn = duckdb.connect()
            try:
                rows = conn.execute("SELECT client_request_id FROM read_parquet(?)", [files]).fetchall()
            finally:
                conn.close()
            seen = Counter(row[0] for row in rows)
        assert all(n == 1 for n in seen.values()), f"exported twice: {seen}"
        if seen == expected or asyncio.get_running_loop().time() > deadline:
            assert seen == expected
            return
        await hub.services.records.flush()
        await asyncio.sleep(0.2)
