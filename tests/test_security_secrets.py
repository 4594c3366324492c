"""A real server run (subprocess, debug logging) that uses provider keys, API keys, the vault password and
the admin token, then searches everything it produced for those secrets: the log, error bodies, admin
API answers, /metrics, the SSE events, the DuckDB request log, the audit trail and the SQLite files."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import pytest

from tests.fakes.openai_fake import Fail, FakeOpenAI
from tests.test_cli import Server

ADMIN = "secrets-admin-token-0123456789abcdef"
ENV_SECRET = "sk-env-4a6e2f9c1b7d3e5f"
STORED_SECRET = "sk-stored-8d2c4b6a0e1f3957"
STORED_SECRET_2 = "sk-stored-two-55aa77cc99ee"
VAULT_PASSWORD = "vault-pass-3c5e7a9b1d"
NEW_VAULT_PASSWORD = "vault-pass-new-2b4d6f8a0c"


@pytest.fixture
async def fake_upstream() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


class Run:
    """Drives the server and keeps every body it answered."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url
        self.bodies: list[str] = []

    async def call(
        self, method: str, path: str, body: Any = None, *, token: str = ADMIN, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        all_headers = {"Authorization": f"Bearer {token}", **(headers or {})}
        async with self.session.request(method, self.url + path, json=body, headers=all_headers) as resp:
            text = await resp.text()
            self.bodies.append(f"{resp.status} {dict(resp.headers)} {text}")
            try:
                return resp.status, await resp.json(content_type=None)
            except ValueError:
                return resp.status, text


async def _collect_events(
    session: aiohttp.ClientSession, url: str, sink: list[bytes], connected: asyncio.Event, done: asyncio.Event
) -> None:
    """Every SSE byte into ``sink``; ``connected`` once the stream is open, ``done`` once the last admin
    action of the test (the lock after the rotation) has arrived."""
    async with session.get(f"{url}/admin/v1/events", headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
        async for chunk in resp.content.iter_any():
            sink.append(chunk)
            connected.set()
            seen = b"".join(sink)
            if seen.rfind(b"lock_vault") > seen.find(b"rotate_vault") >= 0:
                done.set()


async def test_no_secret_reaches_logs_bodies_events_metrics_or_stores(
    tmp_path: Path, fake_upstream: FakeOpenAI
) -> None:
    data = tmp_path / "data"
    server = Server(
        data,
        TOKENHUB_ADMIN_TOKEN=ADMIN,
        TOKENHUB_LOG_LEVEL="debug",
        TOKENHUB_OPENAI_API_KEY=ENV_SECRET,
        TOKENHUB_OPENAI_BASE_URL=fake_upstream.base_url,
        TOKENHUB_VAULT_KDF_TIME_COST="1",
        TOKENHUB_VAULT_KDF_MEMORY_KIB="64",
        TOKENHUB_VAULT_KDF_PARALLELISM="1",
        TOKENHUB_VAULT_KDF_ALLOW_WEAK="true",
        TOKENHUB_VAULT_UNLOCK_ATTEMPTS_PER_MIN="100",
    )
    await server.start()
    events: list[bytes] = []
    secrets: list[str] = [ADMIN, ENV_SECRET, STORED_SECRET, STORED_SECRET_2, VAULT_PASSWORD, NEW_VAULT_PASSWORD]
    try:
        async with aiohttp.ClientSession() as session:
            connected, done = asyncio.Event(), asyncio.Event()
            listener = asyncio.create_task(_collect_events(session, server.url, events, connected, done))
            await connected.wait()  # subscribed before the first change: no event is missed
            run = Run(session, server.url)
            base = fake_upstream.base_url
            assert (
                await run.call(
                    "POST", "/admin/v1/providers", {"id": "stored", "base_url": base, "api_key": STORED_SECRET}
                )
            )[0] == 201
            assert (await run.call("POST", "/admin/v1/vault/unlock", {"password": VAULT_PASSWORD}))[0] == 200
            assert (await run.call("POST", "/admin/v1/vault/lock"))[0] == 200
            assert (await run.call("POST", "/admin/v1/vault/unlock", {"password": "wrong password"}))[0] == 401
            assert (await run.call("POST", "/admin/v1/vault/unlock", {"admin_password": VAULT_PASSWORD}))[0] == 200
            assert (await run.call("PATCH", "/admin/v1/providers/stored", {"api_key": STORED_SECRET_2}))[0] == 200
            await run.call("POST", "/admin/v1/models", {"id": "m-env", "provider_id": "openai", "weight": 3})
            await run.call(
                "POST",
                "/admin/v1/models",
                {"id": "m-stored", "provider_id": "stored", "weight": 9, "input_per_1k": 0.001},
            )
            _, created = await run.call("POST", "/admin/v1/apikeys", {"name": "app", "monthly_budget_usd": 5})
            first_key = created["key"]
            _, rotated = await run.call("POST", f"/admin/v1/apikeys/{created['id']}/rotate")
            key = rotated["key"]
            del run.bodies[-2:]  # the two answers that show a key, once each, by design
            secrets += [first_key, first_key[9:], key, key[9:]]

            chat = {"request": {"messages": [{"role": "user", "content": "hello"}]}}
            assert (await run.call("POST", "/v1/chat", chat, token=key))[0] == 200
            hinted = {"request": {**chat["request"], "model_hint": "m-env"}}
            assert (await run.call("POST", "/v1/chat", hinted, token=key))[0] == 200
            assert (await run.call("POST", "/v1/chat", chat, token=first_key))[0] == 401  # rotated away
            openai_body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "stream": True}
            assert (await run.call("POST", "/v1/chat/completions", openai_body, token=key))[0] == 200
            assert (await run.call("POST", "/v1/chat", chat, token="", headers={"x-api-key": key}))[0] == 200
            fake_upstream.script("m-stored", *[Fail(500)] * 3)
            fake_upstream.script("m-env", *[Fail(401, body='{"error": {"message": "bad key"}}')] * 3)
            assert (await run.call("POST", "/v1/chat", chat, token=key))[0] >= 400
            assert (await run.call("GET", "/admin/v1/providers", token=key))[0] == 401  # an API key is no admin token
            assert (await run.call("POST", "/v1/chat", {"request": {"messages": "x"}}, token=key))[0] == 400
            rotate = {"old_password": VAULT_PASSWORD, "new_password": NEW_VAULT_PASSWORD}
            assert (await run.call("POST", "/admin/v1/vault/rotate", rotate))[0] == 200
            assert (await run.call("POST", "/admin/v1/vault/lock"))[0] == 200
            for path in (
                "/admin/v1/providers",
                "/admin/v1/apikeys",
                "/admin/v1/audit?limit=1000",
                "/admin/v1/logs?limit=1000",
                "/admin/v1/stats",
                "/admin/v1/vault",
                "/admin/v1/info",
                "/admin/v1/health",
                "/admin/v1/models",
                "/metrics",
                "/healthz",
                "/v1/models",
            ):
                assert (await run.call("GET", path))[0] in (200, 503), path
            audit = (await run.call("GET", "/admin/v1/audit?limit=1000"))[1]["logs"]
            assert {"unlock_vault", "rotate_vault", "create_api_key", "patch_provider"} <= {e["action"] for e in audit}
            await asyncio.wait_for(done.wait(), 30)  # a bound against a hang, not a timing claim
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
    finally:
        code, out, err = await server.stop()
    assert code == 0
    assert '"event":"request"' in out and "vault_unlocked" in out  # the log really was captured, at debug

    duck = duckdb.connect(str(data / "tokenhub.duckdb"), read_only=True)
    try:
        request_log = str(duck.execute("SELECT * FROM request_log").fetchall())
        assert "m-stored" in request_log
    finally:
        duck.close()
    sqlite_raw = b"".join(p.read_bytes() for p in data.glob("tokenhub.sqlite*"))
    audit_rows = str(sqlite3.connect(data / "tokenhub.sqlite").execute("SELECT * FROM audit_logs").fetchall())
    assert "[REDACTED]" in audit_rows  # the provider key and passwords were there, and were replaced
    places = {
        "log (stdout)": out,
        "stderr": err,
        "responses": "\n".join(run.bodies),
        "events": b"".join(events).decode(errors="replace"),
        "duckdb request log": request_log,
        "audit trail": audit_rows,
        "sqlite files": sqlite_raw.decode("latin-1"),
    }
    assert len(places["events"]) > 100
    for secret in secrets:
        for place, text in places.items():
            assert secret not in text, f"a secret ({secret[:6]}...) leaked into the {place}"
