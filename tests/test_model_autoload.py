"""autoload_models over HTTP: a provider of any type with it set gets its listed models registered (weight 5,
enabled, persisted, marked autoloaded) when written and on the periodic job (at start-up too); models it
stops listing are removed only if autoload made them and nobody edited them since; a provider that cannot be
listed keeps its models."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Hub
from tests.fakes.anthropic_fake import FakeAnthropic
from tests.fakes.openai_fake import FakeOpenAI


def _list(fake: FakeOpenAI, *models: str) -> None:
    """What the fake's GET /v1/models answers from now on."""
    fake.reset()
    for model in models:
        fake.script(model)


async def _models(hub: Hub) -> dict[str, dict[str, Any]]:
    return {m["id"]: m for m in (await hub.admin("GET", "/models?limit=1000"))["items"]}


@pytest.mark.parametrize("provider_type", ["openai", "vllm"])
async def test_a_provider_with_autoload_registers_what_it_lists(hub: Hub, provider_type: str) -> None:
    _list(hub.fake, "gpt-a", "gpt-b", "whisper-1", "tts-1", "text-embedding-3-small", "bad id!")
    hub.fake.max_model_len["gpt-a"] = 32000
    await hub.add_provider("fake", type=provider_type)  # gpt-b: the admin's own, registered first
    await hub.add_model("gpt-b", weight=2)
    body = {"id": "fake", "type": provider_type, "base_url": hub.fake.base_url, "autoload_models": True}
    created = await hub.admin("POST", "/providers", body, expect=201)
    assert created["provider"]["autoload_models"] is True
    assert created["autoload"] == {"added": ["gpt-a", "text-embedding-3-small"], "removed": [], "skipped": ["gpt-b"]}
    models = await _models(hub)
    assert set(models) == {"gpt-a", "gpt-b", "text-embedding-3-small"}
    a = models["gpt-a"]
    assert (a["weight"], a["enabled"], a["autoloaded"], a["max_context_tokens"], a["kind"]) == (
        5,
        True,
        True,
        32000,
        "chat",
    )
    assert models["text-embedding-3-small"]["kind"] == "embedding"
    assert (models["gpt-b"]["weight"], models["gpt-b"]["autoloaded"]) == (2, False)
    key = await hub.new_key()
    assert (await hub.chat_ok(key, model_hint="gpt-a"))["negotiated_model"] == "gpt-a"


async def test_stale_models_are_removed_only_when_autoload_made_them(hub: Hub) -> None:
    _list(hub.fake, "gpt-a", "gpt-c", "gpt-d")
    await hub.add_provider("fake", autoload_models=True)
    await hub.add_model("mine", weight=3)  # the admin's: never removed
    await hub.admin("PATCH", "/models/gpt-c", {"weight": 7}, expect=200)  # edited: now the admin's
    assert (await _models(hub))["gpt-c"]["autoloaded"] is False
    await hub.admin("POST", "/aliases", {"name": "smart", "variants": [{"model_id": "mine"}]}, expect=201)

    _list(hub.fake, "gpt-d", "smart")  # gpt-a and gpt-c gone upstream; an alias name is never registered
    await hub.services.autoloader.run_once()  # the periodic job's round
    models = await _models(hub)
    assert set(models) == {"gpt-c", "gpt-d", "mine"}
    assert models["gpt-d"]["autoloaded"] is True and models["gpt-c"]["weight"] == 7
    key = await hub.new_key()
    status, body, _ = await hub.chat(key, model_hint="gpt-a")
    assert status == 200 and body["negotiated_model"] != "gpt-a"  # gone from the routing table too


async def test_a_provider_that_cannot_be_listed_keeps_its_models(hub: Hub) -> None:
    _list(hub.fake, "gpt-a")
    await hub.add_provider("fake", autoload_models=True)
    patched = await hub.admin("PATCH", "/providers/fake", {"base_url": "http://127.0.0.1:9"}, expect=200)
    assert "unreachable" in patched["autoload"]["error"] and "sk-test-secret" not in json.dumps(patched)
    await hub.services.autoloader.run_once()  # logged, nothing removed
    assert set(await _models(hub)) == {"gpt-a"}


async def test_autoload_is_off_unless_asked_and_can_be_turned_on_later(hub: Hub) -> None:
    _list(hub.fake, "gpt-a")
    created = await hub.admin("POST", "/providers", {"id": "fake", "base_url": hub.fake.base_url}, expect=201)
    assert "autoload" not in created and created["provider"]["autoload_models"] is False
    await hub.services.autoloader.run_once()
    assert await _models(hub) == {}
    patched = await hub.admin("PATCH", "/providers/fake", {"autoload_models": True}, expect=200)
    assert patched["autoload"]["added"] == ["gpt-a"]
    off = await hub.admin("PATCH", "/providers/fake", {"autoload_models": False, "enabled": False}, expect=200)
    assert "autoload" not in off and off["provider"]["autoload_models"] is False
    error = (await hub.admin("PATCH", "/providers/fake", {"autoload_models": "yes"}, expect=400))["error"]
    assert "autoload_models" in error["message"]


async def test_anthropic_lists_its_models_too(hub: Hub) -> None:
    async with FakeAnthropic(["claude-x", "claude-y"], api_key="sk-test-secret") as claude:
        await hub.add_provider("claude", base_url=claude.base_url, type="anthropic", autoload_models=True)
        models = await _models(hub)
        assert {m: models[m]["provider_id"] for m in models} == {"claude-x": "claude", "claude-y": "claude"}
        key = await hub.new_key()
        status, body, _ = await hub.chat(key, model_hint="claude-y")
        assert (status, body["negotiated_model"], claude.calls("claude-y")) == (200, "claude-y", 1)


async def test_the_job_runs_at_start_for_a_credentials_file_provider(
    make_hub: Callable[..., Any], fake: FakeOpenAI, tmp_path: Path
) -> None:
    _list(fake, "boot-a", "boot-b")
    credentials = tmp_path / "credentials"
    provider = {"id": "boot", "type": "openai", "base_url": fake.base_url, "api_key": "sk-x", "autoload_models": True}
    model = {"id": "boot-b", "provider_id": "boot", "weight": 8, "tool_name_map": {"shell": "bash"}}
    credentials.write_text(json.dumps({"providers": [provider], "models": [model]}))
    credentials.chmod(0o600)
    hub = await make_hub(credentials_file=str(credentials), model_autoload_interval_secs="60")
    assert "model-autoload" in [job.name for job in hub.services.jobs]
    for _ in range(200):  # the first round runs in the job's task, right after start-up
        if "boot-a" in (models := await _models(hub)):
            break
        await asyncio.sleep(0.02)
    assert models["boot-a"]["autoloaded"] is True
    assert models["boot-b"]["weight"] == 8 and models["boot-b"]["tool_name_map"] == {"shell": "bash"}  # the file's


async def test_an_interval_of_zero_turns_the_job_off(make_hub: Callable[..., Any]) -> None:
    hub = await make_hub(model_autoload_interval_secs="0")
    job = next(j for j in hub.services.jobs if j.name == "model-autoload")
    assert job.interval_secs == 0 and not job.running
