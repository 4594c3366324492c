"""HTTP edge: request ids, JSON errors, client IPs, and the thin chat handler (decode -> pipeline -> encode)."""

from __future__ import annotations

import ipaddress
import itertools
import os
import re
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pipeline.codec import Codec, attempts_header
from pipeline.context import RequestContext
from pipeline.errors import ClientDisconnected, NotFound, PayloadTooLarge, TokenHubError
from pipeline.input_limits import check_json_depth
from pipeline.services import Services
from pipeline.tenants import TenantPipelines
from pipeline.types import ChatRequest
from stages.policy import resolve_model_id
from stages.record import emit_record

log = structlog.get_logger("tokenhub.http")
SERVICES: web.AppKey[Services] = web.AppKey("services", Services)
PIPELINES: web.AppKey[TenantPipelines] = web.AppKey("pipelines", TenantPipelines)
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
RAW_BODY: web.RequestKey[bytes] = web.RequestKey("raw_body", bytes)  # as read_body returned it (audit trail)
_REQUEST_ID_OK = re.compile(r"[A-Za-z0-9._:/@+=-]{1,128}")
_counter = itertools.count(1)
_process_tag = os.urandom(6).hex()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def new_request_id(incoming: str | None) -> str:
    """Reuse a well-formed incoming X-Request-Id (so callers can correlate), else make one."""
    if incoming and _REQUEST_ID_OK.fullmatch(incoming):
        return incoming
    return f"th-{_process_tag}-{next(_counter):08d}"


def error_response(exc: TokenHubError, request_id: str) -> web.Response:
    return web.json_response(
        exc.body(request_id), status=exc.status, headers={**exc.headers, "X-Request-Id": request_id}
    )


@web.middleware
async def request_id_and_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every response carries X-Request-Id; every error, ours or aiohttp's, is JSON; never a traceback."""
    request_id = new_request_id(request.headers.get("X-Request-Id"))
    request[REQUEST_ID] = request_id
    try:
        response = await handler(request)
    except TokenHubError as exc:
        return error_response(exc, request_id)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = TokenHubError(exc.reason or "error")
        error.status, error.type = exc.status, _HTTP_TYPES.get(exc.status, "http_error")
        return error_response(error, request_id)
    except Exception:
        log.exception("unhandled_error", request_id=request_id, path=request.path)
        error = TokenHubError("internal error; see the server log for this request id")
        return error_response(error, request_id)
    response.headers["X-Request-Id"] = request_id
    return response


_HTTP_TYPES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


TrustedNets = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def client_ip(request: web.Request, trusted: TrustedNets) -> str:
    """The peer's host (no port). Forwarding headers count only when the peer is a trusted proxy."""
    peer = request.remote or ""
    if not trusted or not peer:
        return peer
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return peer
    if not any(address in net for net in trusted):
        return peer
    forwarded = request.headers.get("X-Forwarded-For", "")
    if forwarded:
        # Each proxy appends the address it saw, so only the right end is trustworthy: skip our own
        # proxies from the right; the first other hop is the client (the left end is whatever it sent).
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        for hop in reversed(hops):
            if not _is_trusted(hop, trusted):
                return hop[:64]
        return hops[0][:64] if hops else peer
    return request.headers.get("X-Real-IP", "").strip()[:64] or peer


def _is_trusted(hop: str, trusted: TrustedNets) -> bool:
    try:
        address = ipaddress.ip_address(hop)
    except ValueError:
        return False
    return any(address in net for net in trusted)


def presented_key(request: web.Request) -> str:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("x-api-key", "").strip()


async def read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body is {request.content_length} bytes; the limit is {limit}", field="body")
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit", field="body")
    services = request.config_dict.get(SERVICES)
    if services is not None:
        check_json_depth(body, services.settings.max_json_depth)  # before any parser sees it
    request[RAW_BODY] = body
    return body


def new_context(
    request: web.Request, services: Services, trusted: TrustedNets, *, scope: str, endpoint: str
) -> RequestContext:
    """The context of a routed request: identity resolved (it picks the tenant pipeline), body not read yet."""
    key = presented_key(request)
    api_key = services.identify(key)
    return RequestContext(
        request_id=request[REQUEST_ID],
        scope=scope,
        client_ip=client_ip(request, trusted),
        request=ChatRequest(messages=[]),
        endpoint=endpoint,
        presented_key=bool(key),
        api_key=api_key,
        tenant_id=api_key.tenant_id if api_key else "default",
    )


