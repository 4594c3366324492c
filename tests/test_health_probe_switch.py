"""TOKENHUB_HEALTH_PROBE_DISABLED=true: the proactive prober sends nothing to any provider."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web


class ProbeTarget:
    """An OpenAI-compatible upstream that counts the prober's GETs (the OpenAI adapter probes /v1/models)
    and answers chat calls."""

    def __init__(self) -> None:
        self.probes = 0
        self.chats = 0
        self.probed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> ProbeTarget:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _models(self, request: web.Request) -> web.Response:
        self.probes += 1
        self.probed.set()
        return web.json_response({"object": "list", "data": []})

    async def _chat(self, request: web.Request) -> web.Response:
        self.chats += 1
        body = await request.json()
        completion = {
            "id": "chatcmpl-probe",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
        return web.json_response(completion)


@pytest.fixture
async def target() -> AsyncIterator[ProbeTarget]:
    async with ProbeTarget() as server:
        yield server


async def _start(make_hub: Any, target: ProbeTarget, **overrides: Any) -> Any:
    # An environment provider exists at start-up, so an enabled prober probes it in its first cycle.
    return await make_hub(
        openai_api_key="sk-probe-test", openai_base_url=target.url, health_probe_interval_secs=3600, **overrides
    )


async def test_the_prober_probes_at_start_up_when_enabled(make_hub: Any, target: ProbeTarget) -> None:
    hub = await _start(make_hub, target)
    await asyncio.wait_for(target.probed.wait(), 30)  # a generous bound against a hang, not a timing claim
    assert target.probes >= 1 and hub.services.health.get("openai").state == "healthy"


async def test_health_probe_disabled_sends_no_probe(make_hub: Any, target: ProbeTarget) -> None:
    hub = await _start(make_hub, target, health_probe_disabled=True)
    await hub.add_model("probe-model", "openai", weight=5)
    key = await hub.new_key()
    for _ in range(2):  # full round trips through the same upstream: a started prober would have probed by now
        status, body, _ = await hub.chat(key, model_hint="probe-model")
        assert status == 200 and body["negotiated_model"] == "probe-model", body
    assert target.chats == 2 and target.probes == 0 and not target.probed.is_set()
