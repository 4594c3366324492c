"""The request context of a routed request, built from the HTTP request before its body is read."""

from __future__ import annotations

from aiohttp import web

from pipeline.context import RequestContext
from pipeline.services import Services
from pipeline.types import ChatRequest
from pipeline.web import CLIENT_REQUEST_ID, REQUEST_ID, TrustedNets, client_ip, presented_key

__all__ = ["new_context"]


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
        client_request_id=request[CLIENT_REQUEST_ID],
    )
