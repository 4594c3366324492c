"""CORS for browser clients, from TOKENHUB_CORS_ORIGINS (off when empty).

A preflight (OPTIONS with Origin and Access-Control-Request-Method) from an allowed origin is answered
here, before routing and authentication: 204 with the allowed methods, the requested headers (each a
valid header name) and Max-Age. Every response to an allowed origin, streams included (headers are added
just before they are sent), carries Access-Control-Allow-Origin and the exposed headers. A disallowed
origin gets no CORS header at all (its preflight is a 403). Credentials are never allowed: clients
authenticate with an explicit Authorization header, so a wildcard never meets cookies.
"""

from __future__ import annotations

import re

from aiohttp import web

from pipeline.errors import Forbidden
from pipeline.web import Handler

__all__ = [
    "ALLOW_METHODS",
    "DEFAULT_ALLOW_HEADERS",
    "EXPOSE_HEADERS",
    "MAX_AGE_SECS",
    "MAX_REQUESTED_HEADERS",
    "Cors",
    "setup_cors",
]

ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
DEFAULT_ALLOW_HEADERS = (
    "Accept, Authorization, Content-Type, X-Request-Id, x-api-key, Idempotency-Key, anthropic-version, anthropic-beta"
)
EXPOSE_HEADERS = (
    "X-Request-Id, X-Client-Request-Id, X-Negotiated-Model, X-Provider, X-TokenHub-Attempts, Retry-After,"
    " Idempotent-Replayed, Idempotency-Replay, X-Idempotent-Request-Id"
)
MAX_AGE_SECS = "300"
MAX_REQUESTED_HEADERS = 64
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$")


class Cors:
    def __init__(self, origins: tuple[str, ...]) -> None:
        self._any = origins == ("*",)
        self._origins = frozenset(origins)

    def allow_origin(self, origin: str) -> str | None:
        """The Access-Control-Allow-Origin value for this origin, or None when it is not allowed."""
        if self._any:
            return "*"
        return origin if origin in self._origins else None

    @web.middleware
    async def preflight(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if request.method != "OPTIONS" or not origin or "Access-Control-Request-Method" not in request.headers:
            return await handler(request)
        allowed = self.allow_origin(origin)
        if allowed is None:
            raise Forbidden(f"origin {origin[:200]!r} is not allowed (TOKENHUB_CORS_ORIGINS)")
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": allowed,
                "Access-Control-Allow-Methods": ALLOW_METHODS,
                "Access-Control-Allow-Headers": _allowed_headers(request.headers.get("Access-Control-Request-Headers")),
                "Access-Control-Max-Age": MAX_AGE_SECS,
                "Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            },
        )

    async def on_prepare(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if not origin:
            return
        if not self._any and "Origin" not in response.headers.get("Vary", ""):
            vary = response.headers.get("Vary")
            response.headers["Vary"] = f"{vary}, Origin" if vary else "Origin"
        allowed = self.allow_origin(origin)
        if allowed is None:
            return
        response.headers["Access-Control-Allow-Origin"] = allowed
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS


def _allowed_headers(requested: str | None) -> str:
    """Echo what the browser asks for (SDKs send their own headers, e.g. x-stainless-*), valid names only."""
    if not requested:
        return DEFAULT_ALLOW_HEADERS
    names = [name.strip() for name in requested.split(",")[:MAX_REQUESTED_HEADERS]]
    valid = [name for name in names if _HEADER_NAME.match(name)]
    return ", ".join(valid) if valid else DEFAULT_ALLOW_HEADERS


def setup_cors(app: web.Application, origins: tuple[str, ...]) -> None:
    """Register CORS on the root app (it then covers the admin sub-app too). No origins: no CORS at all."""
    if not origins:
        return
    cors = Cors(origins)
    app.middlewares.append(cors.preflight)
    app.on_response_prepare.append(cors.on_prepare)
