"""Two log rows: the request log's alias_from (the alias a request resolved through, filterable in GET
/admin/v1/logs) and the audit trail's own retention (TOKENHUB_AUDIT_RETENTION_DAYS, pruned on its job)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from pipeline.settings import SettingsError, load_settings
from tests.conftest import Hub


async def test_the_request_log_names_the_alias_a_request_came_through(ready_hub: tuple[Hub, str]) -> None:
    hub, key = ready_hub
    await hub.admin("POST", "/aliases", {"name": "smart", "variants": [{"model_id": "gpt-test"}]}, expect=201)
    _, _, via_alias = await hub.chat(key, model_hint="smart")
    _, _, direct = await hub.chat(key, model_hint="gpt-test")
    alias_id, direct_id = via_alias.headers["X-Request-Id"], direct.headers["X-Request-Id"]
    rows = {row["request_id"]: row for row in await hub.logs()}
    assert rows[alias_id]["alias_from"] == "smart"
    assert rows[direct_id]["alias_from"] == ""
    filtered = (await hub.admin("GET", "/logs?alias_from=smart", expect=200))["logs"]
    assert [row["request_id"] for row in filtered] == [alias_id]
    detail = await hub.admin("GET", f"/logs/{alias_id}", expect=200)
    assert detail["request"]["alias_from"] == "smart"


async def test_the_audit_trail_is_pruned_by_its_own_retention(make_hub: Callable[..., Any]) -> None:
    hub: Hub = await make_hub(audit_retention_days="30", request_log_retention_days="365")
    assert hub.services.retention.audit_days == 30
    job = next(j for j in hub.services.jobs if j.name == "prune-audit")
    assert job.interval_secs == 6 * 3600
    await hub.add_provider("old")
    await hub.add_provider("recent")
    config = hub.services.config

    def age(target: str, days: float) -> None:
        with config.db as db:
            db.execute("UPDATE audit_logs SET timestamp = ? WHERE target = ?", (time.time() - days * 86400, target))

    await config.call(age, "old", 31)
    await config.call(age, "recent", 29)
    assert await hub.services.retention.prune_audit() == 1
    targets = [row["target"] for row in (await hub.admin("GET", "/audit"))["logs"]]
    assert "old" not in targets and "recent" in targets
    assert await hub.services.retention.prune_audit() == 0


def test_audit_retention_setting_is_validated() -> None:
    assert load_settings({}).audit_retention_days == 90
    with pytest.raises(SettingsError, match="TOKENHUB_AUDIT_RETENTION_DAYS=0"):
        load_settings({"TOKENHUB_AUDIT_RETENTION_DAYS": "0"})
