"""The operator's panels in a real browser: API keys (a secret shown once, rotate, disable, edit, revoke), the
request log (traffic sent with that key, filters, one request's attempts and routing reason, plan steps), the
audit trail, and the vault on a second TokenHub (set the password, lock, a wrong password, rotate, the limit)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import LiveHub, PageErrors, ThreadedFake, open_page, screenshot
from tests.conftest import ADMIN_TOKEN
from tests.fakes.openai_fake import Fail


@pytest.fixture(scope="module")
def live_hub(tmp_path_factory: pytest.TempPathFactory, fake: ThreadedFake) -> Iterator[LiveHub]:
    """No retries, so one scripted 500 fails over to the next model (two attempts in the row); two models."""
    with LiveHub(tmp_path_factory.mktemp("ops") / "data", TOKENHUB_PROVIDER_MAX_RETRIES="0") as hub:
        hub.admin("POST", "/providers", {"id": "fake", "base_url": fake.base_url, "api_key": "sk-x"}, expect=201)
        for model, price in (("primary", 0.0001), ("backup", 0.001)):
            body = {"id": model, "provider_id": "fake", "weight": 5, "input_per_1k": price, "output_per_1k": price}
            hub.admin("POST", "/models", {**body, "max_context_tokens": 8000}, expect=201)
        yield hub


def _chat(hub: LiveHub, key: str, **policy: Any) -> tuple[int, Any]:
    body = {"request": {"messages": [{"role": "user", "content": "hello"}]}, "policy": {"mode": "cheap", **policy}}
    return hub.call("POST", "/v1/chat", body, token=key)


def _key_row(page: Page, name: str) -> Any:
    return page.get_by_role("row").filter(has=page.locator(".key-name", has_text=re.compile(f"^{name}$")))


def test_a_new_key_is_shown_once_and_its_traffic_fills_the_request_log(
    page: Page, live_hub: LiveHub, fake: ThreadedFake
) -> None:
    page.get_by_role("link", name="API keys").click()
    page.get_by_role("button", name="New key").click()
    form = page.get_by_role("dialog", name="New API key")
    form.get_by_label("Name").fill("ui-traffic")
    form.get_by_label("Monthly budget (USD)").fill("5")
    form.get_by_label("Requests per minute").fill("600")
    form.get_by_label("embeddings").check()
    form.get_by_role("button", name="Create key").click()

    shown = page.get_by_role("dialog", name="Your new API key")
    expect(shown).to_contain_text("You will not see this key again")
    key = shown.get_by_label("API key").input_value()
    assert re.fullmatch(r"tokenhub_[0-9a-f]{64}", key)
    shown.get_by_role("button", name="I have stored it").click()
    expect(shown).to_have_count(0)
    assert key not in page.content()
    row = _key_row(page, "ui-traffic")
    expect(row).to_contain_text("chat, plan, embeddings")
    expect(row).to_contain_text("$0.00 of $5.00")
    expect(row.get_by_role("meter")).to_be_visible()

    for _ in range(3):
        assert _chat(live_hub, key)[0] == 200
    fake.call(lambda f: f.script("primary", Fail(500)))  # the next request fails over to backup
    status, body = _chat(live_hub, key)
    assert status == 200 and body["negotiated_model"] == "backup"
    live_hub.wait_logged(4)
    page.reload()
    expect(_key_row(page, "ui-traffic")).not_to_contain_text("$0.00 of")  # spend shows in the bar

    page.get_by_role("link", name="Request log").click()
    table = page.get_by_role("table", name="Requests, newest first")
    expect(table.get_by_role("row")).to_have_count(5)  # header + 4
    expect(page.get_by_role("navigation", name="pages")).to_contain_text("1\u20134 of 4")
    screenshot(page, "requests")
    filters = page.get_by_role("form", name="filter requests")
    filters.get_by_label("Model").fill("backup")
    filters.get_by_role("button", name="Apply filters").click()
    expect(table.get_by_role("row")).to_have_count(2)
    assert "model=backup" in page.url
    filters.get_by_label("Model").fill("")
    filters.get_by_label("API key").select_option(label="ui-traffic")
    filters.get_by_label("Outcome").select_option("error")
    filters.get_by_role("button", name="Apply filters").click()
    expect(table).to_contain_text("No request matches.")
    filters.get_by_role("button", name="Clear").click()
    expect(table.get_by_role("row")).to_have_count(5)

    table.get_by_role("row").nth(1).press("Enter")  # the newest: the failover; a row opens by keyboard
    expect(page.get_by_role("heading", name="Request", exact=True)).to_be_visible()
    attempts = page.get_by_role("table", name="Attempts (2)")
    expect(attempts.get_by_role("row").nth(1)).to_contain_text("primary")
    expect(attempts.get_by_role("row").nth(1)).to_contain_text("transient")
    expect(attempts.get_by_role("row").nth(2)).to_contain_text("backup")
    expect(attempts.get_by_role("row").nth(2)).to_contain_text("ok")
    expect(page.locator(".routing-reason")).to_contain_text("primary failed (transient)")
    expect(page.locator("dd[data-field=model_id]")).to_have_text("backup")
    expect(page.get_by_text("No feedback for this request.")).to_be_visible()
    screenshot(page, "request-detail")
    page.get_by_role("link", name="← Request log").click()
    expect(table.get_by_role("row")).to_have_count(5)


def test_a_plan_request_shows_its_steps_and_each_step_its_plan(page: Page, live_hub: LiveHub) -> None:
    key = live_hub.admin("POST", "/apikeys", {"name": "ui-plan"}, expect=201)["key"]
    body = {
        "request": {"messages": [{"role": "user", "content": "Build a shed"}]},
        "orchestration": {"mode": "adversarial", "iterations": 1, "review_model_id": "backup"},
    }
    status, answer = live_hub.call("POST", "/v1/plan", body, token=key)
    assert status == 200, answer
    live_hub.wait_logged(3, "endpoint=plan_step")
    plan = live_hub.admin("GET", "/logs?endpoint=plan&limit=1")["logs"][0]
    page.goto(f"/admin/#/requests/{plan['request_id']}")
    steps = page.get_by_role("table", name="Plan steps (3)")
    expect(steps.get_by_role("row")).to_have_count(4)
    steps.get_by_role("link").first.click()
    expect(page.get_by_text("A step of plan request")).to_be_visible()
    expect(page.locator("dd[data-field=endpoint]")).to_have_text("plan_step")
    page.get_by_role("link", name=re.compile(r"^th-")).click()  # back up to the plan
    expect(page.get_by_role("table", name="Plan steps (3)")).to_be_visible()


def test_rotate_disable_edit_revoke_a_key_and_see_it_all_in_the_audit_trail(
    page: Page, live_hub: LiveHub, page_errors: PageErrors
) -> None:
    page_errors.expected.append("400")  # the refused edit below
    created = live_hub.admin("POST", "/apikeys", {"name": "ui-rotate"}, expect=201)
    old_key = created["key"]
    page.goto("/admin/#/keys")
    page.get_by_role("button", name="Rotate ui-rotate").click()
    page.get_by_role("dialog", name="Rotate ui-rotate").get_by_role("button", name="Rotate").click()
    shown = page.get_by_role("dialog", name="Your new API key")
    new_key = shown.get_by_label("API key").input_value()
    assert new_key != old_key and new_key.startswith("tokenhub_")
    shown.get_by_role("button", name="close").click()  # the ✕ closes it too
    expect(shown).to_have_count(0)
    assert new_key not in page.content()
    assert _chat(live_hub, old_key)[0] == 401 and _chat(live_hub, new_key)[0] == 200

    page.get_by_role("button", name="Disable ui-rotate").click()
    expect(_key_row(page, "ui-rotate")).to_contain_text("disabled")
    assert _chat(live_hub, new_key)[0] in (401, 403)
    page.get_by_role("button", name="Enable ui-rotate").click()
    expect(_key_row(page, "ui-rotate")).to_contain_text("enabled")

    page.get_by_role("button", name="Edit ui-rotate").click()
    edit = page.get_by_role("dialog", name="Edit ui-rotate")
    edit.get_by_label("New expiry (from now)").fill("forever")
    edit.get_by_role("button", name="Save").click()
    expect(edit.locator(".field.invalid")).to_contain_text("expires_in must be a duration")  # next to its field
    edit.get_by_label("New expiry (from now)").fill("30d")
    edit.get_by_label("Monthly budget (USD)").fill("12.5")
    edit.get_by_label("Tokens per minute").fill("9000")
    edit.get_by_role("button", name="Save").click()
    expect(edit).to_have_count(0)
    row = _key_row(page, "ui-rotate")
    expect(row).to_contain_text("$0.0000015 of $12.50")  # the one request it served
    expect(row).to_contain_text("9,000 tpm")
    page.locator(".table-wrap").evaluate("wrap => { wrap.scrollLeft = 0; }")  # the buttons clicked scrolled it
    screenshot(page, "api-keys")
    page.get_by_role("button", name="Mark budget paid for ui-rotate").click()
    expect(row).to_contain_text("$0.00 of $12.50")  # the month's spend counts from now
    page.get_by_role("button", name="Revoke ui-rotate").click()
    page.get_by_role("dialog", name="Revoke ui-rotate").get_by_role("button", name="Revoke").click()
    expect(_key_row(page, "ui-rotate")).to_have_count(0)
    assert _chat(live_hub, new_key)[0] == 401

    page.get_by_role("link", name="Audit trail").click()
    table = page.get_by_role("table", name="Admin actions, newest first")
    expect(table).to_contain_text("create_api_key")
    expect(table).to_contain_text("revoke_api_key")
    screenshot(page, "audit")
    filters = page.get_by_role("form", name="filter the audit trail")
    filters.get_by_label("Action").fill("patch_api_key")
    filters.get_by_label("Status").fill("400")
    filters.get_by_role("button", name="Apply filters").click()
    expect(table.get_by_role("row")).to_have_count(2)  # header + the refused edit
    table.get_by_role("row").nth(1).click()
    entry = page.get_by_role("dialog", name=re.compile("Audit entry"))
    expect(entry).to_contain_text('"expires_in": "forever"')
    expect(entry).to_contain_text(created["id"])


def test_the_panels_fit_a_narrow_screen(page: Page) -> None:
    page.set_viewport_size({"width": 390, "height": 800})
    for panel, heading in (("keys", "API keys"), ("requests", "Request log"), ("audit", "Audit trail")):
        page.goto(f"/admin/#/{panel}")
        expect(page.get_by_role("heading", name=heading)).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # tables scroll inside .table-wrap


@pytest.fixture(scope="module")
def vault_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveHub]:
    """A second TokenHub whose vault is enabled and locked, its password not set yet (the default start)."""
    data: Path = tmp_path_factory.mktemp("vault") / "data"
    with LiveHub(data, TOKENHUB_VAULT_ENABLED="true", TOKENHUB_VAULT_UNLOCK_ATTEMPTS_PER_MIN="5") as hub:
        yield hub


def test_vault_set_lock_wrong_password_unlock_rotate_and_the_attempt_limit(
    browser: Browser, vault_hub: LiveHub, page_errors: PageErrors
) -> None:
    page_errors.expected += ["401", "429"]  # the wrong passwords and the limit, on purpose
    context = browser.new_context(base_url=vault_hub.url, viewport={"width": 1280, "height": 800})
    try:
        assert context.request.post("/admin/v1/session", data={"token": ADMIN_TOKEN}).status == 201
        page = open_page(context, page_errors)
        page.goto("/admin/#/vault")
        state = page.locator("dd[data-field=vault-state]")
        expect(state).to_have_text("locked")
        form = page.get_by_role("form", name="unlock the vault")
        expect(form.get_by_role("heading")).to_have_text("Set the vault password")
        form.get_by_label("Vault password").fill("first-password")
        form.get_by_label("Repeat the password").fill("other-password")
        form.get_by_role("button", name="Unlock").click()
        expect(form).to_contain_text("The two passwords differ.")  # checked here: no attempt spent
        form.get_by_label("Repeat the password").fill("first-password")
        form.get_by_role("button", name="Unlock").click()  # attempt 1
        expect(page.get_by_role("status")).to_contain_text("The vault password is set")
        expect(state).to_have_text("unlocked")
        screenshot(page, "vault")

        page.get_by_role("button", name="Lock the vault").click()
        expect(state).to_have_text("locked")
        form.get_by_label("Vault password").fill("wrong-password")
        form.get_by_role("button", name="Unlock").click()  # attempt 2
        expect(form.get_by_role("alert")).to_contain_text("401 unlock_failed")
        form.get_by_label("Vault password").fill("first-password")
        form.get_by_role("button", name="Unlock").click()  # attempt 3
        expect(state).to_have_text("unlocked")

        rotate = page.get_by_role("form", name="change the vault password")
        rotate.get_by_label("Current password").fill("not-it-at-all")
        rotate.get_by_label("New password", exact=True).fill("second-password")
        rotate.get_by_label("Repeat the new password").fill("second-password")
        rotate.get_by_role("button", name="Change password").click()  # attempt 4
        expect(rotate.get_by_role("alert")).to_contain_text("unlock_failed")
        rotate.get_by_label("Current password").fill("first-password")
        rotate.get_by_role("button", name="Change password").click()  # attempt 5
        expect(page.get_by_role("status")).to_contain_text("The vault password is changed")

        page.get_by_role("button", name="Lock the vault").click()
        form.get_by_label("Vault password").fill("second-password")
        form.get_by_role("button", name="Unlock").click()  # attempt 6: over the limit of 5 a minute
        expect(form.get_by_role("alert")).to_contain_text("429")
        expect(state).to_have_text("locked")
        assert not page_errors.items, page_errors.items
    finally:
        context.close()
