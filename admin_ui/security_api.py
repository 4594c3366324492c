"""Admin security: the per-IP admin rate limit, path-parameter validation and the audit trail (middlewares
on the admin sub-app, so every current and future route gets them), the vault endpoints and the audit log.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from aiohttp import web
from prometheus_client import Counter
from pydantic import Field

from admin_ui.api import _Body, _services, read_model
from admin_ui.params import int_param, str_param, time_param
from pipeline.errors import InvalidRequest, RateLimited, TokenHubError, VaultRefused
from pipeline.services import Services
from pipeline.web import PIPELINES, RAW_BODY, REQUEST_ID, Handler, TrustedProxies, client_ip
from stages.rate_limit import TokenBuckets
from store import audit, vault_store
from store.vault import VaultError

log = structlog.get_logger("tokenhub.admin")
_PATH_PARAM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,255}$")
_READS = frozenset({"GET", "HEAD", "OPTIONS"})
# HTTP status per vault refusal kind; a wrong password is 401, a damaged vault a server-side 500.
_VAULT_STATUS = {
    "unlock_failed": 401,
    "invalid_password": 400,
    "vault_disabled": 400,
    "vault_locked": 409,
    "vault_corrupted": 500,
}


@dataclass(slots=True)
class _Guards:
    """Per-IP buckets for the admin API and for password attempts, and the proxies trusted for the IP."""

    admin: TokenBuckets
    passwords: TokenBuckets
    trusted: TrustedProxies
    rejected: Counter


GUARDS: web.AppKey[list[_Guards]] = web.AppKey("security_guards", list)


def _guards(request: web.Request) -> _Guards:
    """Built on first use from the running services (the admin sub-app is created before them)."""
    holder = request.config_dict[GUARDS]
    if not holder:
        services = _services(request)
        settings = services.settings
        attempts = settings.vault_unlock_attempts_per_min
        holder.append(
            _Guards(
                admin=TokenBuckets(settings.admin_rate_limit_rps, settings.admin_rate_limit_burst),
                passwords=TokenBuckets(attempts / 60.0, attempts),
                trusted=TrustedProxies.from_settings(settings),
                rejected=Counter(
                    "tokenhub_admin_rate_limited",
                    "Admin API requests rejected by the per-IP admin limiter",
                    registry=services.metrics.registry,
                ),
            )
        )
    return holder[0]


def _ip(request: web.Request) -> str:
    return client_ip(request, _guards(request).trusted)


# --- middlewares -----------------------------------------------------------------------------------
@web.middleware
async def admin_rate_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Runs before authentication, so guessing the admin token is rate limited too."""
    guards = _guards(request)
    if wait := guards.admin.take(client_ip(request, guards.trusted)):
        guards.rejected.inc()
        raise RateLimited("admin rate limit exceeded", retry_after=wait)
    return await handler(request)


@web.middleware
async def validate_path_params(request: web.Request, handler: Handler) -> web.StreamResponse:
    for name, value in request.match_info.items():
        if not _PATH_PARAM.match(value):
            raise InvalidRequest(
                f"path parameter {name!r} must be 1-256 characters of letters, digits and . _ : / @ -"
                " starting with a letter or digit",
                field=name,
            )
    return await handler(request)


