"""Admin API: providers, models and routing defaults; validation; changes apply to the next request."""

from __future__ import annotations

from tests.conftest import Hub


async def test_provider_crud_and_base_url_normalisation(hub: Hub) -> None:
    await hub.admin("POST", "/providers", {"id": "p", "base_url": "http://127.0.0.1:9/v1/"}, expect=201)
    items = (await hub.admin("GET", "/providers"))["items"]
    assert items[0]["base_url"] == "http://127.0.0.1:9" and items[0]["has_api_key"] is False
    patched = await hub.admin("PATCH", "/providers/p", {"enabled": False}, expect=200)
    assert patched["provider"]["enabled"] is False
    await hub.admin("PATCH", "/providers/ghost", {"enabled": False}, expect=404)
    await hub.admin("DELETE", "/providers/p", expect=200)
    assert (await hub.admin("GET", "/providers"))["items"] == []


async def test_provider_validation(hub: Hub) -> None:
    for body, field in [
        ({"base_url": "http://x"}, "id"),
        ({"id": "p"}, "base_url"),
        ({"id": "p", "base_url": "ftp://x"}, "base_url"),
        ({"id": "p", "base_url": "http://x", "type": "carrier-pigeon"}, "type"),
        ({"id": "p", "base_url": "http://x", "enabled": "yes"}, "enabled"),
        ({"id": "p", "base_url": "http://x", "surprise": 1}, "surprise"),
    ]:
        got = await hub.admin("POST", "/providers", body, expect=400)
        assert got["error"]["field"] == field, (body, got)


async def test_model_crud_validation_and_live_effect(ready_hub: tuple[Hub, str]) -> None:
    hub, key = ready_hub
    await hub.admin("POST", "/models", {"id": "m", "provider_id": "ghost"}, expect=400)
    await hub.admin("POST", "/models", {"id": "m", "provider_id": "fake", "weight": 11}, expect=400)
    await hub.admin("POST", "/models", {"id": "m", "provider_id": "fake", "input_per_1k": -1}, expect=400)
    await hub.add_model("org/premium-model", weight=10, input_per_1k=0.0001, output_per_1k=0.0001)
    status, body, _ = await hub.chat(key, policy={"mode": "high_confidence"})
    assert body["negotiated_model"] == "org/premium-model"  # slash in the id is fine

    await hub.admin("PATCH", "/models/org/premium-model", {"enabled": False}, expect=200)
    status, body, _ = await hub.chat(key, policy={"mode": "high_confidence"})
    assert body["negotiated_model"] == "gpt-test"  # disabled on the next request, no restart

    await hub.admin("PATCH", "/models/ghost", {"weight": 1}, expect=404)
    await hub.admin("PATCH", "/models/gpt-test", {"weight": 99}, expect=400)
    await hub.admin("DELETE", "/models/gpt-test", expect=200)
    models = (await hub.admin("GET", "/models"))["items"]
    assert [m["id"] for m in models] == ["org/premium-model"]
    status, body, _ = await hub.chat(key)
    assert status == 503 and "disabled" in body["error"]["message"]


async def test_deleting_a_provider_removes_its_models(ready_hub: tuple[Hub, str]) -> None:
    hub, key = ready_hub
    await hub.admin("DELETE", "/providers/fake", expect=200)
    assert (await hub.admin("GET", "/models"))["items"] == []
    error = await hub.chat_refused(key, 503, "no_eligible_model")
    assert error["message"]


async def test_disabled_provider_is_not_routed(ready_hub: tuple[Hub, str]) -> None:
    hub, key = ready_hub
    await hub.admin("PATCH", "/providers/fake", {"enabled": False}, expect=200)
    status, body, _ = await hub.chat(key)
    assert status == 503 and "no_adapter" in body["error"]["message"]
    await hub.admin("PATCH", "/providers/fake", {"enabled": True}, expect=200)
    await hub.chat_ok(key)


async def test_routing_defaults_apply_to_the_next_request(hub: Hub) -> None:
    await hub.add_provider()
    await hub.add_model("cheap-small", weight=2, input_per_1k=0.0001, output_per_1k=0.0001)
    await hub.add_model("premium", weight=10, input_per_1k=0.0002, output_per_1k=0.0002)
    key = await hub.new_key()
    assert (await hub.chat(key))[1]["negotiated_model"] == "premium"  # normal mode: weight outweighs 2x cost
    got = await hub.admin("PUT", "/routing-config", {"default_mode": "cheap"}, expect=200)
    assert got["effective"]["mode"] == "cheap"
    assert (await hub.chat(key))[1]["negotiated_model"] == "cheap-small"
    await hub.admin("PUT", "/routing-config", {"default_mode": "warp"}, expect=400)
    await hub.admin("PUT", "/routing-config", {"default_max_budget_usd": -1}, expect=400)
    await hub.admin("PUT", "/routing-config", {"default_max_budget_usd": 0.0000001}, expect=200)
    error = await hub.chat_refused(key, 422, "no_eligible_model")  # the budget leaves no model eligible
    assert "budget" in error["message"]


async def test_healthz_reports_readiness_and_how_to_fix(hub: Hub) -> None:
    resp = await hub.client.get("/healthz")
    body = await resp.json()
    assert resp.status == 503 and "fix" in body and "/admin/v1/providers" in body["fix"]
    await hub.add_provider()
    body = await (await hub.client.get("/healthz")).json()
    assert body["reason"] == "no enabled model belongs to a configured provider"
    await hub.add_model("m")
    resp = await hub.client.get("/healthz")
    assert resp.status == 200 and (await resp.json())["status"] == "ok"


async def test_env_provider_takes_models_and_routes(make_hub, fake) -> None:  # type: ignore[no-untyped-def]
    hub = await make_hub(openai_api_key="sk-env-secret", openai_base_url=fake.base_url)
    providers = (await hub.admin("GET", "/providers"))["items"]
    assert [(p["id"], p["source"], p["has_api_key"]) for p in providers] == [("openai", "env", True)]
    await hub.add_model("gpt-env", provider_id="openai")
    key = await hub.new_key()
    status, body, _ = await hub.chat(key)
    assert status == 200 and body["negotiated_model"] == "gpt-env"
    assert hub.fake.requests[-1]["headers"]["Authorization"] == "Bearer sk-env-secret"
    raw = b"".join(p.read_bytes() for p in hub.services.settings.data_dir.glob("tokenhub.sqlite*"))
    assert b"sk-env-secret" not in raw  # the environment's key is never written to disk


async def test_provider_health_endpoint(ready_hub: tuple[Hub, str]) -> None:
    hub, key = ready_hub
    await hub.chat(key)
    health = await hub.admin("GET", "/health")
    assert health["providers"][0]["provider_id"] == "fake"
    assert health["providers"][0]["state"] == "healthy" and health["providers"][0]["total_requests"] == 1
