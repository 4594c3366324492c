"""Admin API for the vault: GET /vault, POST /vault/unlock, /vault/lock, /vault/rotate, GET /info (what the
web UI asks first: is the vault locked, is it set up), and generic secrets under /vault/secrets/{key}.
Passwords and secret values are never logged; a value is returned only by GET /vault/secrets/{key}."""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web
from pydantic import Field

from admin_ui.common import Body, get_services, read_model, reload
from admin_ui.security import admin_ip, password_attempt
from pipeline.errors import InvalidRequest, NotFound, VaultRefused
from pipeline.services import Services
from store import vault, vault_store
from store.vault import VaultError

__all__ = [
    "admin_info",
    "delete_secret",
    "get_secret",
    "list_secrets",
    "lock_vault",
    "put_secret",
    "rotate_vault",
    "unlock_vault",
    "vault_status",
]

log = structlog.get_logger("tokenhub.admin")
# HTTP status per vault refusal kind; a wrong password is 401, a damaged vault a server-side 500.
_VAULT_STATUS = {
    "unlock_failed": 401,
    "invalid_password": 400,
    "vault_disabled": 400,
    "vault_locked": 409,
    "vault_corrupted": 500,
}
MAX_SECRET_CHARS = 64 * 1024


class UnlockIn(Body):
    password: str | None = Field(None, repr=False, max_length=1024)
    admin_password: str | None = Field(None, repr=False, max_length=1024)  # the original API's name


class RotateIn(Body):
    old_password: str = Field(repr=False, max_length=1024)
    new_password: str = Field(repr=False, max_length=1024)


class SecretIn(Body):
    value: str = Field(repr=False, min_length=1, max_length=MAX_SECRET_CHARS)


async def vault_status(request: web.Request) -> web.Response:
    services = get_services(request)
    names = await services.config.call(vault_store.secret_names, services.config.db)
    return web.json_response(_vault_view(services, names))


async def unlock_vault(request: web.Request) -> web.Response:
    ip = password_attempt(request)
    body = await read_model(request, UnlockIn)
    password = body.password if body.password is not None else body.admin_password
    if password is None:
        raise InvalidRequest('send {"password": "..."}', field="password")
    services = get_services(request)
    try:
        outcome = await services.vault.unlock(password, services.config)
    except VaultError as exc:
        log.warning("vault_unlock_refused", client_ip=ip, reason=exc.kind)
        raise _refused(exc) from None
    await reload(request)  # rebuild the provider adapters: their vault keys are readable now
    log.info("vault_unlocked", client_ip=ip, initialized=outcome.initialized, migrated=outcome.migrated_keys)
    return web.json_response(
        {
            "ok": True,
            "initialized": outcome.initialized,
            "migrated_provider_keys": outcome.migrated_keys,
            "vault": _vault_view(services),
        }
    )


async def lock_vault(request: web.Request) -> web.Response:
    services = get_services(request)
    was_unlocked = services.vault.lock()
    if was_unlocked:
        await reload(request)  # adapters holding vault keys go
        log.info("vault_locked", client_ip=admin_ip(request), reason="admin")
    return web.json_response({"ok": True, "already_locked": not was_unlocked, "vault": _vault_view(services)})


async def rotate_vault(request: web.Request) -> web.Response:
    ip = password_attempt(request)
    body = await read_model(request, RotateIn)
    services = get_services(request)
    try:
        resealed = await services.vault.rotate(body.old_password, body.new_password, services.config)
    except VaultError as exc:
        log.warning("vault_rotate_refused", client_ip=ip, reason=exc.kind)
        raise _refused(exc) from None
    log.info("vault_rotated", client_ip=ip, secrets=resealed)
    return web.json_response({"ok": True, "resealed_secrets": resealed, "vault": _vault_view(services)})


async def admin_info(request: web.Request) -> web.Response:
    vault = get_services(request).vault
    return web.json_response(
        {"tokenhub": "admin", "vault_locked": not vault.unlocked, "vault_initialized": vault.initialized}
    )


async def list_secrets(request: web.Request) -> web.Response:
    """GET /vault/secrets: the keys, sorted; never a value (readable while locked: names are not secret)."""
    services = get_services(request)
    keys = await services.config.call(vault.secret_keys, services.config.db)
    return web.json_response({"secrets": keys, "total": len(keys)})


async def get_secret(request: web.Request) -> web.Response:
    key = request.match_info["key"]
    services = get_services(request)
    try:
        value = await services.config.call(vault.read_secret, services.config.db, services.vault, key)
    except VaultError as exc:
        raise _refused(exc) from None
    if value is None:
        raise NotFound(f"secret {key!r} not found")
    return web.json_response({"key": key, "value": value})


async def put_secret(request: web.Request) -> web.Response:
    """PUT /vault/secrets/{key} {"value"}: sealed like a provider key; 201 when new, 200 when replaced."""
    key = request.match_info["key"]
    body = await read_model(request, SecretIn)
    services = get_services(request)
    try:
        created = await services.config.call(vault.put_secret, services.config.db, services.vault, key, body.value)
    except VaultError as exc:
        raise _refused(exc) from None
    return web.json_response({"ok": True, "key": key, "created": created}, status=201 if created else 200)


async def delete_secret(request: web.Request) -> web.Response:
    key = request.match_info["key"]
    services = get_services(request)
    if not await services.config.call(vault.delete_secret, services.config.db, key):
        raise NotFound(f"secret {key!r} not found")
    return web.json_response({"ok": True, "key": key, "deleted": True})


def _refused(exc: VaultError) -> VaultRefused:
    return VaultRefused(exc.kind, str(exc), status=_VAULT_STATUS.get(exc.kind, 400))


def _vault_view(services: Services, names: list[str] | None = None) -> dict[str, Any]:
    view = {**services.vault.status(), "locked_providers": sorted(services.vault_locked_providers)}
    if names is not None:
        view["secrets"] = names  # names only, e.g. provider:openai:api_key
    return view
