"""The real command line: `python -m pipeline serve` as a subprocess, as the README and Dockerfile run it."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import duckdb
import pytest

from tests.fakes.openai_fake import FakeOpenAI, Hang
from tests.support.server import Server

ADMIN = "cli-admin-token-0123456789abcdef"


@pytest.fixture
async def fake_upstream() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


def test_help_explains_the_commands() -> None:
    out = subprocess.run([sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True, check=True)
    assert "serve" in out.stdout and "TOKENHUB_" in out.stdout


def test_bad_setting_stops_startup_naming_the_variable(tmp_path: Path) -> None:
    env = {**os.environ, "TOKENHUB_DATA_DIR": str(tmp_path), "TOKENHUB_RATE_LIMIT_RPS": "0"}
    out = subprocess.run([sys.executable, "-m", "pipeline", "serve"], env=env, capture_output=True, text=True)
    assert out.returncode == 2
    assert "TOKENHUB_RATE_LIMIT_RPS" in out.stderr
    assert not (tmp_path / "tokenhub.sqlite").exists()  # nothing was created


async def test_first_run_generates_the_admin_token_once_and_explains_readiness(tmp_path: Path) -> None:
    server = Server(tmp_path / "data")
    await server.start()
    async with aiohttp.ClientSession() as session, session.get(f"{server.url}/healthz") as resp:
        assert resp.status == 503
        body = await resp.json()
        assert body["reason"] == "no provider is configured" and "/admin/v1/providers" in body["fix"]
    code, out, err = await server.stop()
    assert code == 0
    token_file = tmp_path / "data" / ".admin-token"
    token = token_file.read_text().strip()
    assert len(token) == 64 and token in err
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token not in out  # never in the JSON log
    assert '"event":"starting"' in out and str(tmp_path / "data") in out
    assert (tmp_path / "data" / "tokenhub.sqlite").exists() and (tmp_path / "data" / "tokenhub.duckdb").exists()

    again = Server(tmp_path / "data")
    await again.start()
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {token}"}
        async with session.get(f"{again.url}/admin/v1/providers", headers=headers) as resp:
            assert resp.status == 200  # the persisted token still works
    code, out, err = await again.stop()
    assert token not in err and token not in out  # shown once only


async def test_sigterm_finishes_in_flight_requests_and_drains_records(
    tmp_path: Path, fake_upstream: FakeOpenAI
) -> None:
    server = Server(tmp_path / "data", TOKENHUB_ADMIN_TOKEN=ADMIN)
    await server.start()
    admin = {"Authorization": f"Bearer {ADMIN}"}
    async with aiohttp.ClientSession(base_url=server.url) as session:
        provider = {"id": "fake", "base_url": fake_upstream.base_url, "api_key": "sk-x"}
        assert (await session.post("/admin/v1/providers", json=provider, headers=admin)).status == 201
        model = {"id": "slow", "provider_id": "fake"}
        assert (await session.post("/admin/v1/models", json=model, headers=admin)).status == 201
        key = (await (await session.post("/admin/v1/apikeys", json={"name": "k"}, headers=admin)).json())["key"]
        for _ in range(5):
            resp = await session.post(
                "/v1/chat",
                json={"request": {"messages": [{"role": "user", "content": "x"}]}},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert resp.status == 200
        fake_upstream.script("slow", Hang(1.0))
        body = {"request": {"messages": [{"role": "user", "content": "slow one"}]}}
        in_flight = asyncio.create_task(session.post("/v1/chat", json=body, headers={"Authorization": f"Bearer {key}"}))
        await fake_upstream.wait_until(lambda: fake_upstream.in_flight == 1)  # at the provider: in flight
        server.terminate()
        resp = await in_flight
        assert resp.status == 200
        assert (await resp.json())["negotiated_model"] == "slow"
    code, out, err = await server.stop()
    assert code == 0, (out[-2000:], err[-3000:])
    assert '"records_written":6' in out
    db = duckdb.connect(str(tmp_path / "data" / "tokenhub.duckdb"), read_only=True)
    assert db.execute("SELECT count(*) FROM request_log").fetchone() == (6,)
