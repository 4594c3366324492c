"""The record of admin actions: every request that may change something is appended to the audit trail
(SQLite) with its outcome, each successful change is published as an ``admin_action`` event, and GET /audit
reads the trail back. Both are middlewares, so every current and future admin route is covered."""

from __future__ import annotations

import json
import time

import orjson
import structlog
from aiohttp import web

from admin_ui.common import get_services
from admin_ui.params import int_param, str_param, time_param
from admin_ui.security import admin_ip
from pipeline.errors import InvalidRequest, TokenHubError
from pipeline.web import RAW_BODY, REQUEST_ID, Handler
from store import audit

__all__ = ["audit_trail", "list_audit", "publish_admin_actions"]

log = structlog.get_logger("tokenhub.admin")
_READS = frozenset({"GET", "HEAD", "OPTIONS"})
# Mutating admin routes that only read (they are POST for the request body): no admin_action event.
_READ_ONLY_HANDLERS = frozenset({"analytics_query"})


@web.middleware
async def audit_trail(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Appends each admin request that may change something, whether it succeeded or was refused. Runs
    after authentication: the actor is the admin token."""
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
        await _append(request, status, response)


@web.middleware
async def publish_admin_actions(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Each successful admin change becomes an ``admin_action`` event (ids and paths only, no bodies)."""
    response = await handler(request)
    if request.method in _READS or response.status >= 400:
        return response
    action = getattr(request.match_info.route.handler, "__name__", "")
    bus = get_services(request).events
    if action in _READ_ONLY_HANDLERS or not bus.active:
        return response
    bus.publish(
        "admin_action",
        action=action,
        resource=request.match_info.route.resource.canonical if request.match_info.route.resource else "",
        path=request.path,
        request_id=request.get(REQUEST_ID, ""),
    )
    if action == "delete_provider" and _deleted(response):
        bus.publish(
            "health_change",
            provider_id=request.match_info.get("id", ""),
            new_state="removed",
            reason="provider deleted by an admin",
        )
    return response


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
    services = get_services(request)
    page = await services.config.call(audit.query, services.config.db, where, limit, offset)
    return web.json_response({**page, "limit": limit, "offset": offset})


async def _append(request: web.Request, status: int, response: web.StreamResponse | None) -> None:
    services = get_services(request)
    route = request.match_info.route
    entry = audit.AuditEntry(
        timestamp=time.time(),
        actor="admin",
        client_ip=admin_ip(request),
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


def _deleted(response: web.StreamResponse) -> bool:
    body = getattr(response, "body", None)
    try:
        return isinstance(body, bytes) and json.loads(body).get("deleted") is True
    except (ValueError, AttributeError):
        return False
