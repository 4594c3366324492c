"""GET /admin/v1/analytics/schema: the tables and columns analyst SQL reads, as DuckDB's catalog has them."""

from __future__ import annotations

from tests.conftest import ADMIN_TOKEN, Hub


async def test_schema_lists_the_analyst_tables_as_queries_see_them(hub: Hub) -> None:
    schema = await hub.admin("GET", "/analytics/schema", expect=200)
    tables = {t["name"]: t["columns"] for t in schema["tables"]}
    assert list(tables) == ["request_log", "tsdb_points"]  # internal tables (if any) are not listed
    log = {c["name"]: c for c in tables["request_log"]}
    assert log["timestamp"] == {"name": "timestamp", "type": "TIMESTAMP WITH TIME ZONE", "nullable": False}
    assert log["reward"]["nullable"] is True and log["reward"]["type"] == "DOUBLE"
    assert log["input_tokens"]["type"] == "BIGINT"
    # columns added by a migration after the first release are there: the catalog, not the CREATE text
    assert {"client_request_id", "parent_request_id", "attempts", "feedback_score"} <= set(log)

    # every column listed is what an analyst query over it reports, name and type, in the same order
    for name, columns in tables.items():
        select = ", ".join(f'"{c["name"]}"' for c in columns)
        result = await hub.admin(
            "POST", "/analytics/query", {"sql": f"SELECT {select} FROM {name} LIMIT 0"}, expect=200
        )
        assert result["columns"] == [{"name": c["name"], "type": c["type"]} for c in columns]


async def test_schema_needs_the_admin_token(hub: Hub) -> None:
    resp = await hub.client.get("/admin/v1/analytics/schema")
    assert resp.status == 401
    resp = await hub.client.get("/admin/v1/analytics/schema", headers={"Authorization": f"Bearer {ADMIN_TOKEN}x"})
    assert resp.status == 401 and (await resp.json())["error"]["request_id"]
