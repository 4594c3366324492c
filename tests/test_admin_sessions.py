"""The web UI's sign-in: the admin token for a session cookie that authenticates every admin route (the event
stream included), with a CSRF header required for changes; missing, expired, forged and signed-out cookies
are refused everywhere; Bearer clients are unchanged."""

from __future__ import annotations

import asyncio
from typing import Any

from admin_ui.sessions import COOKIE, SESSIONS, AdminSessions
from tests.conftest import ADMIN_TOKEN, Hub
from tests.test_security import _subapps, admin_routes

_SAFE = {"GET", "HEAD", "OPTIONS"}


async def _sign_in(hub: Hub) -> tuple[str, str]:
    """(cookie value, CSRF token). The test client keeps cookies in a jar; the value is read back from it."""
    resp = await hub.client.post("/admin/v1/session", json={"token": ADMIN_TOKEN})
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    morsel = resp.cookies[COOKIE]
    assert morsel["httponly"] and morsel["samesite"] == "Strict" and morsel["path"] == "/admin"
    assert not morsel["secure"]  # plain HTTP here; Secure over TLS (test below)
    assert int(morsel["max-age"]) == 8 * 3600
    hub.client.session.cookie_jar.clear()  # each request below sends the cookie it means to
    return morsel.value, body["csrf_token"]


def _sessions(hub: Hub) -> AdminSessions:
    [admin] = _subapps(hub.client.server.app)
    [api] = _subapps(admin)
    return api[SESSIONS]


async def _send(hub: Hub, method: str, path: str, cookie: str | None, csrf: str | None = None) -> Any:
    headers = {"Cookie": f"{COOKIE}={cookie}"} if cookie is not None else {}
    if csrf is not None:
        headers["X-CSRF-Token"] = csrf
    return await hub.client.request(method, path, headers=headers, json={})


async def test_the_cookie_authenticates_like_the_bearer_token(hub: Hub) -> None:
    cookie, csrf = await _sign_in(hub)
    resp = await _send(hub, "GET", "/admin/v1/providers", cookie)
    assert resp.status == 200 and (await resp.json())["items"] == []
    body = {"id": "p1", "base_url": hub.fake.base_url, "api_key": "sk-test-secret"}
    headers = {"Cookie": f"{COOKIE}={cookie}", "X-CSRF-Token": csrf}
    resp = await hub.client.post("/admin/v1/providers", json=body, headers=headers)
    assert resp.status == 201, await resp.text()
    info = await (await _send(hub, "GET", "/admin/v1/session", cookie)).json()
    assert info["signed_in"] is True and info["csrf_token"] == csrf
    # Bearer clients are unchanged, and sign-in is in the audit trail without the token.
    audit = await hub.admin("GET", "/audit")
    sign_in = next(row for row in audit["logs"] if row["action"] == "start_session")
    assert sign_in["status"] == 201 and ADMIN_TOKEN not in str(audit)


async def test_a_change_with_the_cookie_needs_the_csrf_header(hub: Hub) -> None:
    cookie, csrf = await _sign_in(hub)
    body = {"id": "p1", "base_url": hub.fake.base_url, "api_key": "sk-test-secret"}
    for headers in ({}, {"X-CSRF-Token": ""}, {"X-CSRF-Token": csrf + "x"}, {"X-CSRF-Token": cookie}):
        resp = await hub.client.post(
            "/admin/v1/providers", json=body, headers={"Cookie": f"{COOKIE}={cookie}", **headers}
        )
        assert resp.status == 403, headers
        error = (await resp.json())["error"]
        assert error["type"] == "forbidden" and "X-CSRF-Token" in error["message"] and error["request_id"]
    assert (await hub.admin("GET", "/providers"))["items"] == []  # nothing changed


async def test_every_route_refuses_a_missing_forged_expired_or_signed_out_cookie(hub: Hub) -> None:
    cookie, csrf = await _sign_in(hub)
    forged = cookie[:-4] + "AAAA"
    routes = admin_routes(hub)
    assert ("GET", "/admin/v1/events") in routes and ("DELETE", "/admin/v1/session") in routes
    for method, path in routes:
        for value in (None, "", forged, "x" * 5000):
            resp = await _send(hub, method, path, value, csrf)
            assert resp.status == 401, (method, path, value)

    sessions = _sessions(hub)
    now = sessions.clock()
    sessions.clock = lambda: now + 8 * 3600 + 1  # the session's life is over
    for method, path in routes:
        resp = await _send(hub, method, path, cookie, csrf)
        assert resp.status == 401, (method, path)
        if method != "HEAD":
            assert "sign in again" in (await resp.json())["error"]["message"]
    assert len(sessions) == 0  # an expired session is forgotten

    sessions.clock = lambda: now
    cookie, csrf = await _sign_in(hub)
    resp = await _send(hub, "DELETE", "/admin/v1/session", cookie, csrf)
    assert resp.status == 200 and resp.cookies[COOKIE].value == ""  # cleared in the browser
    for method, path in routes:
        assert (await _send(hub, method, path, cookie, csrf)).status == 401, (method, path)


async def test_sign_in_refuses_a_wrong_or_missing_token(hub: Hub) -> None:
    for body in ({"token": "wrong-token-0123456789abcdef0123456789"}, {"token": ""}, {}, {"token": 5}):
        resp = await hub.client.post("/admin/v1/session", json=body)
        assert resp.status in (400, 401), body
        assert COOKIE not in resp.cookies
    assert len(_sessions(hub)) == 0


async def test_the_event_stream_accepts_the_cookie(hub: Hub) -> None:
    cookie, _ = await _sign_in(hub)
    resp = await hub.client.get("/admin/v1/events", headers={"Cookie": f"{COOKIE}={cookie}"})
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
    assert first.startswith(b"event: connected")
    resp.close()


async def test_the_cookie_is_secure_behind_a_trusted_tls_proxy(make_hub: Any) -> None:
    hub = await make_hub(trusted_proxies="127.0.0.1")
    resp = await hub.client.post(
        "/admin/v1/session", json={"token": ADMIN_TOKEN}, headers={"X-Forwarded-Proto": "https"}
    )
    assert resp.status == 201 and resp.cookies[COOKIE]["secure"]


async def test_the_tls_header_of_an_untrusted_peer_is_not_believed(hub: Hub) -> None:
    resp = await hub.client.post(
        "/admin/v1/session", json={"token": ADMIN_TOKEN}, headers={"X-Forwarded-Proto": "https"}
    )
    assert resp.status == 201 and not resp.cookies[COOKIE]["secure"]


async def test_sessions_are_bounded_and_expire() -> None:
    now = [1000.0]
    sessions = AdminSessions(60, max_sessions=3, clock=lambda: now[0])
    cookies = [(await sessions.open())[0] for _ in range(5)]
    assert len(sessions) == 3
    assert await sessions.find(cookies[0]) is None and await sessions.find(cookies[4]) is not None  # oldest dropped
    now[0] += 61
    assert await sessions.find(cookies[4]) is None and len(sessions) == 2
