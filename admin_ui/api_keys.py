"""Admin API for API keys: create, list, edit (PATCH), rotate, mark the budget paid, revoke.

The plaintext key appears in exactly two responses, creation and rotation; SQLite holds its SHA-256
digest. Every change commits, then swaps the request path's snapshot: it applies to the next request.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from aiohttp import web
from pydantic import Field

from admin_ui.common import Body, IdStr, Scope, commit, get_services, parse_duration, read_model
from admin_ui.params import int_param
from pipeline.errors import InvalidRequest, NotFound
from store import api_keys
from store.config_store import DEFAULT_TENANT
from store.reservations import key_account_id

__all__ = ["create_api_key", "list_api_keys", "mark_budget_paid", "patch_api_key", "revoke_api_key", "rotate_api_key"]

Name = Annotated[str, Field(min_length=1, max_length=200)]
Budget = Annotated[float, Field(ge=0, le=1_000_000)]
PerMinute = Annotated[int, Field(ge=0, le=1_000_000_000)]
RotationDays = Annotated[int, Field(ge=0, le=36_500)]  # 0 = no rotation period
SHOWN_ONCE = "store this key now: it is shown only once"


class ApiKeyIn(Body):
    name: Name
    tenant_id: IdStr = DEFAULT_TENANT
    scopes: list[Scope] = Field(default_factory=lambda: ["chat", "plan"], max_length=3)
    expires_in: str | None = None
    monthly_budget_usd: Budget = 0.0  # 0 = no budget
    rate_limit_rpm: PerMinute = 0  # requests per minute, 0 = only the per-IP limit
    rate_limit_tpm: PerMinute = 0  # tokens per minute, 0 = unlimited
    rotation_days: RotationDays = 0  # disabled once not rotated for this long (stages/key_rotation.py)


class ApiKeyPatch(Body):
    name: Name | None = None
    scopes: list[Scope] | None = Field(None, max_length=3)
    enabled: bool | None = None
    expires_in: str | None = None  # a duration from now; null removes the expiry
    monthly_budget_usd: Budget | None = None
    rate_limit_rpm: PerMinute | None = None
    rate_limit_tpm: PerMinute | None = None
    rotation_days: RotationDays | None = None


async def list_api_keys(request: web.Request) -> web.Response:
    services = get_services(request)
    limit = int_param(request, "limit", 1000, 1, 1000) or 1000
    offset = int_param(request, "offset", 0, 0, 10**9) or 0
    keys, total = await services.config.call(api_keys.list_page, services.config.db, limit, offset)
    items = [_live(request, key) for key in keys]
    return web.json_response({"keys": items, "total": total, "limit": limit, "offset": offset})


async def create_api_key(request: web.Request) -> web.Response:
    body = await read_model(request, ApiKeyIn)
    services = get_services(request)
    if await services.config.call(services.config.get_tenant, body.tenant_id) is None:
        raise InvalidRequest(f"tenant {body.tenant_id!r} does not exist", field="tenant_id")
    expires_at = time.time() + parse_duration(body.expires_in) if body.expires_in else None
    plaintext, record = await commit(
        request,
        api_keys.create,
        services.config.db,
        name=body.name,
        tenant_id=body.tenant_id,
        scopes=list(dict.fromkeys(body.scopes)),
        expires_at=expires_at,
        monthly_budget_usd=body.monthly_budget_usd,
        rate_limit_rpm=body.rate_limit_rpm,
        rate_limit_tpm=body.rate_limit_tpm,
        rotation_days=body.rotation_days,
    )
    return web.json_response(
        {"ok": True, "key": plaintext, "prefix": record["key_prefix"], **_live(request, record), "warning": SHOWN_ONCE},
        status=201,
    )


async def patch_api_key(request: web.Request) -> web.Response:
    key_id = request.match_info["id"]
    body = await read_model(request, ApiKeyPatch)
    changes: dict[str, Any] = body.model_dump(exclude_none=True, exclude={"expires_in"})
    if "scopes" in changes:
        changes["scopes"] = list(dict.fromkeys(changes["scopes"]))
    if "expires_in" in body.model_fields_set:
        changes["expires_at"] = time.time() + parse_duration(body.expires_in) if body.expires_in else None
    if not changes:
        raise InvalidRequest("nothing to change: send at least one field", field="body")
    services = get_services(request)
    record = await commit(request, api_keys.update, services.config.db, key_id, changes)
    if record is None:
        raise NotFound(f"api key {key_id!r} not found")
    if {"rate_limit_rpm", "rate_limit_tpm", "enabled"} & changes.keys():
        services.key_limits.forget(key_id)
    return web.json_response({"ok": True, **_live(request, record)})


async def rotate_api_key(request: web.Request) -> web.Response:
    key_id = request.match_info["id"]
    services = get_services(request)
    rotated = await commit(request, api_keys.rotate, services.config.db, key_id)
    if rotated is None:
        raise NotFound(f"api key {key_id!r} not found")
    plaintext, record = rotated
    return web.json_response(
        {"ok": True, "key": plaintext, "prefix": record["key_prefix"], **_live(request, record), "warning": SHOWN_ONCE}
    )


async def mark_budget_paid(request: web.Request) -> web.Response:
    key_id = request.match_info["id"]
    services = get_services(request)
    now = time.time()
    if not await commit(request, api_keys.mark_paid, services.config.db, key_id, now):
        raise NotFound(f"api key {key_id!r} not found")
    services.key_ledger.reset(key_id)
    return web.json_response({"ok": True, "id": key_id, "budget_reset_at": now})


async def revoke_api_key(request: web.Request) -> web.Response:
    services = get_services(request)
    key_id = request.match_info["id"]
    if not await commit(request, services.config.delete_api_key, key_id):
        raise NotFound(f"api key {key_id!r} not found")
    services.key_limits.forget(key_id)
    return web.json_response({"ok": True, "revoked": key_id})


def _live(request: web.Request, record: dict[str, Any]) -> dict[str, Any]:
    """The stored record plus what only memory knows yet: spend this month, a last use not yet flushed."""
    services = get_services(request)
    key_id = record["id"]
    pending = services.key_ledger.last_used(key_id)
    last_used = max(filter(None, (record["last_used_at"], pending)), default=None)
    return {
        **record,
        "last_used_at": last_used,
        "current_spend_usd": services.key_ledger.spent(key_id, time.time()),
        "reserved_usd": services.reservations.reserved(key_account_id(key_id)),  # held by requests in flight
    }