@web.middleware
async def audit_trail(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every admin request that may change something is appended to the audit log with its outcome,
    whether it succeeded or was refused. Runs after authentication: the actor is the admin token."""
    if request.method in _READS:
        return await handler(request)
    status, response = 500, None
    try:
        response = await handler(request)
        status = response.status
        return response
    except (TokenHubError, web.HTTPException) as exc:
        status = exc.status
        raise
    finally:
        await _append_audit(request, status, response)


async def _append_audit(request: web.Request, status: int, response: web.StreamResponse | None) -> None:
    services = _services(request)
    route = request.match_info.route
    entry = audit.AuditEntry(
        timestamp=time.time(),
        actor="admin",
        client_ip=_ip(request),
        method=request.method,
        route=route.resource.canonical if route.resource else request.path,
        action=getattr(route.handler, "__name__", ""),
        target=_target(request, response),
        detail=audit.summarize_body(request.get(RAW_BODY)),
        status=status,
        request_id=request.get(REQUEST_ID, ""),
    )
    try:
        await services.config.call(audit.append, services.config.db, entry)
    except Exception as exc:  # the change itself is committed: a lost audit row is counted, not fatal
        services.metrics.store_dropped.labels(op="audit").inc()
        log.error("audit_write_failed", action=entry.action, error=type(exc).__name__)


def _target(request: web.Request, response: web.StreamResponse | None) -> str:
    """What the change was about: the path ids, else the id the answer names (a generated API key id),
    else the id the body named (a created provider, model or tenant). Only that one field is read."""
    if request.match_info:
        return "/".join(request.match_info.values())[:300]
    for raw in (response.body if isinstance(response, web.Response) else None, request.get(RAW_BODY)):
        if not isinstance(raw, bytes) or not raw:
            continue
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(data, dict) and isinstance(data.get("id"), str):
            return data["id"][:300]
    return ""


# --- vault ---------------------------------------------------------------------------------------
class UnlockIn(_Body):
    password: str | None = Field(None, repr=False, max_length=1024)
    admin_password: str | None = Field(None, repr=False, max_length=1024)  # the original API's name


class RotateIn(_Body):
    old_password: str = Field(repr=False, max_length=1024)
    new_password: str = Field(repr=False, max_length=1024)


async def vault_status(request: web.Request) -> web.Response:
    services = _services(request)
    names = await services.config.call(vault_store.secret_names, services.config.db)
    return web.json_response(_vault_view(services, names))


async def unlock_vault(request: web.Request) -> web.Response:
    ip = _password_attempt(request)
    body = await read_model(request, UnlockIn)
    password = body.password if body.password is not None else body.admin_password
    if password is None:
        raise InvalidRequest('send {"password": "..."}', field="password")
    services = _services(request)
    try:
        outcome = await services.vault.unlock(password, services.config)
    except VaultError as exc:
        log.warning("vault_unlock_refused", client_ip=ip, reason=exc.kind)
        raise VaultRefused(exc.kind, str(exc), status=_VAULT_STATUS.get(exc.kind, 400)) from None
    await _reload(request)
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
    services = _services(request)
    was_unlocked = services.vault.lock()
    if was_unlocked:
        await _reload(request)
        log.info("vault_locked", client_ip=_ip(request), reason="admin")
    return web.json_response({"ok": True, "already_locked": not was_unlocked, "vault": _vault_view(services)})


async def rotate_vault(request: web.Request) -> web.Response:
    ip = _password_attempt(request)
    body = await read_model(request, RotateIn)
    services = _services(request)
    try:
        resealed = await services.vault.rotate(body.old_password, body.new_password, services.config)
    except VaultError as exc:
        log.warning("vault_rotate_refused", client_ip=ip, reason=exc.kind)
        raise VaultRefused(exc.kind, str(exc), status=_VAULT_STATUS.get(exc.kind, 400)) from None
    log.info("vault_rotated", client_ip=ip, secrets=resealed)
    return web.json_response({"ok": True, "resealed_secrets": resealed, "vault": _vault_view(services)})


async def admin_info(request: web.Request) -> web.Response:
    vault = _services(request).vault
    return web.json_response(
        {"tokenhub": "admin", "vault_locked": not vault.unlocked, "vault_initialized": vault.initialized}
    )


def _password_attempt(request: web.Request) -> str:
    """Unlock and rotate take a password: at most TOKENHUB_VAULT_UNLOCK_ATTEMPTS_PER_MIN tries per IP."""
    guards = _guards(request)
    ip = client_ip(request, guards.trusted)
    if wait := guards.passwords.take(ip):
        log.warning("vault_password_attempts_limited", client_ip=ip)
        raise RateLimited("too many vault password attempts from this address", retry_after=wait)
    return ip


async def _reload(request: web.Request) -> None:
    """Rebuild the provider adapters from the vault's new state (keys now readable, or gone)."""
    await _services(request).reload_config()
    request.config_dict[PIPELINES].refresh()


def _vault_view(services: Services, names: list[str] | None = None) -> dict[str, Any]:
    view = {**services.vault.status(), "locked_providers": sorted(services.vault_locked_providers)}
    if names is not None:
        view["secrets"] = names  # names only, e.g. provider:openai:api_key
    return view


# --- audit log -------------------------------------------------------------------------------------
async def list_audit(request: web.Request) -> web.Response:
    limit = int_param(request, "limit", 100, 1, 1000) or 100
    offset = int_param(request, "offset", 0, 0, 10**9) or 0
    since, until = time_param(request, "since"), time_param(request, "until")
    if since and until and since > until:
        raise InvalidRequest("since must not be after until", field="since")
    where = audit.AuditFilter(
        action=str_param(request, "action"),
        target=str_param(request, "target"),
        status=int_param(request, "status", None, 100, 599),
        since=since.timestamp() if since else None,
        until=until.timestamp() if until else None,
    )
    services = _services(request)
    page = await services.config.call(audit.query, services.config.db, where, limit, offset)
    return web.json_response({**page, "limit": limit, "offset": offset})


def add_routes(app: web.Application) -> None:
    app[GUARDS] = []
    app.router.add_routes(
        [
            web.get("/info", admin_info),
            web.get("/vault", vault_status),
            web.post("/vault/unlock", unlock_vault),
            web.post("/vault/lock", lock_vault),
            web.post("/vault/rotate", rotate_vault),
            web.get("/audit", list_audit),
        ]
    )


# In order: refuse floods before anything, then authenticate (admin_ui.api.admin_auth), then check path
# ids, then audit what is left.
BEFORE_AUTH = (admin_rate_limit,)
AFTER_AUTH = (validate_path_params, audit_trail)
