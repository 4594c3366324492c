"""A model's TokenHub id and the upstream name it is sent as: the provider sees `upstream_model`, the client
sees the TokenHub id; several TokenHub models may share one upstream name on different providers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest

from pipeline.types import AliasInfo, AliasVariant, ModelInfo, ProviderInfo
from store.config_store import ConfigStore
from store.secret_box import SecretBox
from tests.conftest import Hub
from tests.fakes.openai_fake import Fail, FakeOpenAI, Reply

MESSAGES: Any = [{"role": "user", "content": "hello"}]


@pytest.fixture
async def fake2() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


def _client(hub: Hub, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(hub.client.make_url("/v1")), api_key=key, max_retries=0)


async def test_the_provider_gets_the_upstream_name_the_client_the_tokenhub_id(hub: Hub) -> None:
    await hub.add_provider()
    await hub.add_model("fast", weight=5, upstream_model="gpt-4o-mini-2024-07-18")
    key = await hub.new_key()

    status, body, resp = await hub.chat(key)
    assert status == 200, body
    assert hub.fake.requests[-1]["model"] == "gpt-4o-mini-2024-07-18"
    assert body["negotiated_model"] == "fast" and resp.headers["X-Negotiated-Model"] == "fast"

    async with _client(hub, key) as client:
        completion = await client.chat.completions.create(model="fast", messages=MESSAGES)
        assert completion.model == "fast"
        stream = await client.chat.completions.create(model="fast", messages=MESSAGES, stream=True)
        chunks = [chunk async for chunk in stream]
    assert {chunk.model for chunk in chunks} == {"fast"}
    assert [r["model"] for r in hub.fake.requests] == ["gpt-4o-mini-2024-07-18"] * 3
    assert hub.fake.requests[-1]["json"]["stream"] is True


async def test_two_tokenhub_models_share_one_upstream_name_on_two_providers(hub: Hub, fake2: FakeOpenAI) -> None:
    await hub.add_provider("azure")
    await hub.add_provider("openai", base_url=fake2.base_url)
    await hub.add_model("gpt-4o@azure", "azure", weight=9, upstream_model="gpt-4o")
    await hub.add_model("gpt-4o@openai", "openai", weight=5, upstream_model="gpt-4o")
    key = await hub.new_key()

    status, body, _ = await hub.chat(key, model_hint="gpt-4o@openai")
    assert status == 200 and body["negotiated_model"] == "gpt-4o@openai"
    assert [r["model"] for r in fake2.requests] == ["gpt-4o"] and hub.fake.requests == []

    # the azure copy fails (transient, after the helper's retries): the same upstream name on the other provider
    hub.fake.script("gpt-4o", Fail(500), Fail(500), Fail(500))
    status, body, resp = await hub.chat(key, model_hint="gpt-4o@azure")
    assert status == 200 and body["negotiated_model"] == "gpt-4o@openai"
    assert resp.headers["X-TokenHub-Attempts"] == "gpt-4o@azure=transient, gpt-4o@openai=ok"
    assert [r["model"] for r in hub.fake.requests] == ["gpt-4o"] * 3
    assert [r["model"] for r in fake2.requests] == ["gpt-4o", "gpt-4o"]

    models = {m["id"]: m for m in (await hub.admin("GET", "/models"))["items"]}
    assert models["gpt-4o@azure"]["upstream_model"] == models["gpt-4o@openai"]["upstream_model"] == "gpt-4o"


async def test_upstream_model_defaults_to_the_id_and_can_be_patched(ready_hub: tuple[Hub, str]) -> None:
    hub, key = ready_hub
    model = (await hub.admin("GET", "/models"))["items"][0]
    assert model["id"] == "gpt-test" and model["upstream_model"] == "gpt-test" and model["fallbacks"] == []

    patched = await hub.admin("PATCH", "/models/gpt-test", {"upstream_model": "gpt-test-0613"}, expect=200)
    assert patched["model"]["upstream_model"] == "gpt-test-0613" and patched["model"]["weight"] == 5
    await hub.chat_ok(key)
    assert hub.fake.requests[-1]["model"] == "gpt-test-0613"

    await hub.admin("PATCH", "/models/gpt-test", {"upstream_model": ""}, expect=200)  # "" = the id again
    await hub.chat_ok(key)
    assert hub.fake.requests[-1]["model"] == "gpt-test"


@pytest.mark.parametrize("value", ["has space", "tab\there", "x" * 257, 7])
async def test_invalid_upstream_names_are_refused(ready_hub: tuple[Hub, str], value: Any) -> None:
    hub, _ = ready_hub
    data = await hub.admin("POST", "/models", {"id": "m2", "provider_id": "fake", "upstream_model": value}, expect=400)
    assert data["error"]["field"] == "upstream_model"
    await hub.admin("PATCH", "/models/gpt-test", {"upstream_model": value}, expect=400)


async def test_embeddings_are_sent_as_the_upstream_name(hub: Hub) -> None:
    await hub.add_provider()
    await hub.add_model("emb", kind="embedding", upstream_model="text-embedding-3-small")
    key = await hub.new_key(scopes=["embeddings"])
    resp = await hub.client.post(
        "/v1/embeddings", json={"model": "emb", "input": "hi"}, headers={"Authorization": f"Bearer {key}"}
    )
    body = await resp.json()
    assert resp.status == 200, body
    assert body["model"] == "emb" and resp.headers["X-Negotiated-Model"] == "emb"
    sent = hub.fake.requests[-1]
    assert sent["path"] == "/v1/embeddings" and sent["model"] == "text-embedding-3-small"


async def test_the_native_envelope_names_the_tokenhub_model(hub: Hub) -> None:
    await hub.add_provider()
    await hub.add_model("house-model", upstream_model="vendor/model-v3")
    key = await hub.new_key()
    hub.fake.script("vendor/model-v3", Reply(content="ok"))
    status, body, _ = await hub.chat(key, model_hint="house-model")
    assert status == 200 and body["negotiated_model"] == "house-model"
    assert body["response"]["choices"][0]["message"]["content"] == "ok"
    assert "routed-hint-exact" in body["routing_reason"]


def test_the_store_keeps_upstream_names_fallbacks_and_aliases(tmp_path: Path) -> None:
    path = tmp_path / "cfg.sqlite"
    store = ConfigStore(path, SecretBox(b"k" * 32))
    store.open()
    store.upsert_provider(ProviderInfo("p", "openai", "https://x.test"), api_key=None)
    store.upsert_model(ModelInfo("a", "p", upstream_model="up-a", fallbacks=("b", "c")))
    store.upsert_model(ModelInfo("b", "p"))
    alias = AliasInfo("smart", (AliasVariant("a", 3), AliasVariant("b", 1)), True, "round_robin", ("b",))
    store.upsert_alias(alias)
    # a row written by hand that does not parse is skipped, not fatal
    with store.db as db:
        db.execute(
            "INSERT INTO aliases (name, variants, enabled, sticky_by, created_at, updated_at)"
            " VALUES ('broken', 'not json', 1, '', 0, 0)"
        )
    store.close()

    reopened = ConfigStore(path, SecretBox(b"k" * 32))
    try:
        assert reopened.open() == []
        snapshot = reopened.load_snapshot()
        assert snapshot.models["a"].sent_as == "up-a" and snapshot.models["a"].fallbacks == ("b", "c")
        assert snapshot.models["b"].sent_as == "b" and snapshot.models["b"].fallbacks == ()
        assert snapshot.aliases == {"smart": alias}
        assert reopened.delete_alias("smart") and not reopened.delete_alias("smart")
    finally:
        reopened.close()
