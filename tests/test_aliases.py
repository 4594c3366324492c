"""Model aliases: admin CRUD and validation, weighted variant selection and stickiness, and use as model_hint
and as `model` on the OpenAI-compatible endpoints (X-Alias-From, routing_reason, /v1/models)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import openai
import pytest

from pipeline.types import AliasInfo, AliasVariant
from stages.aliases import AliasChooser, fnv1a_32, variant_for_bucket
from tests.conftest import Hub

MESSAGES: Any = [{"role": "user", "content": "hello"}]


async def _setup(hub: Hub, *models: str) -> str:
    """Each model on its own provider id (one fake server), so one model's failures never trip another's health."""
    for model in models or ("gpt-a", "gpt-b"):
        await hub.add_provider(f"p-{model}")
        await hub.add_model(model, f"p-{model}", weight=5)
    return await hub.new_key()


def _alias(name: str = "smart", *variants: tuple[str, int], **fields: Any) -> dict[str, Any]:
    pairs = variants or (("gpt-a", 3), ("gpt-b", 1))
    return {"name": name, "variants": [{"model_id": m, "weight": w} for m, w in pairs], **fields}


def _client(hub: Hub, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(hub.client.make_url("/v1")), api_key=key, max_retries=0)


# --- pure selection --------------------------------------------------------------------------------------


def test_fnv1a_32_known_values() -> None:
    assert fnv1a_32("") == 0x811C9DC5
    assert fnv1a_32("a") == 0xE40C292C
    assert fnv1a_32("foobar") == 0xBF9CF968


def test_buckets_walk_the_cumulative_weights() -> None:
    variants = (AliasVariant("a", 2), AliasVariant("b", 1), AliasVariant("c", 3))
    picked = [variant_for_bucket(variants, bucket).model_id for bucket in range(6)]
    assert picked == ["a", "a", "b", "c", "c", "c"]


def test_weighted_distribution_over_request_ids() -> None:
    alias = AliasInfo("smart", (AliasVariant("a", 3), AliasVariant("b", 1)))
    chooser = AliasChooser()
    counts = Counter(chooser.choose(alias, request_id=f"req-{i}").model_id for i in range(8000))
    assert abs(counts["a"] / 8000 - 0.75) < 0.03, counts


def test_round_robin_is_weighted_and_per_alias() -> None:
    one = AliasInfo("one", (AliasVariant("a", 2), AliasVariant("b", 1)), sticky_by="round_robin")
    two = AliasInfo("two", (AliasVariant("x", 1), AliasVariant("y", 1)), sticky_by="round_robin")
    chooser = AliasChooser()
    picks = []
    for _ in range(6):
        picks.append(chooser.choose(one, request_id="same").model_id)
        picks.append(chooser.choose(two, request_id="same").model_id)
    assert picks[0::2] == ["a", "a", "b", "a", "a", "b"]
    assert picks[1::2] == ["x", "y", "x", "y", "x", "y"]


def test_api_key_stickiness_falls_back_to_the_request_id_and_empty_is_random() -> None:
    alias = AliasInfo("s", tuple(AliasVariant(f"m{i}", 1) for i in range(8)), sticky_by="api_key")
    chooser = AliasChooser(random.Random(7))
    by_key = {chooser.choose(alias, request_id=f"r{i}", api_key_id="key-1").model_id for i in range(50)}
    assert len(by_key) == 1
    without_key = chooser.choose(alias, request_id="r1").model_id
    assert without_key == chooser.choose(alias, request_id="r1", api_key_id="").model_id
    random_picks = {chooser.choose(AliasInfo("r", alias.variants), request_id="").model_id for _ in range(200)}
    assert len(random_picks) > 1


# --- admin CRUD and validation ---------------------------------------------------------------------------


async def test_alias_crud(hub: Hub) -> None:
    await _setup(hub, "gpt-a", "gpt-b")
    created = await hub.admin("POST", "/aliases", _alias(sticky_by="request", fallbacks=["gpt-b"]), expect=201)
    assert created["alias"] == {
        "name": "smart",
        "variants": [
            {"model_id": "gpt-a", "weight": 3, "share": 0.75},
            {"model_id": "gpt-b", "weight": 1, "share": 0.25},
        ],
        "enabled": True,
        "sticky_by": "request",
        "fallbacks": ["gpt-b"],
    }
    await hub.admin("POST", "/aliases", _alias(), expect=409)

    listed = await hub.admin("GET", "/aliases", expect=200)
    assert listed["total"] == 1 and listed["items"][0]["name"] == "smart"
    assert listed["items"][0]["created_at"] <= listed["items"][0]["updated_at"]
    one = await hub.admin("GET", "/aliases/smart", expect=200)
    assert one["variants"][0]["model_id"] == "gpt-a"

    patched = await hub.admin("PATCH", "/aliases/smart", {"enabled": False, "sticky_by": "round_robin"}, expect=200)
    assert patched["alias"]["enabled"] is False and patched["alias"]["sticky_by"] == "round_robin"
    assert patched["alias"]["variants"] == one["variants"]  # untouched fields stay
    patched = await hub.admin("PATCH", "/aliases/smart", {"variants": [{"model_id": "gpt-b", "weight": 2}]}, expect=200)
    assert patched["alias"]["variants"] == [{"model_id": "gpt-b", "weight": 2, "share": 1.0}]

    put = await hub.admin("PUT", "/aliases/org/fast", {"variants": [{"model_id": "gpt-a"}]}, expect=200)
    assert put["alias"]["name"] == "org/fast" and put["alias"]["variants"][0]["weight"] == 1
    assert (await hub.admin("GET", "/aliases/org/fast", expect=200))["enabled"] is True

    assert (await hub.admin("DELETE", "/aliases/smart", expect=200))["deleted"] is True
    assert (await hub.admin("DELETE", "/aliases/smart", expect=200))["deleted"] is False
    await hub.admin("GET", "/aliases/smart", expect=404)
    await hub.admin("PATCH", "/aliases/smart", {"enabled": True}, expect=404)
    assert [a["name"] for a in (await hub.admin("GET", "/aliases"))["items"]] == ["org/fast"]


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"name": "smart", "variants": []}, "variants", "at least 1"),
        ({"name": "smart"}, "variants", "required"),
        (_alias("smart", ("gpt-a", 0)), "variants.0.weight", "greater than or equal to 1"),
        (_alias("smart", ("gpt-a", -2)), "variants.0.weight", "greater than or equal to 1"),
        (_alias("smart", ("gpt-a", 1), ("gpt-a", 2)), "variants", "only one variant"),
        (_alias("smart", ("smart", 1)), "variants", "alias itself"),
        (_alias("smart", ("nope", 1)), "variants", "'nope' is not registered"),
        (_alias("smart", sticky_by="user"), "sticky_by", "Input should be"),
        (_alias("gpt-a"), "name", "registered model id"),
        (_alias("auto"), "name", "TokenHub chooses"),
        (_alias("*"), "name", "String should match pattern"),
        (_alias("", ("gpt-a", 1)), "name", "at least 1 character"),
        (_alias("smart", fallbacks=["nope"]), "fallbacks", "'nope' is not registered"),
        (_alias("smart", fallbacks=["gpt-a", "gpt-a"]), "fallbacks", "only once"),
        (_alias("smart", fallbacks=["smart"]), "fallbacks", "alias itself"),
        (_alias("smart", ("gpt-a", 1), ("emb", 1)), "variants", "mix model kinds"),
        ({**_alias(), "extra": 1}, "extra", "Extra inputs"),
    ],
)
async def test_invalid_aliases_are_refused(hub: Hub, body: dict[str, Any], field: str, message: str) -> None:
    await _setup(hub, "gpt-a", "gpt-b")
    await hub.add_model("emb", "p-gpt-a", kind="embedding")
    data = await hub.admin("POST", "/aliases", body, expect=400)
    assert data["error"]["field"] == field and message in data["error"]["message"], data
    assert (await hub.admin("GET", "/aliases"))["total"] == 0


async def test_a_model_cannot_take_an_alias_name(hub: Hub) -> None:
    await _setup(hub, "gpt-a", "gpt-b")
    await hub.admin("POST", "/aliases", _alias(), expect=201)
    data = await hub.admin("POST", "/models", {"id": "smart", "provider_id": "p-gpt-a"}, expect=409)
    assert "alias" in data["error"]["message"]


# --- resolution on the request path ----------------------------------------------------------------------


async def test_the_same_request_id_always_gets_the_same_variant(hub: Hub) -> None:
    key = await _setup(hub, *(f"m{i}" for i in range(6)))
    variants = [(f"m{i}", 1) for i in range(6)]
    await hub.admin("POST", "/aliases", _alias("spread", *variants), expect=201)
    seen: dict[str, set[str]] = {}
    for request_id in ("client-req-1", "client-req-2", "client-req-3"):
        for _ in range(4):
            status, body, resp = await hub.chat(key, model_hint="spread", headers={"X-Request-Id": request_id})
            assert status == 200, body
            assert resp.headers["X-Alias-From"] == "spread"
            seen.setdefault(request_id, set()).add(body["negotiated_model"])
    assert all(len(models) == 1 for models in seen.values()), seen
    # and the variant is the one the spec's hash names
    expected = f"m{fnv1a_32('client-req-1') % 6}"
    assert seen["client-req-1"] == {expected}


async def test_round_robin_over_http_follows_the_weights(hub: Hub) -> None:
    key = await _setup(hub, "gpt-a", "gpt-b")
    await hub.admin("POST", "/aliases", _alias("rr", ("gpt-a", 2), ("gpt-b", 1), sticky_by="round_robin"), expect=201)
    served = []
    for _ in range(6):
        status, body, _ = await hub.chat(key, model_hint="rr")
        assert status == 200
        served.append(body["negotiated_model"])
    assert served == ["gpt-a", "gpt-a", "gpt-b", "gpt-a", "gpt-a", "gpt-b"]


async def test_api_key_stickiness_over_http(hub: Hub) -> None:
    await _setup(hub, *(f"m{i}" for i in range(8)))
    await hub.admin("POST", "/aliases", _alias("k", *((f"m{i}", 1) for i in range(8)), sticky_by="api_key"))
    keys = [await hub.new_key() for _ in range(3)]
    for key in keys:
        served = {(await hub.chat(key, model_hint="k"))[1]["negotiated_model"] for _ in range(4)}
        assert len(served) == 1


async def test_weighted_traffic_split_over_http(hub: Hub) -> None:
    key = await _setup(hub, "gpt-a", "gpt-b")
    await hub.admin("POST", "/aliases", _alias("split", ("gpt-a", 4), ("gpt-b", 1)), expect=201)
    counts: Counter[str] = Counter()
    for _ in range(200):  # generated request ids: each request hashes on its own id
        counts[(await hub.chat(key, model_hint="split"))[1]["negotiated_model"]] += 1
    assert 0.68 < counts["gpt-a"] / 200 < 0.92, counts


async def test_alias_as_openai_model_with_header_reason_and_stream(hub: Hub) -> None:
    key = await _setup(hub, "gpt-a", "gpt-b")
    await hub.admin("POST", "/aliases", _alias("smart", ("gpt-b", 1)), expect=201)
    async with _client(hub, key) as client:
        raw = await client.chat.completions.with_raw_response.create(model="smart", messages=MESSAGES)
        completion = raw.parse()
        assert completion.model == "gpt-b" and completion.choices[0].message.content == "reply from gpt-b"
        assert raw.headers["x-alias-from"] == "smart" and raw.headers["x-negotiated-model"] == "gpt-b"
        async with client.chat.completions.with_streaming_response.create(
            model="smart", messages=MESSAGES, stream=True
        ) as streamed:
            assert streamed.headers["x-alias-from"] == "smart"
            chunks = [chunk async for chunk in await streamed.parse()]
    assert {c.model for c in chunks} == {"gpt-b"}
    logs = await hub.logs()
    assert any("alias smart -> gpt-b" in row["routing_reason"] for row in logs)

    status, body, resp = await hub.chat(key, model_hint="smart")
    assert status == 200 and "alias smart -> gpt-b" in body["routing_reason"]
    assert "routed-hint-exact" in body["routing_reason"]

    status, body, resp = await hub.chat(key, model_hint="gpt-a")  # a plain model: no alias header
    assert status == 200 and "X-Alias-From" not in resp.headers


async def test_disabled_and_unknown_aliases(hub: Hub) -> None:
    key = await _setup(hub, "gpt-a", "gpt-b")
    await hub.admin("POST", "/aliases", _alias("smart", ("gpt-b", 1), enabled=False), expect=201)
    async with _client(hub, key) as client:
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="smart", messages=MESSAGES)
        models = [m.id async for m in client.models.list()]
    assert "smart" not in models

    status, body, resp = await hub.chat(key, model_hint="smart")  # native: an unknown hint is only ignored
    assert status == 200 and "X-Alias-From" not in resp.headers
    assert "model_hint 'smart' ignored" in body["routing_reason"]

    await hub.admin("PATCH", "/aliases/smart", {"enabled": True}, expect=200)
    async with _client(hub, key) as client:
        listed = [m async for m in client.models.list()]
        completion = await client.chat.completions.create(model="smart", messages=MESSAGES)
    assert completion.model == "gpt-b"
    assert [(m.id, m.owned_by) for m in listed if m.id == "smart"] == [("smart", "tokenhub")]


async def test_an_alias_whose_variant_cannot_serve_falls_back_to_scored_routing(hub: Hub) -> None:
    key = await _setup(hub, "gpt-a", "gpt-b")
    await hub.admin("POST", "/aliases", _alias("smart", ("gpt-b", 1)), expect=201)
    await hub.admin("PATCH", "/models/gpt-b", {"enabled": False}, expect=200)
    status, body, resp = await hub.chat(key, model_hint="smart")
    assert status == 200 and body["negotiated_model"] == "gpt-a"
    assert resp.headers["X-Alias-From"] == "smart"
    assert "model_hint 'gpt-b' ignored (disabled)" in body["routing_reason"]


async def test_alias_on_embeddings_and_messages(hub: Hub) -> None:
    await hub.add_provider()
    await hub.add_model("emb-a", kind="embedding")
    await hub.add_model("gpt-a")
    await hub.admin("POST", "/aliases", _alias("vectors", ("emb-a", 1)), expect=201)
    await hub.admin("POST", "/aliases", _alias("chatty", ("gpt-a", 1)), expect=201)
    key = await hub.new_key(scopes=["chat", "embeddings"])
    headers = {"Authorization": f"Bearer {key}"}
    resp = await hub.client.post("/v1/embeddings", json={"model": "vectors", "input": "hi"}, headers=headers)
    body = await resp.json()
    assert resp.status == 200 and body["model"] == "emb-a" and resp.headers["X-Alias-From"] == "vectors"
    message = {"model": "chatty", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
    resp = await hub.client.post("/v1/messages", json=message, headers=headers)
    body = await resp.json()
    assert resp.status == 200 and body["model"] == "gpt-a" and resp.headers["X-Alias-From"] == "chatty"
