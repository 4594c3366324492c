"""The host-local API key (spec row 74): written to <data dir>/.host-api-key (0600) at start, reused across
restarts, stored as a digest only, replaced when revoked."""

from __future__ import annotations

import stat
from collections.abc import Callable
from typing import Any

from tests.conftest import Hub


async def _start(make_hub: Callable[..., Any]) -> tuple[Hub, str]:
    hub = await make_hub(host_api_key_enabled=True)
    path = hub.services.settings.data_dir / ".host-api-key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return hub, path.read_text().strip()


async def _host_keys(hub: Hub) -> list[dict[str, Any]]:
    return [k for k in (await hub.admin("GET", "/apikeys"))["keys"] if k["name"] == "host-local"]


async def test_created_at_start_and_usable(make_hub: Callable[..., Any]) -> None:
    hub, key = await _start(make_hub)
    assert key.startswith("tokenhub_") and len(key) == len("tokenhub_") + 64
    [listed] = await _host_keys(hub)
    assert listed["scopes"] == ["chat", "plan"] and listed["tenant_id"] == "default" and listed["enabled"]
    assert listed["monthly_budget_usd"] == 0 and listed["rate_limit_rpm"] == 0
    assert key[:17] == listed["key_prefix"] and key not in str(await hub.admin("GET", "/apikeys"))
    assert key.encode() not in hub.services.settings.sqlite_path.read_bytes()  # only its digest is stored

    await hub.add_provider()
    await hub.add_model("gpt-test", weight=5, max_context_tokens=8000)
    await hub.chat_ok(key)
    resp = await hub.client.post("/v1/embeddings", json={"input": "x"}, headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 403  # chat and plan only


async def test_reused_across_restarts(make_hub: Callable[..., Any]) -> None:
    hub, key = await _start(make_hub)
    [first] = await _host_keys(hub)
    await hub.client.close()
    hub, again = await _start(make_hub)
    assert again == key
    assert [k["id"] for k in await _host_keys(hub)] == [first["id"]]


async def test_revoked_key_is_replaced_at_next_start(make_hub: Callable[..., Any]) -> None:
    hub, key = await _start(make_hub)
    [record] = await _host_keys(hub)
    await hub.admin("DELETE", f"/apikeys/{record['id']}", expect=200)
    await hub.client.close()
    hub, fresh = await _start(make_hub)
    assert fresh != key
    [replacement] = await _host_keys(hub)
    assert replacement["id"] != record["id"]
    await hub.chat_refused(key, 401, "unauthorized")


async def test_unreadable_file_content_is_replaced(make_hub: Callable[..., Any], tmp_path: Any) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / ".host-api-key").write_text("not a key\n")
    hub, key = await _start(make_hub)
    assert key.startswith("tokenhub_") and len(await _host_keys(hub)) == 1


async def test_turned_off(hub: Hub) -> None:
    assert not (hub.services.settings.data_dir / ".host-api-key").exists()
    assert await _host_keys(hub) == []
