"""POST /admin/v1/admin-token/rotate (spec row 72): the old token stops working at once, the token file is
replaced (0600), web UI sessions end; an explicit token needs >= 32 characters; an environment token is
refused (409)."""

from __future__ import annotations

import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import ADMIN_TOKEN, Hub


async def _file_hub(make_hub: Callable[..., Any]) -> tuple[Hub, Path, str]:
    """A hub whose token comes from the data directory's .admin-token (generated at start)."""
    hub = await make_hub(admin_token="")
    path = hub.services.settings.data_dir / ".admin-token"
    return hub, path, path.read_text().strip()


async def _status(hub: Hub, token: str | None, method: str = "GET", path: str = "/providers", **kw: Any) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    resp = await hub.client.request(method, f"/admin/v1{path}", headers=headers, **kw)
    await resp.read()
    return resp.status


async def test_random_rotation_retires_the_old_token_at_once(make_hub: Callable[..., Any]) -> None:
    hub, path, old = await _file_hub(make_hub)
    # a web UI session, signed in with the old token
    signed_in = await hub.client.post("/admin/v1/session", json={"token": old})
    assert signed_in.status == 201
    assert await _status(hub, None) == 200  # the cookie works

    resp = await hub.client.post("/admin/v1/admin-token/rotate", headers={"Authorization": f"Bearer {old}"})
    body = await resp.json()
    assert resp.status == 200, body
    new = body["token"]
    assert body["ok"] is True and re.fullmatch(r"[0-9a-f]{64}", new) and body["token_file"] == str(path)

    assert await _status(hub, old) == 401
    assert await _status(hub, None) == 401  # every session was signed out
    assert await _status(hub, new) == 200
    assert path.read_text() == new + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not path.with_name(".admin-token.tmp").exists()
    # signing in takes the new token only
    assert (await hub.client.post("/admin/v1/session", json={"token": old})).status == 401
    assert (await hub.client.post("/admin/v1/session", json={"token": new})).status == 201

    rows = (await _json(hub, new, "/audit?action=rotate_admin_token"))["logs"]
    assert [row["status"] for row in rows] == [200]
    assert new not in str(rows) and old not in str(rows)


async def test_explicit_token_and_restart_keeps_it(make_hub: Callable[..., Any]) -> None:
    hub, _, old = await _file_hub(make_hub)
    chosen = "Z" * 16 + "an-explicit-admin-token-0123456789"
    resp = await hub.client.post(
        "/admin/v1/admin-token/rotate", json={"token": chosen}, headers={"Authorization": f"Bearer {old}"}
    )
    assert resp.status == 200 and (await resp.json())["token"] == chosen
    rows = (await _json(hub, chosen, "/audit?action=rotate_admin_token"))["logs"]
    assert rows[0]["detail"] == {"token": "[REDACTED]"} and chosen not in str(rows)

    await hub.client.close()  # a restart reads the rotated token from the file
    again = await make_hub(admin_token="")
    assert await _status(again, chosen) == 200 and await _status(again, old) == 401


async def test_bad_tokens_are_refused_and_change_nothing(make_hub: Callable[..., Any]) -> None:
    hub, path, old = await _file_hub(make_hub)
    for body in (
        {"token": "x" * 31},  # the port requires 32 (the original: 16)
        {"token": "a token with spaces 0123456789abcdef"},
        {"token": "é" * 40},
        {"token": "x" * 513},
        {"token": 12345678901234567890123456789012345},
        {"token": "x" * 40, "extra": True},
    ):
        resp = await hub.client.post(
            "/admin/v1/admin-token/rotate", json=body, headers={"Authorization": f"Bearer {old}"}
        )
        error = (await resp.json())["error"]
        assert resp.status == 400 and error["type"] == "invalid_request" and error["request_id"], error
        assert str(body["token"]) not in error["message"]
    resp = await hub.client.post(
        "/admin/v1/admin-token/rotate", data=b"{not json", headers={"Authorization": f"Bearer {old}"}
    )
    assert resp.status == 400
    assert await _status(hub, old) == 200 and path.read_text().strip() == old
    # without the admin token: 401, nothing rotated
    assert await _status(hub, None, "POST", "/admin-token/rotate") == 401
    assert await _status(hub, "wrong-token", "POST", "/admin-token/rotate") == 401
    assert path.read_text().strip() == old


async def test_environment_token_is_not_rotated(hub: Hub) -> None:
    resp = await hub.client.post("/admin/v1/admin-token/rotate", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    error = (await resp.json())["error"]
    assert resp.status == 409 and error["type"] == "conflict" and "TOKENHUB_ADMIN_TOKEN" in error["message"]
    assert ADMIN_TOKEN not in error["message"]
    assert await _status(hub, ADMIN_TOKEN) == 200
    assert not (hub.services.settings.data_dir / ".admin-token").exists()


async def test_unwritable_token_file_keeps_the_old_token(make_hub: Callable[..., Any]) -> None:
    hub, path, old = await _file_hub(make_hub)
    path.with_name(".admin-token.tmp").mkdir()  # the temporary file cannot be created
    resp = await hub.client.post("/admin/v1/admin-token/rotate", headers={"Authorization": f"Bearer {old}"})
    error = (await resp.json())["error"]
    assert resp.status == 500 and error["type"] == "internal_error" and "old token stays" in error["message"]
    assert await _status(hub, old) == 200 and path.read_text().strip() == old


async def _json(hub: Hub, token: str, path: str) -> Any:
    resp = await hub.client.get(f"/admin/v1{path}", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200
    return await resp.json()
