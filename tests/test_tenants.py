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


async def test_pipeline_errors_name_the_stage_at_fault(hub: Hub) -> None:
    """The editor shows an error next to its stage: the body says which step (as submitted) is at fault."""
    await hub.admin("POST", "/tenants", {"id": "acme", "name": "Acme"}, expect=201)
    cases = [
        ([{"stage": "auth"}, {"stage": "policy", "with": {"mode": "turbo"}}, {"stage": "dispatch"}], 1, "policy"),
        ([{"stage": "auth"}, {"stage": "teleport"}, {"stage": "dispatch"}], 1, "teleport"),
        ([{"stage": "auth"}, {"stage": "dispatch"}, {"stage": "policy"}], 1, "dispatch"),
        ([{"stage": "auth"}, {"stage": "policy"}, {"stage": "directives"}, {"stage": "dispatch"}], 1, "policy"),
        ([{"stage": "auth"}, {"stage": "auth"}, {"stage": "dispatch"}], 1, "auth"),
        ([{"stage": "auth"}, {"stage": "rate_limit", "with": {"rps": -1}}, {"stage": "dispatch"}], 1, "rate_limit"),
    ]
    for definition, index, stage in cases:
        error = (await hub.admin("PUT", "/tenants/acme/pipeline", definition, expect=400))["error"]
        assert (error["field"], error["stage_index"], error["stage"]) == (f"stages[{index}]", index, stage), error
        assert error["type"] == "invalid_request" and error["request_id"]
    whole = await hub.admin("PUT", "/tenants/acme/pipeline", [{"stage": "policy"}, {"stage": "dispatch"}], expect=400)
    assert whole["error"]["field"] == "stages" and "stage_index" not in whole["error"]
    assert (await hub.admin("GET", "/tenants/acme/pipeline"))["custom"] is False  # nothing was saved


async def test_configuration_listings_page_on_the_server(hub: Hub) -> None:
    await hub.add_provider("p1")
    await hub.add_provider("p2")
    for name in ("m1", "m2", "m3"):
        await hub.add_model(name, provider_id="p1")
    await hub.admin("POST", "/aliases", {"name": "a1", "variants": [{"model_id": "m1"}]}, expect=201)
    await hub.admin("POST", "/aliases", {"name": "a2", "variants": [{"model_id": "m2"}]}, expect=201)
    await hub.admin("POST", "/tenants", {"id": "acme", "name": "Acme"}, expect=201)
    for path, key, everything in [
        ("/providers", "id", ["p1", "p2"]),
        ("/models", "id", ["m1", "m2", "m3"]),
        ("/aliases", "name", ["a1", "a2"]),
        ("/tenants", "id", ["default", "acme"]),
    ]:
        listed = await hub.admin("GET", path, expect=200)
        assert [i[key] for i in listed["items"]] == everything
        assert (listed["total"], listed["limit"], listed["offset"]) == (len(everything), 1000, 0)
        second = await hub.admin("GET", f"{path}?limit=1&offset=1", expect=200)
        assert [i[key] for i in second["items"]] == everything[1:2] and second["total"] == len(everything)
        assert (await hub.admin("GET", f"{path}?offset=99"))["items"] == []
        if path == "/providers":  # the add form's choices
            assert set(listed["types"]) == {"openai", "anthropic", "vllm"}
        for bad in ("limit=0", "limit=1001", "limit=x", "offset=-1"):
            error = (await hub.admin("GET", f"{path}?{bad}", expect=400))["error"]
            assert error["field"] == bad.split("=")[0], error


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
