"""GET /admin/v1/providers/{id}/discover: the provider's own model list (OpenAI-compatible, vLLM, Anthropic),
asked with the provider's key, marking what is registered; upstream failures are a clear 502, and the key
never appears in an answer."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import ADMIN_TOKEN, Hub
from tests.fakes.anthropic_fake import FakeAnthropic
from tests.fakes.openai_fake import FakeOpenAI

KEY = "sk-test-secret"  # what Hub.add_provider registers


class ListServer:
    """A /v1/models upstream that records the headers it got and answers as told."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.status = 200
        self.body: Any = {"data": [{"id": "listed-model"}]}
        self.raw: bytes | None = None
        self.piece_size = 0  # > 0: the body goes out in pieces of this size, each flushed on its own
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def _models(self, request: web.Request) -> web.Response:
        self.headers.append(dict(request.headers))
        self.paths.append(request.path_qs)
        if self.raw is not None:
            return web.Response(body=self.raw, status=self.status, content_type="text/plain")
        if not self.piece_size:
            return web.json_response(self.body, status=self.status)
        body = json.dumps(self.body).encode()
        resp = web.StreamResponse(status=self.status, headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        for start in range(0, len(body), self.piece_size):
            await resp.write(body[start : start + self.piece_size])
            await asyncio.sleep(0.001)  # let each piece reach the client before the next: a real slow network
        await resp.write_eof()
        return resp

    async def __aenter__(self) -> ListServer:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def lister() -> AsyncIterator[ListServer]:
    async with ListServer() as server:
        yield server


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _discover(hub: Hub, provider_id: str, *, expect: int) -> tuple[Any, str]:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    resp = await hub.client.get(f"/admin/v1/providers/{provider_id}/discover", headers=headers)
    text = await resp.text()
    assert resp.status == expect, text
    assert KEY not in text
    return json.loads(text), text


async def test_openai_compatible_discovery_marks_registered_models(hub: Hub) -> None:
    async with FakeOpenAI(models=["gpt-4o", "gpt-4o-mini", "o3"]) as upstream:
        await hub.add_provider("oa", base_url=upstream.base_url)
        await hub.add_model("gpt-4o", "oa")
        await hub.add_model("mini@oa", "oa", upstream_model="gpt-4o-mini")
        await hub.add_model("mini-cheap", "oa", upstream_model="gpt-4o-mini")
        data, _ = await _discover(hub, "oa", expect=200)
    assert data["provider_id"] == "oa" and data["provider_type"] == "openai"
    assert data["total"] == 3 and data["registered"] == 2
    by_id = {m["id"]: m for m in data["models"]}
    assert by_id["gpt-4o"] == {"id": "gpt-4o", "owned_by": "fake", "registered": True, "registered_as": ["gpt-4o"]}
    assert by_id["gpt-4o-mini"]["registered_as"] == ["mini-cheap", "mini@oa"]
    assert by_id["o3"]["registered"] is False and by_id["o3"]["registered_as"] == []
    assert "POST /admin/v1/models" in data["register_with"]
    # discovery registers nothing
    assert {m["id"] for m in (await hub.admin("GET", "/models"))["items"]} == {"gpt-4o", "mini@oa", "mini-cheap"}


async def test_the_provider_key_is_sent_as_bearer(hub: Hub, lister: ListServer) -> None:
    await hub.add_provider("oa", base_url=lister.base_url + "/v1/")
    await _discover(hub, "oa", expect=200)
    assert lister.paths == ["/v1/models"]
    assert lister.headers[0]["Authorization"] == f"Bearer {KEY}"


async def test_anthropic_discovery_uses_its_auth_headers(hub: Hub, lister: ListServer) -> None:
    lister.body = {"data": [{"type": "model", "id": "claude-x", "display_name": "Claude X"}], "has_more": False}
    await hub.add_provider("claude", base_url=lister.base_url, type="anthropic")
    data, _ = await _discover(hub, "claude", expect=200)
    assert data["models"] == [{"id": "claude-x", "display_name": "Claude X", "registered": False, "registered_as": []}]
    sent = lister.headers[0]
    assert sent["x-api-key"] == KEY and sent["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in sent
    assert lister.paths == ["/v1/models?limit=1000"]


async def test_anthropic_fake_discovery(hub: Hub) -> None:
    async with FakeAnthropic(models=["claude-sonnet-4", "claude-haiku-4"], api_key=KEY) as claude:
        await hub.add_provider("claude", base_url=claude.base_url, type="anthropic")
        await hub.add_model("sonnet", "claude", upstream_model="claude-sonnet-4")
        data, _ = await _discover(hub, "claude", expect=200)
    assert [(m["id"], m["registered_as"]) for m in data["models"]] == [
        ("claude-sonnet-4", ["sonnet"]),
        ("claude-haiku-4", []),
    ]
    assert data["provider_type"] == "anthropic"


async def test_vllm_discovery_tries_each_endpoint(hub: Hub) -> None:
    async with FakeOpenAI(models=["meta-llama/Llama-3-8B"]) as vllm:
        vllm.max_model_len["meta-llama/Llama-3-8B"] = 8192
        dead = f"http://127.0.0.1:{_closed_port()}"
        await hub.add_provider("gpu", base_url=f"{dead},{vllm.base_url}", type="vllm")
        data, _ = await _discover(hub, "gpu", expect=200)
    assert data["models"][0]["id"] == "meta-llama/Llama-3-8B" and data["models"][0]["max_model_len"] == 8192


async def test_a_disabled_provider_can_still_be_asked(hub: Hub, lister: ListServer) -> None:
    await hub.add_provider("off", base_url=lister.base_url, enabled=False)
    data, _ = await _discover(hub, "off", expect=200)
    assert [m["id"] for m in data["models"]] == ["listed-model"]


async def test_a_long_list_arriving_in_pieces_is_read_whole(hub: Hub, lister: ListServer) -> None:
    """The body is read to its end, not just what the first read happened to find buffered."""
    lister.body = {"data": [{"id": f"model-{i:05d}", "context_length": 8192} for i in range(2000)]}
    lister.piece_size = 4096
    await hub.add_provider("oa", base_url=lister.base_url)
    data, _ = await _discover(hub, "oa", expect=200)
    assert len(data["models"]) == 2000 and data["models"][-1]["id"] == "model-01999"


async def test_a_bare_list_and_junk_entries(hub: Hub, lister: ListServer) -> None:
    lister.body = [{"id": "a"}, {"id": ""}, {"nope": 1}, "x", {"id": "a"}, {"id": "b", "context_length": 4096}]
    await hub.add_provider("oa", base_url=lister.base_url)
    data, _ = await _discover(hub, "oa", expect=200)
    assert [m["id"] for m in data["models"]] == ["a", "b"] and data["models"][1]["context_length"] == 4096


@pytest.mark.parametrize(
    ("status", "body", "raw", "message", "upstream_status"),
    [
        (500, {"error": f"boom, your key {KEY} is fine"}, None, "returned HTTP 500", 500),
        (401, {"error": {"message": "invalid api key"}}, None, "returned HTTP 401", 401),
        (200, None, b"<html>not json", "not JSON", None),
        (200, {"object": "list"}, None, "no model list", None),
    ],
)
async def test_upstream_errors_are_a_clear_502(
    hub: Hub, lister: ListServer, status: int, body: Any, raw: bytes | None, message: str, upstream_status: int | None
) -> None:
    lister.status, lister.body, lister.raw = status, body, raw
    await hub.add_provider("oa", base_url=lister.base_url)
    data, _ = await _discover(hub, "oa", expect=502)
    assert data["error"]["type"] == "discovery_failed" and message in data["error"]["message"], data
    assert data["error"].get("upstream_status") == upstream_status
    if status == 500:
        assert "[redacted]" in data["error"]["message"]  # the upstream echoed the key: scrubbed


@pytest.mark.parametrize(
    ("status", "message"), [(200, "larger than 4194304 bytes"), (500, "HTTP 500: (an oversized body)")]
)
async def test_an_oversized_answer_is_refused_without_parsing_it(
    hub: Hub, lister: ListServer, status: int, message: str
) -> None:
    lister.status, lister.raw = status, b"[" + b" " * (4 * 1024 * 1024) + b"]"
    await hub.add_provider("oa", base_url=lister.base_url)
    data, _ = await _discover(hub, "oa", expect=502)
    assert data["error"]["type"] == "discovery_failed" and message in data["error"]["message"], data


async def test_an_unreachable_provider_is_a_502_and_unknown_is_a_404(hub: Hub) -> None:
    await hub.add_provider("gone", base_url=f"http://127.0.0.1:{_closed_port()}")
    data, _ = await _discover(hub, "gone", expect=502)
    assert "unreachable" in data["error"]["message"]
    data, _ = await _discover(hub, "nope", expect=404)
    assert "not found" in data["error"]["message"]
