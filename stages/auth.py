"""auth: the request's API key must exist, be enabled, not be expired, and carry the endpoint's scope."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from pipeline.context import RequestContext
from pipeline.errors import Forbidden, Unauthorized
from pipeline.stage import Next, StageOptions, StageSpec

if TYPE_CHECKING:
    from pipeline.services import Services


class AuthOptions(StageOptions):
    pass


class Auth:
    def __init__(self, services: Services, options: AuthOptions) -> None:
        self._clock = time.time

    async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
        key = ctx.api_key
        if not ctx.presented_key:
            raise Unauthorized("authorization required: send 'Authorization: Bearer tokenhub_...'")
        if key is None or not key.enabled:
            raise Unauthorized("invalid api key")
        if key.expires_at is not None and key.expires_at <= self._clock():
            raise Unauthorized("api key expired")
        if key.scopes and ctx.scope not in key.scopes:
            raise Forbidden(f"insufficient scope: this endpoint needs '{ctx.scope}'")
        await call_next(ctx)


SPEC = StageSpec(
    name="auth",
    factory=Auth,
    options=AuthOptions,
    summary="API key (Bearer or x-api-key): 401 when missing, unknown, disabled or expired; 403 without scope.",
    required=True,
    after=("record",),
)
