"""Admin web UI sign-in: the admin token is exchanged once for a session cookie, which then authenticates the
admin API like the Bearer token does (a browser's ``EventSource`` cannot send a header, only a cookie).

The cookie is HttpOnly (page scripts never see it), SameSite=Strict (other sites' pages never send it),
Secure when the request came over TLS, scoped to /admin and expiring. Requests that change something and come
with the cookie must also carry the session's CSRF token in ``X-CSRF-Token``: a header that a cross-site
form cannot set and a cross-site script cannot read. Bearer clients are unchanged.

Sessions live in memory: a restart signs everyone out, which is the safe default for a single process. With
Redis (TOKENHUB_REDIS_URL) they are shared by every replica (AdminSessions).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware
from pydantic import Field

from admin_ui.common import Body, read_model
from admin_ui.security import GUARDS
from pipeline.admin_token import AdminToken
from pipeline.errors import Forbidden, Unauthorized
from pipeline.web import Handler
from store.redis_link import RedisDown, RedisLink

__all__ = [
    "ADMIN_TOKEN_KEY",
    "COOKIE",
    "CSRF_HEADER",
    "SESSIONS",
    "AdminSessions",
    "Session",
    "admin_auth",
    "end_session",
    "is_public",
    "session_info",
    "start_session",
]

COOKIE = "tokenhub_admin"
CSRF_HEADER = "X-CSRF-Token"
COOKIE_PATH = "/admin"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Routes reachable without credentials: signing in (the token is the credential, in the body), and asking
# whether this browser is signed in (so the page never provokes a 401 just to find out).
_PUBLIC = frozenset({("POST", "start_session"), ("GET", "session_info")})


def is_public(method: str, handler: object) -> bool:
    """Whether the route answers without credentials (the OpenAPI document says so too)."""
    return (method, getattr(handler, "__name__", "")) in _PUBLIC


@dataclass(frozen=True, slots=True)
class Session:
    csrf_token: str
    expires_at: float


class AdminSessions:
    """Signed-in browsers, keyed by a hash of the cookie value (the value itself is not kept). Bounded: past
    ``max_sessions`` the oldest sign-in is dropped.

    With Redis (``link``) the sessions live there too, as ``session:<sha-256 of the cookie>`` with the
    session's TTL: a cookie from one replica works on every replica and signing out (or rotating the admin
    token) ends it everywhere. Each admin request with a cookie costs one bounded round trip (the admin API is
    not the request path). Redis down: this replica answers from its own copy (metric
    ``shared_state_fallbacks{what="sessions"}``) and, back up, pushes the sign-ins and sign-outs made meanwhile."""

    def __init__(
        self,
        ttl_secs: float,
        *,
        max_sessions: int = 1000,
        clock: Callable[[], float] = time.time,
        link: RedisLink | None = None,
        on_fallback: Callable[[], None] | None = None,
    ) -> None:
        self.ttl_secs = ttl_secs
        self.max_sessions = max_sessions
        self.clock = clock
        self._sessions: OrderedDict[bytes, Session] = OrderedDict()
        self._link = link
        self._on_fallback = on_fallback
        # What Redis missed while down: sign-ins to store, sign-outs to delete, "everyone signs out".
        self._unsaved: set[bytes] = set()
        self._unclosed: set[bytes] = set()
        self._close_all_pending = False
        if link is not None:
            link.on_up(self._resync)

    async def open(self) -> tuple[str, Session]:
        """A new session: the cookie value (returned once, to set on the response) and its record."""
        cookie = secrets.token_urlsafe(32)
        session = Session(csrf_token=secrets.token_urlsafe(32), expires_at=self.clock() + self.ttl_secs)
        key = _digest(cookie)
        self._sessions[key] = session
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        if self._link is not None and not await self._shared(lambda: self._save(key, session)):
            self._unsaved.add(key)
        return cookie, session

    async def find(self, cookie: str) -> Session | None:
        """The live session the cookie names; an expired one is forgotten."""
        key = _digest(cookie)
        if self._link is not None:
            found: list[Session | None] = []
            if await self._shared(lambda: self._load(key, found)):
                session = found[0]
                if session is None and key not in self._unsaved:  # signed out (or expired) everywhere
                    self._sessions.pop(key, None)
                    return None
                if session is not None:
                    self._sessions[key] = session
        session = self._sessions.get(key)
        if session is None:
            return None
        if session.expires_at <= self.clock():
            del self._sessions[key]
            return None
        return session

    async def close(self, cookie: str) -> None:
        key = _digest(cookie)
        self._sessions.pop(key, None)
        self._unsaved.discard(key)
        if self._link is not None and not await self._shared(lambda: self._delete([key])):
            self._unclosed.add(key)

    async def close_all(self) -> None:
        """Everyone signs in again (the admin token changed)."""
        self._sessions.clear()
        self._unsaved.clear()
        if self._link is not None and not await self._shared(self._delete_all):
            self._close_all_pending = True

    def __len__(self) -> int:
        return len(self._sessions)

    # --- Redis ------------------------------------------------------------------------------------------
    async def _shared(self, op: Callable[[], Awaitable[object]]) -> bool:
        """Run `op` against Redis; False (and the fallback counted) when Redis is down."""
        try:
            await op()
        except RedisDown:
            if self._on_fallback is not None:
                self._on_fallback()
            return False
        return True

    def _key(self, digest: bytes) -> str:
        assert self._link is not None
        return self._link.key("session", digest.hex())

    async def _save(self, digest: bytes, session: Session) -> None:
        assert self._link is not None
        ttl_ms = int((session.expires_at - self.clock()) * 1000)
        if ttl_ms <= 0:
            return
        value = json.dumps({"csrf": session.csrf_token, "expires_at": session.expires_at})
        client = self._link.client
        await self._link.run(lambda: client.set(self._key(digest), value, px=ttl_ms))

    async def _load(self, digest: bytes, found: list[Session | None]) -> None:
        assert self._link is not None
        client = self._link.client
        raw = await self._link.run(lambda: client.get(self._key(digest)))
        if raw is None:
            found.append(None)
            return
        data = json.loads(raw)
        found.append(Session(csrf_token=data["csrf"], expires_at=float(data["expires_at"])))

    async def _delete(self, digests: list[bytes]) -> None:
        assert self._link is not None
        if digests:
            client = self._link.client
            await self._link.run(lambda: client.delete(*(self._key(d) for d in digests)))

    async def _delete_all(self) -> None:
        assert self._link is not None
        client = self._link.client
        pattern = self._link.key("session", "*")

        async def scan() -> list[bytes]:
            return [key async for key in client.scan_iter(match=pattern, count=1000)]

        keys = await self._link.run(scan)
        if keys:
            await self._link.run(lambda: client.delete(*keys))

    async def _resync(self) -> None:
        """Redis is back: what this replica did meanwhile reaches it (the "everyone out" first)."""
        if self._close_all_pending:
            await self._delete_all()
            self._close_all_pending = False
        unclosed, self._unclosed = self._unclosed, set()
        await self._delete(list(unclosed))
        for digest in list(self._unsaved):
            session = self._sessions.get(digest)
            if session is not None:
                await self._save(digest, session)
            self._unsaved.discard(digest)


SESSIONS: web.AppKey[AdminSessions] = web.AppKey("admin_sessions", AdminSessions)
ADMIN_TOKEN_KEY: web.AppKey[AdminToken] = web.AppKey("admin_token", AdminToken)


def _digest(cookie: str) -> bytes:
    return hashlib.sha256(cookie.encode()).digest()


def admin_auth(admin_token: AdminToken) -> Middleware:
    """Every admin route needs ``Authorization: Bearer <admin token>`` (compared in constant time with the
    live token: a rotation applies to the next request) or a live session cookie; with the cookie, a change
    also needs the session's CSRF token."""

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if is_public(request.method, request.match_info.handler):
            return await handler(request)
        auth = request.headers.get("Authorization")
        if auth is not None or COOKIE not in request.cookies:
            auth = auth or ""
            if auth[:7].lower() != "bearer ":
                raise Unauthorized(
                    "missing admin token: send 'Authorization: Bearer <TOKENHUB_ADMIN_TOKEN>' or sign in at /admin/"
                )
            if not admin_token.matches(auth[7:].strip()):
                raise Unauthorized("invalid admin token")
            return await handler(request)
        session = await request.config_dict[SESSIONS].find(request.cookies[COOKIE])
        if session is None:
            raise Unauthorized("the admin session has expired or is not valid: sign in again at /admin/")
        if request.method not in _SAFE_METHODS:
            sent = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(sent.encode(), session.csrf_token.encode()):
                raise Forbidden(f"missing or wrong {CSRF_HEADER} header for a change made with the session cookie")
        return await handler(request)

    return authenticate


