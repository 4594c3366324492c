"""Explicit fallback chains: when the first candidate fails, escalate follows its chain (the eligible
models, in order) before the rest of the scored list, and routing_reason names each fallback step."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.conftest import Hub
from tests.fakes.openai_fake import Fail, StreamCut

MESSAGES: Any = [{"role": "user", "content": "hello"}]
FATAL = Fail(401)  # a provider configuration error: the next candidate at once, no retry


async def _setup(hub: Hub, models: dict[str, dict[str, Any]]) -> str:
    """Each model on its own provider id (one fake server), so one model's failures never trip another's health."""
    for model_id, fields in models.items():
        await hub.add_provider(f"p-{model_id}")
        await hub.add_model(model_id, f"p-{model_id}", **fields)
    return await hub.new_key()


def _called(hub: Hub) -> list[str]:
    return [r["model"] for r in hub.fake.requests]


# "best" ranks first in normal mode, "second" next; the chain models rank last.
MODELS = {
    "fb1": {"weight": 1},
    "fb2": {"weight": 2},
    "best": {"weight": 10},
    "second": {"weight": 9},
}


async def test_the_hinted_models_chain_comes_before_the_scored_list(hub: Hub) -> None:
    key = await _setup(hub, {**MODELS, "primary": {"weight": 5, "fallbacks": ["fb2", "fb1"]}})
    hub.fake.script("primary", FATAL)
    hub.fake.script("fb2", FATAL)
    status, body, resp = await hub.chat(key, model_hint="primary")
    assert status == 200, body
    assert body["negotiated_model"] == "fb1"
    assert _called(hub) == ["primary", "fb2", "fb1"]
    reason = body["routing_reason"]
    assert "fallback primary -> fb2" in reason and "fallback fb2 -> fb1" in reason, reason
    assert reason.index("fallback primary -> fb2") < reason.index("fallback fb2 -> fb1")
    assert resp.headers["X-TokenHub-Attempts"] == "primary=fatal, fb2=fatal, fb1=ok"


async def test_after_the_chain_the_scored_list_continues(hub: Hub) -> None:
    key = await _setup(hub, {**MODELS, "primary": {"weight": 5, "fallbacks": ["fb2", "fb1"]}})
    for model in ("primary", "fb2", "fb1"):
        hub.fake.script(model, FATAL)
    status, body, _ = await hub.chat(key, model_hint="primary")
    assert status == 200 and body["negotiated_model"] == "best"
    assert _called(hub) == ["primary", "fb2", "fb1", "best"]


async def test_the_top_ranked_models_chain_applies_without_a_hint(hub: Hub) -> None:
    key = await _setup(hub, {**MODELS, "best": {"weight": 10, "fallbacks": ["fb1"]}})
    hub.fake.script("best", FATAL)
    status, body, _ = await hub.chat(key)
    assert status == 200 and body["negotiated_model"] == "fb1"  # not "second", the scored runner-up
    assert _called(hub) == ["best", "fb1"]
    assert "fallback best -> fb1" in body["routing_reason"]


async def test_without_a_chain_the_scored_order_is_unchanged(hub: Hub) -> None:
    key = await _setup(hub, {**MODELS, "primary": {"weight": 5}})
    hub.fake.script("primary", FATAL)
    status, body, _ = await hub.chat(key, model_hint="primary")
    assert status == 200 and body["negotiated_model"] == "best"
    assert "fallback" not in body["routing_reason"]


async def test_ineligible_chain_members_are_skipped(hub: Hub) -> None:
    key = await _setup(hub, {**MODELS, "primary": {"weight": 5, "fallbacks": ["fb2", "fb1"]}})
    await hub.admin("PATCH", "/models/fb2", {"enabled": False}, expect=200)
    hub.fake.script("primary", FATAL)
    status, body, _ = await hub.chat(key, model_hint="primary")
    assert status == 200 and body["negotiated_model"] == "fb1"
    assert _called(hub) == ["primary", "fb1"]
    assert "fallback primary -> fb1" in body["routing_reason"]

    status, body, _ = await hub.chat(key, model_hint="primary")  # no failure: the plan is in the reason
    assert status == 200 and body["negotiated_model"] == "primary"
    assert "fallbacks after primary: fb1 (skipped fb2: disabled)" in body["routing_reason"]


async def test_a_named_model_that_cannot_serve_lends_its_chain(hub: Hub) -> None:
    key = await _setup(hub, {**MODELS, "primary": {"weight": 5, "fallbacks": ["fb2"]}})
    await hub.admin("PATCH", "/models/primary", {"enabled": False}, expect=200)
    status, body, _ = await hub.chat(key, model_hint="primary")
    assert status == 200 and body["negotiated_model"] == "fb2"
    assert "fb2 first of the fallback chain" in body["routing_reason"]
    assert _called(hub) == ["fb2"]


async def test_an_alias_chain_wins_over_the_variants_own(hub: Hub) -> None:
    key = await _setup(hub, {**MODELS, "primary": {"weight": 5, "fallbacks": ["fb2"]}})
    alias = {"name": "smart", "variants": [{"model_id": "primary", "weight": 1}], "fallbacks": ["fb1", "fb2"]}
    await hub.admin("POST", "/aliases", alias, expect=201)
    hub.fake.script("primary", FATAL)
    status, body, resp = await hub.chat(key, model_hint="smart")
    assert status == 200 and body["negotiated_model"] == "fb1"
    assert resp.headers["X-Alias-From"] == "smart"
    assert _called(hub) == ["primary", "fb1"]
    assert "fallback primary -> fb1" in body["routing_reason"]


async def test_a_stream_follows_the_chain_before_its_first_token(hub: Hub) -> None:
    key = await _setup(hub, {**MODELS, "primary": {"weight": 5, "fallbacks": ["fb1"]}})
    hub.fake.script("primary", StreamCut(after=0))
    client = openai.AsyncOpenAI(base_url=str(hub.client.make_url("/v1")), api_key=key, max_retries=0)
    async with client:
        stream = await client.chat.completions.create(model="primary", messages=MESSAGES, stream=True)
        chunks = [chunk async for chunk in stream]
    assert {c.model for c in chunks} == {"fb1"}
    assert _called(hub)[-1] == "fb1" and _called(hub)[0] == "primary"


async def test_the_chain_counts_against_max_attempts(hub: Hub) -> None:
    chain = ["fb1", "fb2", "best", "second"]
    key = await _setup(hub, {**MODELS, "primary": {"weight": 5, "fallbacks": chain}})
    for model in ("primary", *chain):
        hub.fake.script(model, FATAL)
    status, body, _ = await hub.chat(key, model_hint="primary")
    assert status == 502, body
    assert _called(hub) == ["primary", "fb1", "fb2", "best"]  # escalate's default max_attempts is 4


@pytest.mark.parametrize(
    ("fallbacks", "message"),
    [
        (["primary"], "its own fallback"),
        (["nope"], "'nope' is not registered"),
        (["fb1", "fb1"], "only once"),
        (["emb"], "is of kind embedding, not chat"),
        ("fb1", "valid array"),
        ([f"m{i}" for i in range(17)], "at most 16"),
    ],
)
async def test_invalid_fallbacks_are_refused(hub: Hub, fallbacks: Any, message: str) -> None:
    await _setup(hub, {"fb1": {}, "emb": {"kind": "embedding"}})
    body = {"id": "primary", "provider_id": "p-fb1", "fallbacks": fallbacks}
    data = await hub.admin("POST", "/models", body, expect=400)
    assert data["error"]["field"].startswith("fallbacks") and message in data["error"]["message"], data
    if isinstance(fallbacks, list) and fallbacks != ["primary"]:
        await hub.admin("PATCH", "/models/fb1", {"fallbacks": fallbacks}, expect=400)


async def test_fallbacks_are_listed_and_patched(hub: Hub) -> None:
    await _setup(hub, {"a": {}, "b": {}, "c": {"fallbacks": ["a"]}})
    patched = await hub.admin("PATCH", "/models/c", {"fallbacks": ["b", "a"]}, expect=200)
    assert patched["model"]["fallbacks"] == ["b", "a"]
    listed = {m["id"]: m["fallbacks"] for m in (await hub.admin("GET", "/models"))["items"]}
    assert listed == {"a": [], "b": [], "c": ["b", "a"]}
    await hub.admin("PATCH", "/models/c", {"fallbacks": []}, expect=200)
    assert (await hub.admin("GET", "/models"))["items"][2]["fallbacks"] == []
