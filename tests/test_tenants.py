"""Per-tenant pipelines: stored, validated on save, different per tenant, hot-reloaded without restart."""

from __future__ import annotations

from tests.conftest import ADMIN_TOKEN, Hub


async def _setup(hub: Hub) -> tuple[str, str]:
    await hub.add_provider()
    await hub.add_model("cheap-small", weight=2, input_per_1k=0.0001, output_per_1k=0.0002)
    await hub.add_model("premium", weight=10, input_per_1k=0.001, output_per_1k=0.003)
    await hub.admin("POST", "/tenants", {"id": "acme", "name": "Acme Inc"}, expect=201)
    default_key = await hub.new_key()
    acme_key = await hub.new_key(tenant_id="acme")
    return default_key, acme_key


async def test_tenants_are_created_and_listed(hub: Hub) -> None:
    await hub.admin("POST", "/tenants", {"id": "acme", "name": "Acme"}, expect=201)
    await hub.admin("POST", "/tenants", {"id": "acme", "name": "Again"}, expect=409)
    await hub.admin("POST", "/tenants", {"id": "bad id!", "name": "x"}, expect=400)
    listed = await hub.admin("GET", "/tenants")
    assert [t["id"] for t in listed["items"]] == ["default", "acme"]


async def test_key_for_unknown_tenant_is_rejected(hub: Hub) -> None:
    body = await hub.admin("POST", "/apikeys", {"name": "x", "tenant_id": "ghost"}, expect=400)
    assert body["error"]["field"] == "tenant_id"


async def test_tenant_pipeline_differs_and_hot_reloads(hub: Hub) -> None:
    default_key, acme_key = await _setup(hub)
    policy = {"mode": "high_confidence"}
    assert (await hub.chat(acme_key, policy=policy))[1]["negotiated_model"] == "premium"

    pinned = {
        "stages": [
            {"stage": "rate_limit", "with": {"rps": 5}},
            {"stage": "auth"},
            {"stage": "policy", "with": {"mode": "cheap"}},
            {"stage": "escalate"},
            {"stage": "dispatch"},
        ]
    }
    saved = await hub.admin("PUT", "/tenants/acme/pipeline", pinned, expect=200)
    assert saved["stages"][0] == {"stage": "record"}  # record always wraps the chain
    # Next request, no restart: acme is pinned to cheap whatever it asks; the default tenant is not.
    assert (await hub.chat(acme_key, policy=policy))[1]["negotiated_model"] == "cheap-small"
    assert (await hub.chat(default_key, policy=policy))[1]["negotiated_model"] == "premium"

    got = await hub.admin("GET", "/tenants/acme/pipeline")
    assert got["custom"] is True and got["stages"] == saved["stages"]

    await hub.admin("DELETE", "/tenants/acme/pipeline", expect=200)
    assert (await hub.chat(acme_key, policy=policy))[1]["negotiated_model"] == "premium"
    assert (await hub.admin("GET", "/tenants/acme/pipeline"))["custom"] is False


async def test_tenant_without_directives_stage_forwards_them_verbatim(hub: Hub) -> None:
    _, acme_key = await _setup(hub)
    definition = [{"stage": "auth"}, {"stage": "policy"}, {"stage": "dispatch"}]
    await hub.admin("PUT", "/tenants/acme/pipeline", definition, expect=200)
    content = "@@tokenhub mode=cheap\nhello"
    status, _, _ = await hub.chat(acme_key, content)
    assert status == 200
    assert hub.fake.requests[-1]["json"]["messages"][0]["content"] == content


async def test_tenant_rate_limit_is_its_own(hub: Hub) -> None:
    default_key, acme_key = await _setup(hub)
    definition = [
        {"stage": "rate_limit", "with": {"rps": 0.1, "burst": 1}},
        {"stage": "auth"},
        {"stage": "policy"},
        {"stage": "dispatch"},
    ]
    await hub.admin("PUT", "/tenants/acme/pipeline", definition, expect=200)
    await hub.chat_ok(acme_key)
    await hub.chat_refused(acme_key, 429, "rate_limited")
    assert (await hub.chat(default_key))[0] == 200  # the default tenant's limiter is untouched


async def test_invalid_pipelines_are_rejected_on_save(hub: Hub) -> None:
    await hub.admin("POST", "/tenants", {"id": "acme", "name": "Acme"}, expect=201)
    cases = [
        ([{"stage": "auth"}, {"stage": "policy"}, {"stage": "teleport"}, {"stage": "dispatch"}], "unknown stage"),
        ([{"stage": "auth"}, {"stage": "policy", "with": {"mode": "turbo"}}, {"stage": "dispatch"}], "mode"),
        ([{"stage": "auth"}, {"stage": "policy", "with": {"nope": 1}}, {"stage": "dispatch"}], "nope"),
        ([{"stage": "policy"}, {"stage": "dispatch"}], "'auth' is required"),
        ([{"stage": "auth"}, {"stage": "dispatch"}, {"stage": "policy"}], "'dispatch' must be the last"),
        ([{"stage": "auth"}, {"stage": "policy"}, {"stage": "directives"}, {"stage": "dispatch"}], "before"),
        ([], "non-empty"),
    ]
    for definition, fragment in cases:
        body = await hub.admin("PUT", "/tenants/acme/pipeline", definition, expect=400)
        assert fragment in body["error"]["message"], (definition, body)
    resp = await hub.client.put(
        "/admin/v1/tenants/acme/pipeline",
        data=b"{nope",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    error = (await resp.json())["error"]
    assert resp.status == 400 and error["type"] == "invalid_request" and "malformed JSON" in error["message"]
    assert (await hub.admin("GET", "/tenants/acme/pipeline"))["custom"] is False  # nothing was saved
    await hub.admin("PUT", "/tenants/ghost/pipeline", [{"stage": "auth"}], expect=404)


async def test_stage_catalogue_lists_stages_and_options(hub: Hub) -> None:
    body = await hub.admin("GET", "/pipelines/stages")
    stages = {s["stage"]: s for s in body["stages"]}
    assert set(stages) == {
        "record",
        "rate_limit",
        "auth",
        "directives",
        "orchestrate",
        "policy",
        "shape",
        "escalate",
        "dispatch",
    }
    assert {"rps", "burst"} <= set(stages["rate_limit"]["options"])
    assert "mode" in stages["policy"]["options"]
    assert [s["stage"] for s in body["default_pipeline"]] == [
        "record",
        "rate_limit",
        "auth",
        "directives",
        "orchestrate",
        "policy",
        "shape",
        "escalate",
        "dispatch",
    ]


async def test_tenant_pipeline_survives_restart(make_hub) -> None:  # type: ignore[no-untyped-def]
    hub = await make_hub()
    _, acme_key = await _setup(hub)
    definition = [{"stage": "auth"}, {"stage": "policy", "with": {"mode": "cheap"}}, {"stage": "dispatch"}]
    await hub.admin("PUT", "/tenants/acme/pipeline", definition, expect=200)
    await hub.client.close()
    again = await make_hub()  # same data directory
    status, body, _ = await again.chat(acme_key, policy={"mode": "high_confidence"})
    assert status == 200 and body["negotiated_model"] == "cheap-small"
