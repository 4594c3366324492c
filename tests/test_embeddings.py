"""POST /v1/embeddings through the real server, with the official openai SDK (sync and async) as the client;
model kinds keep chat and embeddings apart."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from tests.conftest import Hub
from tests.fakes.openai_fake import ContextOverflow, Fail, FakeOpenAI

EMB = "text-embedding-small"


async def _setup(hub: Hub, *, scopes: tuple[str, ...] = ("chat", "embeddings")) -> str:
    await hub.add_provider()
    await hub.add_model("gpt-test", weight=5, input_per_1k=0.001, output_per_1k=0.002, max_context_tokens=8000)
    await hub.add_model(EMB, weight=9, kind="embedding", input_per_1k=0.00002, max_context_tokens=8191)
    return await hub.new_key(scopes=list(scopes))


def _async_client(hub: Hub, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(hub.client.make_url("/v1")), api_key=key, max_retries=0)


def _sync_client(hub: Hub, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=str(hub.client.make_url("/v1")), api_key=key, max_retries=0)


async def _post(hub: Hub, key: str, body: Any) -> tuple[int, Any]:
    resp = await hub.client.post("/v1/embeddings", json=body, headers={"Authorization": f"Bearer {key}"})
    return resp.status, await resp.json()


def _paths(fake: FakeOpenAI) -> list[tuple[str, str]]:
    return [(r["path"], r["model"]) for r in fake.requests]


# --- happy paths ---------------------------------------------------------------------------------------


async def test_async_sdk_embeds_a_batch(hub: Hub) -> None:
    key = await _setup(hub)
    async with _async_client(hub, key) as client:
        raw = await client.embeddings.with_raw_response.create(model=EMB, input=["alpha", "beta"])
        result = raw.parse()
    assert result.model == EMB and [d.index for d in result.data] == [0, 1]
    # the SDK asks for base64 by default and decodes it: the floats arrive exactly (multiples of 1/256)
    assert result.data[0].embedding == FakeOpenAI.embedding_of(EMB, "alpha")
    assert result.data[1].embedding == FakeOpenAI.embedding_of(EMB, "beta")
    assert result.usage.prompt_tokens == 2
    assert raw.headers["x-negotiated-model"] == EMB and raw.headers["x-provider"] == "fake"
    assert raw.headers["x-request-id"]
    sent = hub.fake.requests[-1]
    assert sent["path"] == "/v1/embeddings" and sent["json"]["encoding_format"] == "base64"
    assert sent["headers"]["Authorization"] == "Bearer sk-test-secret"


async def test_sync_sdk_with_auto_model_floats_and_dimensions(hub: Hub) -> None:
    key = await _setup(hub)

    def call() -> Any:
        with _sync_client(hub, key) as client:
            return client.embeddings.create(
                model="auto", input="hello world", encoding_format="float", dimensions=4, user="u-7"
            )

    result = await asyncio.to_thread(call)
    assert result.model == EMB  # TokenHub chose the one embedding model, never the chat model
    assert result.data[0].embedding == FakeOpenAI.embedding_of(EMB, "hello world", 4)
    sent = hub.fake.requests[-1]["json"]
    assert sent == {"input": "hello world", "encoding_format": "float", "dimensions": 4, "user": "u-7", "model": EMB}


@pytest.mark.parametrize(
    "value",
    [[1, 2, 3], [[1, 2], [3, 4, 5]], ["a", "b", "c"]],
    ids=["token-ids", "token-id-lists", "strings"],
)
async def test_every_input_shape_is_forwarded_as_given(hub: Hub, value: Any) -> None:
    key = await _setup(hub)
    status, body = await _post(hub, key, {"model": EMB, "input": value})
    assert status == 200 and body["object"] == "list"
    assert hub.fake.requests[-1]["json"]["input"] == value


async def test_request_is_recorded_with_usage_and_cost(hub: Hub) -> None:
    key = await _setup(hub)
    status, _ = await _post(hub, key, {"model": EMB, "input": "x" * 400, "tokenhub": {"mode": "cheap"}})
    assert status == 200
    await hub.services.records.flush()
    record = (await hub.logs())[0]
    assert record["endpoint"] == "embeddings" and record["model_id"] == EMB and record["status"] == 200
    assert record["mode"] == "cheap" and "tokenhub" not in hub.fake.requests[-1]["json"]
    assert record["input_tokens"] == 100 and record["output_tokens"] == 0
    assert record["cost_usd"] == pytest.approx(100 / 1000 * 0.00002)


async def test_the_context_window_applies_per_input_not_to_the_batch(hub: Hub) -> None:
    await hub.add_provider()
    await hub.add_model("bge-small", kind="embedding", max_context_tokens=512)
    key = await hub.new_key(scopes=["embeddings"])
    status, _ = await _post(hub, key, {"model": "auto", "input": ["y" * 1600] * 10})  # 10 x ~400 tokens
    assert status == 200
    status, body = await _post(hub, key, {"model": "auto", "input": ["y" * 2400]})  # ~600 tokens > 512
    assert status == 422 and "context_overflow" in body["error"]["message"]


# --- errors in OpenAI's shape, as the SDK's own exceptions ------------------------------------------------


async def test_unknown_model_is_not_found(hub: Hub) -> None:
    key = await _setup(hub)
    async with _async_client(hub, key) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.embeddings.create(model="no-such-model", input="x")
    assert "no-such-model" in caught.value.message
    assert hub.fake.requests == []


async def test_a_named_model_is_forwarded_to_its_provider_whatever_its_kind(hub: Hub) -> None:
    # The caller chose the model: as in the original, it goes to that model's provider; kinds only keep
    # TokenHub's own choice (model "auto") within embedding models.
    key = await _setup(hub)
    async with _async_client(hub, key) as client:
        result = await client.embeddings.create(model="gpt-test", input="x")
    assert result.model == "gpt-test"
    assert result.data[0].embedding == FakeOpenAI.embedding_of("gpt-test", "x")
    assert _paths(hub.fake) == [("/v1/embeddings", "gpt-test")]


async def test_a_named_model_whose_provider_cannot_embed_is_a_clear_400(hub: Hub) -> None:
    key = await _setup(hub)
    body = {"id": "claude", "type": "anthropic", "base_url": hub.fake.base_url, "api_key": "sk-ant-x"}
    await hub.admin("POST", "/providers", body, expect=201)
    await hub.add_model("claude-chat", "claude")
    status, answer = await _post(hub, key, {"model": "claude-chat", "input": "x"})
    assert status == 400, answer
    assert answer["error"]["param"] == "model"
    assert "'claude-chat' is served by provider 'claude', which cannot do embeddings" in answer["error"]["message"]
    assert hub.fake.requests == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": EMB}, "input"),
        ({"model": EMB, "input": None}, "input"),
        ({"model": EMB, "input": ""}, "input"),
        ({"model": EMB, "input": []}, "input"),
        ({"model": EMB, "input": ["a", 1]}, "input.1"),
        ({"model": EMB, "input": [[1], []]}, "input.1"),
        ({"model": EMB, "input": [1, -2]}, "input"),
        ({"model": EMB, "input": [True]}, "input.0"),
        ({"model": EMB, "input": ["a"] * 2049}, "input"),
        ({"model": EMB, "input": "a", "encoding_format": "int8"}, "encoding_format"),
        ({"model": EMB, "input": "a", "dimensions": 0}, "dimensions"),
    ],
)
async def test_bad_input_is_a_400_naming_the_field(hub: Hub, body: Any, field: str) -> None:
    key = await _setup(hub)
    status, answer = await _post(hub, key, body)
    assert status == 400, answer
    error = answer["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == field and error["request_id"]
    assert hub.fake.requests == []


@pytest.mark.parametrize(
    ("value", "field", "message"),
    [
        ("x" * 101, "input", "input has 101 characters; the limit is 100"),
        (["ok", "y" * 101], "input.1", "input.1 has 101 characters; the limit is 100"),
        (["z" * 100, "z" * 100, "z" * 51], "input", "the inputs hold 251 characters; the limit is 250"),
        ([7] * 26, "input", "input has 104 characters; the limit is 100"),  # a token id weighs 4 characters
        ([[7] * 20, [7] * 20, [7] * 23], "input", "the inputs hold 252 characters; the limit is 250"),
    ],
)
async def test_the_content_caps_apply_to_embeddings_input(make_hub: Any, value: Any, field: str, message: str) -> None:
    hub = await make_hub(max_content_chars=100, max_total_content_chars=250)
    key = await _setup(hub)
    status, answer = await _post(hub, key, {"model": EMB, "input": value})
    assert status == 400, answer
    error = answer["error"]
    assert (error["type"], error["param"], error["message"]) == ("invalid_request_error", field, message)
    assert hub.fake.requests == []  # nothing reached the provider
    status, answer = await _post(hub, key, {"model": EMB, "input": ["x" * 100, "y" * 100, "z" * 50]})
    assert status == 200 and len(answer["data"]) == 3  # exactly at both caps is fine


async def test_key_without_the_embeddings_scope_is_forbidden(hub: Hub) -> None:
    key = await _setup(hub, scopes=("chat",))
    async with _async_client(hub, key) as client:
        with pytest.raises(openai.PermissionDeniedError) as caught:
            await client.embeddings.create(model=EMB, input="x")
    assert "embeddings" in caught.value.message


async def test_provider_5xx_fails_over_to_another_embedding_model(hub: Hub) -> None:
    key = await _setup(hub)
    async with FakeOpenAI() as other:
        await hub.add_provider("other", base_url=other.base_url)
        await hub.add_model("backup-embed", "other", weight=1, kind="embedding")
        hub.fake.script(EMB, Fail(500), Fail(500), Fail(500))  # transient: retried twice, then fail over
        status, body = await _post(hub, key, {"model": "auto", "input": "x"})
        assert status == 200 and body["model"] == "backup-embed"
        assert body["data"][0]["embedding"] == FakeOpenAI.embedding_of("backup-embed", "x")


async def test_named_model_failing_is_a_502_and_never_replaced(hub: Hub) -> None:
    key = await _setup(hub)
    async with FakeOpenAI() as other:
        await hub.add_provider("other", base_url=other.base_url)
        await hub.add_model("backup-embed", "other", weight=1, kind="embedding")
        hub.fake.script(EMB, Fail(503), Fail(503), Fail(503))
        async with _async_client(hub, key) as client:
            with pytest.raises(openai.InternalServerError) as caught:
                await client.embeddings.create(model=EMB, input="x")
        assert caught.value.status_code == 502
        assert other.requests == []  # vectors of another model would not be comparable


async def test_no_embedding_model_is_a_503_and_nothing_is_sent(hub: Hub) -> None:
    await hub.add_provider()
    await hub.add_model("gpt-test")
    key = await hub.new_key(scopes=["embeddings"])
    status, body = await _post(hub, key, {"input": "x"})
    assert status == 503 and "no model of kind 'embedding'" in body["error"]["message"]
    assert hub.fake.requests == []


# --- kinds keep the two operations apart ------------------------------------------------------------------


async def test_chat_never_routes_to_an_embedding_model(hub: Hub) -> None:
    key = await _setup(hub)  # the embedding model has the higher weight
    for _ in range(3):
        status, body, _ = await hub.chat(key, policy={"mode": "high_confidence"})
        assert status == 200 and body["negotiated_model"] == "gpt-test"
    status, body, _ = await hub.chat(key, model_hint=EMB)  # a hint is a preference: ignored, and said so
    assert status == 200 and body["negotiated_model"] == "gpt-test"
    assert f"model_hint '{EMB}' ignored (embedding model)" in body["routing_reason"]
    resp = await hub.client.post(
        "/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert resp.status == 200 and (await resp.json())["model"] == "gpt-test"
    assert all(path == "/v1/chat/completions" and model == "gpt-test" for path, model in _paths(hub.fake))


async def test_chat_with_only_embedding_models_is_refused(hub: Hub) -> None:
    await hub.add_provider()
    await hub.add_model(EMB, kind="embedding")
    key = await hub.new_key()
    status, body, _ = await hub.chat(key)
    assert status == 503 and hub.fake.requests == []
    assert body["error"]["type"] == "no_eligible_model" and "no model of kind 'chat'" in body["error"]["message"]


async def test_embeddings_never_route_to_a_chat_model(hub: Hub) -> None:
    key = await _setup(hub)
    for _ in range(3):
        status, answer = await _post(hub, key, {"model": "auto", "input": "x"})
        assert status == 200 and answer["model"] == EMB and len(answer["data"]) == 1, answer
    assert _paths(hub.fake) == [("/v1/embeddings", EMB)] * 3


async def test_context_overflow_escalation_stays_within_the_kind(hub: Hub) -> None:
    await hub.add_provider()
    await hub.add_model("small-chat", weight=9, max_context_tokens=1000)
    await hub.add_model("big-embed", kind="embedding", max_context_tokens=100_000)
    key = await hub.new_key()
    hub.fake.script("small-chat", ContextOverflow(), ContextOverflow())  # also with max_tokens lowered to fit
    status, body, _ = await hub.chat(key)
    assert status == 502 and "context_overflow" in body["error"]["error_class"]
    assert hub.fake.calls("big-embed") == 0


# --- admin: the model kind ---------------------------------------------------------------------------------


async def test_admin_model_kind_is_validated_stored_and_returned(hub: Hub) -> None:
    await hub.add_provider()
    created = await hub.admin("POST", "/models", {"id": "e1", "provider_id": "fake", "kind": "embedding"}, expect=201)
    assert created["model"]["kind"] == "embedding"
    plain = await hub.admin("POST", "/models", {"id": "c1", "provider_id": "fake"}, expect=201)
    assert plain["model"]["kind"] == "chat"
    bad = await hub.admin("POST", "/models", {"id": "x", "provider_id": "fake", "kind": "vision"}, expect=400)
    assert bad["error"]["field"] == "kind"
    patched = await hub.admin("PATCH", "/models/c1", {"kind": "embedding"}, expect=200)
    assert patched["model"]["kind"] == "embedding"
    listed = {m["id"]: m["kind"] for m in (await hub.admin("GET", "/models"))["items"]}
    assert listed == {"e1": "embedding", "c1": "embedding"}
    assert hub.services.snapshot.models["c1"].kind == "embedding"


async def test_admin_refuses_an_embedding_model_on_a_provider_that_cannot_embed(hub: Hub) -> None:
    body = {"id": "claude", "type": "anthropic", "base_url": "http://127.0.0.1:9", "api_key": "sk-ant-x"}
    await hub.admin("POST", "/providers", body, expect=201)
    refused = await hub.admin(
        "POST", "/models", {"id": "claude-embed", "provider_id": "claude", "kind": "embedding"}, expect=400
    )
    assert "does not serve embeddings" in refused["error"]["message"]
