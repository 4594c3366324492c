"""The request context of a routed request, built from the HTTP request before its body is read, and the
checks that need no body (run before it is read)."""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterator

from aiohttp import web

from pipeline.context import RequestContext
from pipeline.services import Services
from pipeline.stage import Next, stages_in
from pipeline.types import ChatRequest
from pipeline.web import CLIENT_REQUEST_ID, REQUEST_ID, TrustedProxies, client_ip, presented_key
from stages.auth import Auth, check_key
from stages.rate_limit import RateLimit

__all__ = ["BeforeBody", "new_context"]

Check = Callable[[RequestContext], None]


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


class BeforeBody:
    """The checks a tenant chain runs before the body is read or parsed, in the chain's order: its per-IP rate
    limit (the stage's own buckets and options, so the stage does not count the request again) and the key
    check of its auth stage (401 missing or unknown, 403 scope). Invalid bodies then count against the limit,
    and a request without a valid key costs no parsing. The checks are found once per chain (a chain is
    rebuilt when its configuration changes, and the cache forgets the old one with it)."""

    def __init__(self) -> None:
        self._checks: weakref.WeakKeyDictionary[Next, tuple[Check, ...]] = weakref.WeakKeyDictionary()

    def __call__(self, ctx: RequestContext, chain: Next) -> None:
        checks = self._checks.get(chain)
        if checks is None:
            checks = self._checks[chain] = tuple(_checks_of(chain))
        for check in checks:
            check(ctx)


def _checks_of(chain: Next) -> Iterator[Check]:
    for stage in stages_in(chain):
        if isinstance(stage, RateLimit):
            yield stage.admit
        elif isinstance(stage, Auth):
            yield _check_key_now


def _check_key_now(ctx: RequestContext) -> None:
    check_key(ctx, time.time())
