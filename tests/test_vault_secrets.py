"""Generic vault secrets over HTTP: /admin/v1/vault/secrets/{key} (spec row 62)."""

from __future__ import annotations

import sqlite3

from store import vault_store
from tests.conftest import Hub

PASSWORD = "correct horse battery"
VALUE = "s3cret-value-for-a-webhook-0123456789"


async def _unlock(hub: Hub) -> None:
    await hub.admin("POST", "/vault/unlock", {"password": PASSWORD}, expect=200)


async def test_put_get_list_delete_round_trip_and_values_stay_sealed(hub: Hub) -> None:
    await _unlock(hub)
    created = await hub.admin("PUT", "/vault/secrets/webhook.token", {"value": VALUE}, expect=201)
    assert created == {"ok": True, "key": "webhook.token", "created": True}
    replaced = await hub.admin("PUT", "/vault/secrets/webhook.token", {"value": VALUE + "-2"}, expect=200)
    assert replaced["created"] is False
    await hub.admin("PUT", "/vault/secrets/a:first", {"value": "x"}, expect=201)

    assert await hub.admin("GET", "/vault/secrets/webhook.token", expect=200) == {
        "key": "webhook.token",
        "value": VALUE + "-2",
    }
    listing = await hub.admin("GET", "/vault/secrets", expect=200)
    assert listing == {"secrets": ["a:first", "webhook.token"], "total": 2}

    # sealed at rest: the plaintext is nowhere in the SQLite file
    db = sqlite3.connect(hub.services.settings.sqlite_path)
    try:
        blob = vault_store.load_secret(db, "secret:webhook.token")
    finally:
        db.close()
    assert blob is not None and VALUE.encode() not in blob
    assert VALUE.encode() not in hub.services.settings.sqlite_path.read_bytes()

    assert await hub.admin("DELETE", "/vault/secrets/webhook.token", expect=200) == {
        "ok": True,
        "key": "webhook.token",
        "deleted": True,
    }
    error = (await hub.admin("GET", "/vault/secrets/webhook.token", expect=404))["error"]
    assert error["type"] == "not_found" and error["request_id"]
    await hub.admin("DELETE", "/vault/secrets/webhook.token", expect=404)
    assert (await hub.admin("GET", "/vault/secrets", expect=200))["secrets"] == ["a:first"]


async def test_audit_rows_never_hold_the_value(hub: Hub) -> None:
    await _unlock(hub)
    await hub.admin("PUT", "/vault/secrets/db.password", {"value": VALUE}, expect=201)
    await hub.admin("DELETE", "/vault/secrets/db.password", expect=200)
    rows = (await hub.admin("GET", "/audit?limit=10"))["logs"]
    put = next(row for row in rows if row["action"] == "put_secret")
    assert put["target"] == "db.password" and put["detail"] == {"value": "[REDACTED]"} and put["status"] == 201
    assert any(row["action"] == "delete_secret" and row["status"] == 200 for row in rows)
    assert VALUE not in str(rows)


async def test_locked_or_unset_vault_refuses_values_and_changes_nothing(hub: Hub) -> None:
    # never set up: no password yet
    error = (await hub.admin("PUT", "/vault/secrets/k", {"value": "v"}, expect=409))["error"]
    assert error["type"] == "vault_locked" and "not set up" in error["message"] and error["request_id"]
    await _unlock(hub)
    await hub.admin("PUT", "/vault/secrets/k", {"value": "v"}, expect=201)
    await hub.admin("POST", "/vault/lock", expect=200)

    for method, body in (("GET", None), ("PUT", {"value": "other"})):
        error = (await hub.admin(method, "/vault/secrets/k", body, expect=409))["error"]
        assert error["type"] == "vault_locked" and "unlock" in error["message"]
    assert (await hub.admin("GET", "/vault/secrets", expect=200))["secrets"] == ["k"]  # names only
    await _unlock(hub)
    assert (await hub.admin("GET", "/vault/secrets/k", expect=200))["value"] == "v"  # the PUT changed nothing


async def test_disabled_vault_refuses(make_hub: object) -> None:
    hub = await make_hub(vault_enabled=False)  # type: ignore[operator]
    error = (await hub.admin("PUT", "/vault/secrets/k", {"value": "v"}, expect=400))["error"]
    assert error["type"] == "vault_disabled"


async def test_bad_input_is_refused_and_changes_nothing(hub: Hub) -> None:
    await _unlock(hub)
    for body in ({}, {"value": ""}, {"value": 5}, {"value": "v", "extra": 1}, {"value": "x" * (64 * 1024 + 1)}):
        error = (await hub.admin("PUT", "/vault/secrets/k", body, expect=400))["error"]
        assert error["type"] == "invalid_request" and error["request_id"]
        assert VALUE not in error["message"]
    error = (await hub.admin("PUT", "/vault/secrets/..bad", {"value": "v"}, expect=400))["error"]
    assert error["type"] == "invalid_request"
    assert (await hub.admin("GET", "/vault/secrets", expect=200))["secrets"] == []


async def test_provider_keys_are_out_of_reach(hub: Hub) -> None:
    await _unlock(hub)
    await hub.add_provider()  # its key goes into the vault as provider:fake:api_key
    assert (await hub.admin("GET", "/vault", expect=200))["secrets"] == ["provider:fake:api_key"]
    assert (await hub.admin("GET", "/vault/secrets", expect=200))["secrets"] == []
    await hub.admin("GET", "/vault/secrets/provider:fake:api_key", expect=404)
    await hub.admin("DELETE", "/vault/secrets/provider:fake:api_key", expect=404)
    await hub.admin("PUT", "/vault/secrets/provider:fake:api_key", {"value": "evil"}, expect=201)
    db = sqlite3.connect(hub.services.settings.sqlite_path)
    try:
        names = vault_store.secret_names(db)
    finally:
        db.close()
    assert names == ["provider:fake:api_key", "secret:provider:fake:api_key"]  # the provider's key untouched
