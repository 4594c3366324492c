"""Shared fixtures: a real TokenHub server (aiohttp test server on 127.0.0.1) in front of a real fake provider."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from pipeline.app import create_app
from pipeline.edge.lane import LaneRunner
from pipeline.logging import configure_logging
from pipeline.services import Services
from pipeline.settings import load_settings
from pipeline.web import SERVICES
from tests.fakes.openai_fake import FakeOpenAI
from tests.support.backing import fresh_postgres

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"


class LaneTestServer(TestServer):
    """pytest-aiohttp's test server, listening through the lane as `tokenhub serve` does (pipeline/edge/serve.py)."""

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        return LaneRunner(self.app, **kwargs)


@pytest.fixture
def aiohttp_client(aiohttp_client: Callable[..., Any]) -> Callable[..., Any]:
    """pytest-aiohttp's client factory; an application it is given is served as `tokenhub serve` serves it."""

    async def make(app: Any, **kwargs: Any) -> Any:
        return await aiohttp_client(LaneTestServer(app) if isinstance(app, web.Application) else app, **kwargs)

    return make


@pytest.fixture(scope="session", autouse=True)
def _quiet_logs() -> None:
    configure_logging("error")


class Hub:
    """A running TokenHub and helpers to drive it over HTTP."""

    def __init__(self, client: Any, fake: FakeOpenAI) -> None:
        self.client = client  # aiohttp TestClient bound to the real server
        self.fake = fake

    @property
    def services(self) -> Services:
        return self.client.server.app[SERVICES]

    async def admin(self, method: str, path: str, body: Any = None, *, expect: int | None = None) -> Any:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        resp = await self.client.request(method, f"/admin/v1{path}", json=body, headers=headers)
        data = await resp.json()
        if expect is not None:
            assert resp.status == expect, (resp.status, data)
        return data

    async def add_provider(self, provider_id: str = "fake", *, base_url: str | None = None, **extra: Any) -> None:
        body = {"id": provider_id, "base_url": base_url or self.fake.base_url, "api_key": "sk-test-secret", **extra}
        await self.admin("POST", "/providers", body, expect=201)

    async def add_model(self, model_id: str, provider_id: str = "fake", **fields: Any) -> None:
        body = {"id": model_id, "provider_id": provider_id, **fields}
        await self.admin("POST", "/models", body, expect=201)

    async def new_key(self, **fields: Any) -> str:
        data = await self.admin("POST", "/apikeys", {"name": "test", **fields}, expect=201)
        return data["key"]

    async def chat(
        self,
        key: str | None,
        content: str | list[dict[str, Any]] = "hello",
        *,
        policy: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        **request_fields: Any,
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        messages = content if isinstance(content, list) else [{"role": "user", "content": content}]
        body: dict[str, Any] = {"request": {"messages": messages, **request_fields}}
        if policy is not None:
            body["policy"] = policy
        all_headers = {"Authorization": f"Bearer {key}"} if key else {}
        all_headers.update(headers or {})
        resp = await self.client.post("/v1/chat", json=body, headers=all_headers)
        return resp.status, await resp.json(), resp

    async def chat_ok(self, key: str | None, content: str = "hello", **kwargs: Any) -> dict[str, Any]:
        """A served /v1/chat: 200 with the model that answered and its answer; returns the body."""
        status, body, _ = await self.chat(key, content, **kwargs)
        assert status == 200, body
        assert body["negotiated_model"] and body["response"]["choices"][0]["message"]["content"], body
        return body

    async def chat_refused(
        self, key: str | None, status: int, error_type: str, content: str = "hello", **kwargs: Any
    ) -> dict[str, Any]:
        """A refused /v1/chat: the status, the error type and a request id; returns the error object."""
        got, body, _ = await self.chat(key, content, **kwargs)
        error = body["error"]
        assert (got, error["type"]) == (status, error_type) and error["message"] and error["request_id"], body
        return error

    async def logs(self) -> list[dict[str, Any]]:
        return (await self.admin("GET", "/logs?limit=1000"))["logs"]


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
def config_backend() -> str:
    """Where `make_hub` keeps configuration: "sqlite" (the default) or "postgres" (a fresh database per test).
    A module overrides this fixture to run on PostgreSQL; TOKENHUB_TEST_CONFIG_BACKEND=postgres runs any test there."""
    return os.environ.get("TOKENHUB_TEST_CONFIG_BACKEND", "sqlite")


@pytest.fixture
def config_database(config_backend: str) -> Iterator[str]:
    """TOKENHUB_DATABASE_URL for `make_hub`: '' on SQLite."""
    if config_backend != "postgres":
        yield ""
        return
    with fresh_postgres() as url:
        yield url


@pytest.fixture
def make_hub(
    config_database: str, aiohttp_client: Callable[..., Any], fake: FakeOpenAI, tmp_path: Path
) -> Callable[..., Any]:
    """Start a TokenHub with test settings; keyword arguments override TOKENHUB_* settings. (`config_database`
    comes first so that it is dropped after the servers stopped.)"""

    async def start(**overrides: Any) -> Hub:
        env = {
            "TOKENHUB_DATA_DIR": str(tmp_path / "data"),
            "TOKENHUB_ADMIN_TOKEN": ADMIN_TOKEN,
            "TOKENHUB_PROVIDER_TIMEOUT_SECS": "2",
            "TOKENHUB_RATE_LIMIT_RPS": "1000",
            "TOKENHUB_RATE_LIMIT_BURST": "1000",
            "TOKENHUB_ADMIN_RATE_LIMIT_RPS": "1000",
            "TOKENHUB_ADMIN_RATE_LIMIT_BURST": "1000",
            # Cheap Argon2id for tests only (production defaults: 3 passes, 64 MiB, 4 lanes).
            "TOKENHUB_VAULT_KDF_TIME_COST": "1",
            "TOKENHUB_VAULT_KDF_MEMORY_KIB": "64",
            "TOKENHUB_VAULT_KDF_PARALLELISM": "1",
            "TOKENHUB_VAULT_KDF_ALLOW_WEAK": "true",
            "TOKENHUB_HEALTH_PROBE_INTERVAL_SECS": "0",  # tests drive health themselves; probes would race them
            "TOKENHUB_EXPLORATION_TEMP": "0",  # routing tests expect the top-ranked model; exploration has its own
            "TOKENHUB_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),  # not the developer's ~/.tokenhub one
            "TOKENHUB_HOST_API_KEY_ENABLED": "false",  # tests count keys; tests/test_host_key.py turns it on
            "TOKENHUB_CONTAINER": "false",  # fakes listen on 127.0.0.1: never redirect them to host.docker.internal
            "TOKENHUB_DATABASE_URL": config_database,
        }
        settings = load_settings(env, **overrides)
        client = await aiohttp_client(create_app(settings))
        return Hub(client, fake)

    return start


@pytest.fixture
async def hub(make_hub: Callable[..., Any]) -> Hub:
    return await make_hub()


@pytest.fixture
async def ready_hub(hub: Hub) -> tuple[Hub, str]:
    """A hub with one provider, one model and one API key."""
    await hub.add_provider()
    await hub.add_model("gpt-test", weight=5, input_per_1k=0.001, output_per_1k=0.002, max_context_tokens=8000)
    return hub, await hub.new_key()


@pytest.fixture
def cli(hub: Hub, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """Runs the `tokenhub` command line in-process against ``hub`` (on a thread: its HTTP client blocks);
    returns (exit code, stdout, stderr)."""
    from pipeline.cli import main

    monkeypatch.setenv("TOKENHUB_URL", str(hub.client.make_url("")))
    monkeypatch.setenv("TOKENHUB_ADMIN_TOKEN", ADMIN_TOKEN)

    async def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = await asyncio.to_thread(main, list(argv))
        except SystemExit as exc:  # argparse's usage errors
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run