class SignIn(Body):
    token: str = Field(min_length=1, max_length=4096, repr=False)


def _session_body(session: Session) -> dict[str, object]:
    return {"csrf_token": session.csrf_token, "expires_at": int(session.expires_at)}


async def start_session(request: web.Request) -> web.Response:
    """POST /admin/v1/session {"token"}: the admin token for a session cookie (and the page's CSRF token)."""
    body = await read_model(request, SignIn)
    if not request.config_dict[ADMIN_TOKEN_KEY].matches(body.token):
        raise Unauthorized("invalid admin token")
    sessions = request.config_dict[SESSIONS]
    cookie, session = await sessions.open()
    response = web.json_response(_session_body(session), status=201)
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=int(sessions.ttl_secs),
        path=COOKIE_PATH,
        httponly=True,
        samesite="Strict",
        secure=_over_tls(request),
    )
    return response


async def session_info(request: web.Request) -> web.Response:
    """GET /admin/v1/session: whether this browser's cookie is a live session and, if so, the page's CSRF
    token and the expiry (after a reload the page asks again). Readable by the cookie's own origin only."""
    cookie = request.cookies.get(COOKIE)
    session = await request.config_dict[SESSIONS].find(cookie) if cookie else None
    if session is None:
        return web.json_response({"signed_in": False})
    return web.json_response({"signed_in": True, **_session_body(session)})


async def end_session(request: web.Request) -> web.Response:
    """DELETE /admin/v1/session: sign out (the cookie is forgotten here and cleared in the browser)."""
    if COOKIE in request.cookies:
        await request.config_dict[SESSIONS].close(request.cookies[COOKIE])
    response = web.json_response({"signed_out": True})
    response.del_cookie(COOKIE, path=COOKIE_PATH)
    return response


def _over_tls(request: web.Request) -> bool:
    """TLS here, or at a trusted proxy in front that says so."""
    if request.secure:
        return True
    trusted = request.config_dict[GUARDS].trusted
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return proto == "https" and trusted.networks != () and (request.remote or "") in trusted
