"""The Tenants (pipeline editor), Aliases & fallbacks and Routing defaults panels in a real browser against a
real TokenHub: a refused pipeline shows the server's error next to the stage at fault, then is fixed and
saved; stages are reordered, removed and added by keyboard-reachable buttons; an alias with two variants;
a model's fallback chain; an invalid routing default shows its field error and changes nothing."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.browser.conftest import LiveHub, PageErrors, ThreadedFake, screenshot


def step(page: Page, name: str):  # type: ignore[no-untyped-def]
    return page.get_by_role("listitem").filter(has=page.get_by_role("heading", name=name, exact=True))


def test_pipeline_editor_shows_the_error_next_to_its_stage_then_saves_the_fix(
    page: Page, live_hub: LiveHub, page_errors: PageErrors
) -> None:
    page_errors.expected.append("400")  # the refused saves below
    page.goto("/admin/#/tenants")
    page.get_by_label("Tenant id").fill("acme")
    page.get_by_label("Tenant name").fill("Acme Inc")
    page.get_by_role("button", name="Create tenant").click()
    expect(page.get_by_role("heading", name="Pipeline of acme")).to_be_visible()
    expect(page.get_by_role("row").filter(has_text="Acme Inc")).to_be_visible()
    assert page.url.endswith("#/tenants/acme")  # linkable

    # an option out of range: the error is next to rate_limit, and only there
    step(page, "rate_limit").get_by_label("Rps").fill("-1")
    page.get_by_role("button", name="Save pipeline").click()
    alert = step(page, "rate_limit").get_by_role("alert").first
    expect(alert).to_contain_text("rps")
    expect(step(page, "rate_limit").locator(".field.invalid")).to_contain_text("greater than 0")
    expect(step(page, "policy").get_by_role("alert")).to_have_count(0)
    assert live_hub.admin("GET", "/tenants/acme/pipeline")["custom"] is False  # nothing saved
    step(page, "rate_limit").scroll_into_view_if_needed()
    screenshot(page, "tenants")

    # an order the server refuses: dispatch moved up is flagged on dispatch
    step(page, "dispatch").get_by_role("button", name="Move dispatch up").click()
    expect(step(page, "rate_limit").get_by_role("alert")).to_have_count(0)  # the old error is gone with the edit
    step(page, "rate_limit").get_by_label("Rps").fill("5")
    page.get_by_role("button", name="Save pipeline").click()
    expect(step(page, "dispatch").get_by_role("alert")).to_contain_text("'dispatch' must be the last")
    step(page, "dispatch").get_by_role("button", name="Move dispatch down").focus()
    page.keyboard.press("Enter")  # the keyboard is enough

    # remove a stage, add it back (it goes before dispatch), set a policy option, save
    step(page, "shape").get_by_role("button", name="Remove shape").click()
    expect(step(page, "shape")).to_have_count(0)
    page.get_by_label("Stage to add").select_option("shape")
    page.get_by_role("button", name="Add stage").click()
    expect(page.get_by_role("listitem").last).to_contain_text("dispatch")
    step(page, "policy").get_by_label("Mode", exact=True).select_option("cheap")
    step(page, "policy").get_by_label("reward", exact=True).fill('{"quality": 1, "cost": 1}')  # an object: JSON
    page.get_by_role("button", name="Save pipeline").click()
    expect(page.get_by_role("status").filter(has_text="Saved")).to_be_visible()
    saved = live_hub.admin("GET", "/tenants/acme/pipeline")
    assert saved["custom"] is True
    stages = {s["stage"]: s.get("with", {}) for s in saved["stages"]}
    assert stages["rate_limit"] == {"rps": 5}
    assert stages["policy"] == {"mode": "cheap", "reward": {"quality": 0.5, "cost": 0.5, "latency": 0.0}}
    names = [s["stage"] for s in saved["stages"]]
    assert names[-2:] == ["shape", "dispatch"] and names[0] == "record"

    # the JSON fallback edits the same options
    step(page, "escalate").get_by_role("button", name="Edit escalate options as JSON").click()
    step(page, "escalate").get_by_label("Options (JSON)").fill('{"max_attempts": 2}')
    page.get_by_role("button", name="Save pipeline").click()
    expect(page.get_by_role("status").filter(has_text="Saved")).to_be_visible()
    escalate = next(s for s in live_hub.admin("GET", "/tenants/acme/pipeline")["stages"] if s["stage"] == "escalate")
    assert escalate["with"] == {"max_attempts": 2}

    page.get_by_role("button", name="Revert to default").click()
    page.get_by_role("dialog").get_by_role("button", name="Revert to default").click()
    expect(page.get_by_role("dialog")).to_have_count(0)
    expect(step(page, "rate_limit").get_by_label("Rps")).to_have_value("")
    assert live_hub.admin("GET", "/tenants/acme/pipeline")["custom"] is False


def test_alias_with_two_variants_and_a_model_fallback_chain(
    page: Page, live_hub: LiveHub, fake: ThreadedFake, page_errors: PageErrors
) -> None:
    page_errors.expected.append("400")  # the refused alias below
    live_hub.admin("POST", "/providers", {"id": "fa", "base_url": fake.base_url, "api_key": "k"}, expect=201)
    for model_id in ("m-large", "m-small", "m-backup"):
        live_hub.admin("POST", "/models", {"id": model_id, "provider_id": "fa"}, expect=201)
    page.goto("/admin/#/aliases")
    page.get_by_role("button", name="Create alias").click()
    dialog = page.get_by_role("dialog", name="Create alias")
    dialog.get_by_label("Alias name").fill("smart")
    dialog.get_by_label("Model 1").fill("m-ghost")
    dialog.get_by_label("Weight 1").fill("3")
    dialog.get_by_role("button", name="Add variant").click()
    dialog.get_by_label("Model 2").fill("m-small")
    dialog.get_by_label("Weight 2").fill("1")
    dialog.get_by_label("Sticky by").select_option("api_key")
    dialog.get_by_label("Alias fallbacks").fill("m-backup")
    dialog.get_by_role("button", name="Create alias").click()
    expect(dialog.locator("fieldset.variants").get_by_role("alert")).to_contain_text("'m-ghost' is not registered")
    assert live_hub.admin("GET", "/aliases")["total"] == 0
    dialog.get_by_label("Model 1").fill("m-large")
    dialog.get_by_role("button", name="Create alias").click()
    expect(dialog).to_be_hidden()
    row = page.get_by_role("table", name="Aliases").get_by_role("row").filter(has_text="smart")
    expect(row).to_contain_text("m-large 75% · m-small 25%")
    alias = live_hub.admin("GET", "/aliases/smart", expect=200)
    assert [(v["model_id"], v["weight"]) for v in alias["variants"]] == [("m-large", 3), ("m-small", 1)]
    assert (alias["sticky_by"], alias["fallbacks"]) == ("api_key", ["m-backup"])

    page.get_by_role("button", name="Edit alias smart").click()
    edit = page.get_by_role("dialog", name="Edit alias smart")
    edit.get_by_role("button", name="Remove variant 2").click()
    edit.get_by_role("button", name="Save alias").click()
    expect(row).to_contain_text("m-large 100%")

    chain = page.get_by_label("Fallbacks of m-large", exact=True)
    chain.fill("m-large")  # itself: refused in place
    page.get_by_role("button", name="Save fallbacks of m-large").click()
    expect(page.get_by_role("table", name="Fallbacks per model").get_by_role("alert")).to_contain_text("own fallback")
    chain.fill("m-small, m-backup")
    page.get_by_role("button", name="Save fallbacks of m-large").click()
    expect(page.get_by_role("table", name="Fallbacks per model").get_by_role("alert")).to_have_count(0)
    models = {m["id"]: m for m in live_hub.admin("GET", "/models")["items"]}
    assert models["m-large"]["fallbacks"] == ["m-small", "m-backup"]
    screenshot(page, "aliases")

    page.get_by_role("button", name="Delete alias smart").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete alias").click()
    expect(row).to_have_count(0)
    assert live_hub.admin("GET", "/aliases")["total"] == 0


def test_routing_defaults_refuse_an_invalid_value_next_to_its_field_and_change_nothing(
    page: Page, live_hub: LiveHub, page_errors: PageErrors
) -> None:
    page_errors.expected.append("400")
    before = live_hub.admin("GET", "/routing-config", expect=200)
    page.goto("/admin/#/routing")
    budget = page.get_by_label("Default max budget (USD)")
    budget.fill("500")
    page.get_by_label("Default mode").select_option("cheap")
    page.get_by_role("button", name="Save defaults").click()
    expect(page.locator(".field.invalid")).to_contain_text("default_max_budget_usd")
    assert live_hub.admin("GET", "/routing-config") == before
    budget.fill("2.5")
    page.get_by_role("button", name="Save defaults").click()
    expect(page.get_by_test_id("effective-routing")).to_contain_text("$2.50")
    expect(page.locator(".field.invalid")).to_have_count(0)
    after = live_hub.admin("GET", "/routing-config")
    assert (after["default_mode"], after["default_max_budget_usd"]) == ("cheap", 2.5)
    live_hub.admin("PUT", "/routing-config", {}, expect=200)  # back to the environment's defaults