def trusted_networks(services: Services) -> TrustedNets:
    return tuple(ipaddress.ip_network(p, strict=False) for p in services.settings.trusted_proxies)


class RoutedEndpoint:
    """A chat-style route: decode with the codec, run the tenant's pipeline, answer in the codec's format
    (a JSON body, or a stream the pipeline writes through the codec's sink). Errors, too, are in the
    codec's shape, before and after a stream opened."""

    def __init__(self, services: Services, pipelines: TenantPipelines, codec: Codec) -> None:
        self._services = services
        self._pipelines = pipelines
        self._codec = codec
        self._trusted = trusted_networks(services)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        services, codec = self._services, self._codec
        ctx = new_context(request, services, self._trusted, scope=codec.scope, endpoint=codec.endpoint)
        # Log lines name the request id explicitly: binding a context variable per request costs more.
        try:
            raw = await read_body(request, services.settings.max_body_bytes)
            ctx.request, ctx.policy = codec.decode(raw, max_messages=services.settings.max_messages)
            if codec.strict_model:
                check_model_known(services, ctx.request.model_hint)
        except TokenHubError as exc:
            # Rejected before any stage ran: nothing dispatched, still recorded exactly once.
            ctx.error = exc
            emit_record(services, ctx)
            return self._error(exc, ctx.request_id)
        sink = ctx.sink = codec.stream_sink(request, ctx) if ctx.request.stream else None
        try:
            await self._pipelines.chain_for(ctx.tenant_id)(ctx)
        except ClientDisconnected:
            return sink.response if sink is not None and sink.opened else web.Response(status=499)
        except TokenHubError as exc:
            if sink is not None and sink.opened:
                await sink.fail(exc)  # the client has a 200 and part of an answer: end it with an error event
                return sink.response
            return self._error(exc, ctx.request_id)
        served = ctx.served_by
        assert served is not None, "a chain that returns without error has served the request"
        if sink is not None:
            await sink.finish(ctx)
            return sink.response
        headers = {
            "X-Negotiated-Model": served.model.id,
            "X-Provider": served.model.provider_id,
            "X-TokenHub-Attempts": attempts_header(ctx),
        }
        if ctx.alias_from:
            headers["X-Alias-From"] = ctx.alias_from
        return web.Response(body=codec.encode(ctx), content_type="application/json", headers=headers)

    def _error(self, exc: TokenHubError, request_id: str) -> web.Response:
        return web.json_response(
            self._codec.error_body(exc, request_id),
            status=exc.status,
            headers={**exc.headers, "X-Request-Id": request_id},
        )


def check_model_known(services: Services, model: str) -> None:
    """An OpenAI/Anthropic client that names a model gets a 404 for an unknown one, as those APIs do.
    An enabled alias is a known name (policy replaces it by one of its variants)."""
    snapshot = services.snapshot
    alias = snapshot.aliases.get(model)
    if alias is not None and alias.enabled:
        return
    if model and resolve_model_id(model, snapshot.models) is None:
        raise NotFound(
            f"model {model!r} does not exist; GET /v1/models lists the models, or send 'auto'", field="model"
        )


async def healthz(request: web.Request) -> web.Response:
    status = request.app[SERVICES].readiness()
    return web.json_response(status, status=200 if status["status"] == "ok" else 503)


async def list_models(request: web.Request) -> web.Response:
    """GET /v1/models, OpenAI's list shape: every enabled model of a configured provider (no auth, per spec)."""
    services = request.app[SERVICES]
    data = []
    for model in sorted(services.snapshot.models.values(), key=lambda m: m.id):
        if not model.enabled or model.provider_id not in services.adapters:
            continue
        entry: dict[str, Any] = {"id": model.id, "object": "model", "created": 0, "owned_by": model.provider_id}
        if model.max_context_tokens:
            entry["context_length"] = entry["max_model_len"] = model.max_context_tokens
        data.append(entry)
    # Enabled aliases are names a client may send as `model` too (owned_by "tokenhub": they are ours).
    for alias in sorted(services.snapshot.aliases.values(), key=lambda a: a.name):
        if alias.enabled:
            data.append({"id": alias.name, "object": "model", "created": 0, "owned_by": "tokenhub"})
    return web.json_response({"object": "list", "data": data})


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[SERVICES].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
