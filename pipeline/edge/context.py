"""The request context of a routed request, built from the HTTP request before its body is read, and the
checks that need no body (run before it is read)."""

from __future__ import annotations

import time

from aiohttp import web

from pipeline.context import RequestContext
from pipeline.services import Services
from pipeline.stage import Next, stages_in
from pipeline.types import ChatRequest
from pipeline.web import CLIENT_REQUEST_ID, REQUEST_ID, TrustedProxies, client_ip, presented_key
from stages.auth import Auth, check_key
from stages.rate_limit import RateLimit

__all__ = ["admit_before_body", "new_context"]


def new_context(
    request: web.Request, services: Services, trusted: TrustedProxies, *, scope: str, endpoint: str
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
        client_request_id=request[CLIENT_REQUEST_ID],
    )


def admit_before_body(ctx: RequestContext, chain: Next) -> None:
    """Before the body is read or parsed, in the order of the tenant's chain: its per-IP rate limit (the
    stage's own buckets and options, so the stage does not count the request again) and the key check of
    its auth stage (401 missing or unknown, 403 scope). Invalid bodies then count against the limit, and a
    request without a valid key costs no parsing."""
    for stage in stages_in(chain):
        if isinstance(stage, RateLimit):
            stage.admit(ctx)
        elif isinstance(stage, Auth):
            check_key(ctx, time.time())
