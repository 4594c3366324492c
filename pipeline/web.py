"""HTTP plumbing every endpoint shares: request ids, JSON errors, client IPs, presented keys, body reading."""

from __future__ import annotations

import ipaddress
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from aiohttp import web

from pipeline.errors import PayloadTooLarge, TokenHubError
from pipeline.input_limits import check_json_depth, check_json_integers
from pipeline.services import Services
from pipeline.settings import Settings
from pipeline.tenants import TenantPipelines

__all__ = [
    "CLIENT_REQUEST_ID",
    "PIPELINES",
    "RAW_BODY",
    "REQUEST_ID",
    "SERVICES",
    "Handler",
    "TrustedProxies",
    "client_ip",
    "client_request_id",
    "error_response",
    "id_headers",
    "new_request_id",
    "presented_key",
    "read_body",
    "request_id_and_errors",
    "request_id_started",
    "trusted_networks",
]

log = structlog.get_logger("tokenhub.http")
SERVICES: web.AppKey[Services] = web.AppKey("services", Services)
PIPELINES: web.AppKey[TenantPipelines] = web.AppKey("pipelines", TenantPipelines)
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
CLIENT_REQUEST_ID: web.RequestKey[str] = web.RequestKey("client_request_id", str)  # "" when none or malformed
RAW_BODY: web.RequestKey[bytes] = web.RequestKey("raw_body", bytes)  # as read_body returned it (audit trail)
_CLIENT_ID_OK = re.compile(r"[A-Za-z0-9._:/@+=-]{1,128}")
# th-<start, unix ms, 12 hex>-<96 random bits, 24 hex>; /v1/plan steps append ".<n>-<role>".
_OUR_ID = re.compile(r"th-([0-9a-f]{12})-[0-9a-f]{24}")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _RandomHex:
    """24 hex digits (96 bits) from the OS's CSPRNG, read 4 KiB at a time: one getrandom syscall per 341
    ids instead of one per request (the syscall was 2 % of the event loop's time under load)."""

    __slots__ = ("_at", "_hex")
    CHUNK = 12 * 341

    def __init__(self) -> None:
        self._hex, self._at = "", 0

    def take(self) -> str:
        at = self._at
        if at + 24 > len(self._hex):
            self._hex, at = os.urandom(self.CHUNK).hex(), 0
        self._at = at + 24
        return self._hex[at : at + 24]


_random_hex = _RandomHex()
# A forked worker must not hand out the ids left in its parent's buffer.
os.register_at_fork(after_in_child=_random_hex.__init__)


def new_request_id() -> str:
    """A fresh id for one request: 96 random bits make it unique and unguessable; the start time in front
    lets feedback look its row up in a narrow time range."""
    return f"th-{int(time.time() * 1000):012x}-{_random_hex.take()}"


def request_id_started(request_id: str) -> float | None:
    """When a request with an id of ours started (unix seconds), or None when the id is not one of ours."""
    match = _OUR_ID.match(request_id)
    return int(match[1], 16) / 1000 if match else None


def client_request_id(incoming: str | None) -> str:
    """The client's X-Request-Id when well-formed, else "". Kept for correlation only, never as our id:
    clients choose it, so two clients may send the same one."""
    return incoming if incoming and _CLIENT_ID_OK.fullmatch(incoming) else ""


def error_response(exc: TokenHubError, request_id: str) -> web.Response:
    return web.json_response(
        exc.body(request_id), status=exc.status, headers={**exc.headers, "X-Request-Id": request_id}
    )


@web.middleware
async def request_id_and_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every response carries our X-Request-Id (and the client's own as X-Client-Request-Id); every error,
    ours or aiohttp's, is JSON; never a traceback."""
    request_id = request[REQUEST_ID] = new_request_id()
    request[CLIENT_REQUEST_ID] = client_request_id(request.headers.get("X-Request-Id"))
    try:
        response = await handler(request)
    except TokenHubError as exc:
        response = error_response(exc, request_id)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = TokenHubError(exc.reason or "error")
        error.status, error.type = exc.status, _HTTP_TYPES.get(exc.status, "http_error")
        response = error_response(error, request_id)
    except Exception:
        log.exception("unhandled_error", request_id=request_id, path=request.path)
        error = TokenHubError("internal error; see the server log for this request id")
        response = error_response(error, request_id)
    if not response.prepared:  # a stream's headers are gone already; its sink set them (id_headers)
        response.headers.update(id_headers(request))
    return response


def id_headers(request: web.Request) -> dict[str, str]:
    """The id headers of a response: ours, and the client's own when it sent a well-formed one."""
    headers = {"X-Request-Id": request[REQUEST_ID]}
    if client_id := request.get(CLIENT_REQUEST_ID):
        headers["X-Client-Request-Id"] = client_id
    return headers


_HTTP_TYPES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    """The peers whose forwarding headers are believed (TOKENHUB_TRUSTED_PROXIES), and whether X-Real-IP is
    one of those headers (TOKENHUB_TRUST_X_REAL_IP: only for a proxy that sets it, replacing the client's)."""

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    real_ip: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> TrustedProxies:
        networks = tuple(ipaddress.ip_network(p, strict=False) for p in settings.trusted_proxies)
        return cls(networks, settings.trust_x_real_ip)

    def __contains__(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in net for net in self.networks)


def client_ip(request: web.Request, trusted: TrustedProxies) -> str:
    """The peer's host (no port). Forwarding headers count only when the peer is a trusted proxy."""
    peer = request.remote or ""
    if not trusted.networks or peer not in trusted:
        return peer
    if trusted.real_ip and (real := request.headers.getall("X-Real-IP", [])):
        return real[-1].strip()[:64] or peer  # the last line: the one our proxy set, if it appended
    # Every X-Forwarded-For line, in order: a proxy may append its own line instead of extending the
    # client's, and the right end is what our proxies saw. Skip our own proxies from the right; the first
    # other hop is the client (whatever the client wrote at the left end chooses nothing).
    hops = [hop.strip() for line in request.headers.getall("X-Forwarded-For", []) for hop in line.split(",")]
    hops = [hop for hop in hops if hop]
    for hop in reversed(hops):
        if hop not in trusted:
            return hop[:64]
    return hops[0][:64] if hops else peer


def presented_key(request: web.Request) -> str:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("x-api-key", "").strip()


async def read_body(request: web.Request, limit: int, *, max_depth: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body is {request.content_length} bytes; the limit is {limit}", field="body")
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit", field="body")
    check_json_depth(body, max_depth)  # before any parser sees it
    check_json_integers(body)
    request[RAW_BODY] = body
    return body


def trusted_networks(services: Services) -> TrustedProxies:
    return TrustedProxies.from_settings(services.settings)
