"""GET /admin/v1/engine/models: the routing engine's view of every model right now (provider, kind, upstream
name, prices, eligibility from adapters and health, fallbacks, aliases pointing at it)."""

from __future__ import annotations

from typing import Any

from tests.conftest import Hub
from tests.fakes.openai_fake import Fail


async def _view(hub: Hub, query: str = "") -> dict[str, Any]:
    return await hub.admin("GET", f"/engine/models{query}", expect=200)


async def test_engine_models_shows_the_router_view(hub: Hub) -> None:
    await hub.add_provider("a")
    await hub.add_provider("b")
    await hub.add_provider("off", enabled=False)
    await hub.add_model("fast", "a", weight=7, upstream_model="gpt-4o-mini", input_per_1k=0.001, output_per_1k=0.002)
    await hub.add_model("big", "b", weight=9, max_context_tokens=128000, fallbacks=["fast"])
    await hub.add_model("asleep", "a", enabled=False)
    await hub.add_model("orphan", "off")
    await hub.admin("POST", "/aliases", {"name": "smart", "variants": [{"model_id": "fast"}, {"model_id": "big"}]})
    await hub.admin("POST", "/aliases", {"name": "quick", "variants": [{"model_id": "fast"}]})

    data = await _view(hub)
    models = {m["id"]: m for m in data["models"]}
    assert data["total"] == 4 and list(models) == ["asleep", "big", "fast", "orphan"]
    assert models["fast"] == {
        "id": "fast",
        "provider_id": "a",
        "provider_type": "openai",
        "kind": "chat",
        "upstream_model": "gpt-4o-mini",
        "source": "store",
        "enabled": True,
        "weight": 7,
        "input_per_1k": 0.001,
        "output_per_1k": 0.002,
        "max_context_tokens": 0,
        "eligible": True,
        "unavailable": None,
        "reads": ["documents", "vision"],  # an openai provider's default
        "health": {"state": "healthy", "breaker": "closed", "avg_latency_ms": 0.0, "error_rate": 0.0},
        "fallbacks": [],
        "aliases": ["quick", "smart"],
    }
    assert models["big"]["fallbacks"] == ["fast"] and models["big"]["aliases"] == ["smart"]
    assert models["big"]["upstream_model"] == "big" and models["big"]["max_context_tokens"] == 128000
    assert (models["asleep"]["eligible"], models["asleep"]["unavailable"]) == (False, "disabled")
    assert (models["orphan"]["eligible"], models["orphan"]["unavailable"]) == (False, "no_adapter")
    assert [a["id"] for a in data["adapters"]] == ["a", "b"]
    assert data["adapters"][0]["health_endpoint"].endswith("/v1/models")
    assert [a["name"] for a in data["aliases"]] == ["quick", "smart"]

    page = await _view(hub, "?limit=2&offset=1")
    assert [m["id"] for m in page["models"]] == ["big", "fast"] and page["total"] == 4


async def test_engine_models_follows_health_and_the_breaker(hub: Hub) -> None:
    await hub.add_provider("a")
    await hub.add_model("flaky", "a")
    key = await hub.new_key()
    hub.fake.script("flaky", *[Fail(401)] * 5)
    for _ in range(5):  # five consecutive errors open the provider's breaker
        await hub.chat_refused(key, 502, "upstream_error")

    model = (await _view(hub))["models"][0]
    assert model["eligible"] is False and model["unavailable"] == "health_down"
    assert model["health"]["state"] == "down" and model["health"]["breaker"] == "open"
    assert model["health"]["error_rate"] == 1.0
