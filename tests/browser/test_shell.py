"""The admin UI's shell: sign-in, navigation, sign-out, a narrow screen, and the page's security headers."""

from __future__ import annotations

from playwright.sync_api import BrowserContext, Page, expect

from tests.browser.conftest import LiveHub, PageErrors, ThreadedFake, open_page, screenshot
from tests.conftest import ADMIN_TOKEN


def test_sign_in_refuses_a_wrong_token_then_signs_in_and_out(
    context: BrowserContext, live_hub: LiveHub, page_errors: PageErrors
) -> None:
    page_errors.expected.append("401")  # the refused sign-in is a 401 the browser reports
    page = open_page(context, page_errors)
    page.goto("/admin")  # redirected to /admin/
    expect(page.get_by_role("heading", name="TokenHub admin")).to_be_visible()
    screenshot(page, "sign-in")
    page.get_by_label("Admin token").fill("not-the-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("invalid admin token")

    page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    page.get_by_label("Admin token").press("Enter")  # the keyboard is enough
    expect(page.get_by_role("navigation", name="panels")).to_be_visible()
    cookie = next(c for c in context.cookies() if c["name"] == "tokenhub_admin")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/admin"
    assert ADMIN_TOKEN not in cookie["value"]

    page.reload()  # the session outlives a reload
    expect(page.get_by_role("navigation", name="panels")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("Admin token")).to_be_visible()
    assert not [c for c in context.cookies() if c["name"] == "tokenhub_admin"]
    status, _ = live_hub.call("GET", "/admin/v1/session")
    assert status == 200
    assert not page_errors.items, page_errors.items


def test_the_page_is_served_with_a_strict_content_security_policy(context: BrowserContext) -> None:
    response = context.request.get("/admin/")
    assert response.status == 200
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    for asset in ("js/app.js", "css/app.css", "vendor/preact-htm.js", "vendor/cytoscape.js", "vendor/uplot.js"):
        assert context.request.get(f"/admin/{asset}").status == 200, asset


def test_health_panel_and_an_unknown_panel(page: Page, live_hub: LiveHub, fake: ThreadedFake) -> None:
    live_hub.admin("POST", "/providers", {"id": "fake", "base_url": fake.base_url, "api_key": "sk-x"}, expect=201)
    live_hub.admin("POST", "/models", {"id": "gpt-shell", "provider_id": "fake"}, expect=201)
    key = live_hub.admin("POST", "/apikeys", {"name": "shell"}, expect=201)["key"]
    assert live_hub.chat(key)[0] == 200
    page.goto("/admin/#/health")
    expect(page.get_by_role("heading", name="Health")).to_be_visible()
    expect(page.get_by_text("1 of 1 models routable")).to_be_visible()
    row = page.get_by_role("row").filter(has=page.get_by_role("cell", name="fake", exact=True))
    expect(row).to_contain_text("healthy")
    screenshot(page, "health")
    expect(page.get_by_role("link", name="Health")).to_have_attribute("aria-current", "page")
    page.goto("/admin/#/no-such-panel")
    expect(page.get_by_text("No panel named")).to_be_visible()


def test_a_narrow_screen_gets_a_menu(page: Page) -> None:
    page.set_viewport_size({"width": 390, "height": 800})
    page.goto("/admin/#/health")
    nav = page.get_by_role("navigation", name="panels")
    expect(nav).to_be_hidden()
    page.get_by_role("button", name="☰").click()
    expect(nav).to_be_visible()
    nav.get_by_role("link", name="Health").click()
    expect(nav).to_be_hidden()
    expect(page.get_by_role("heading", name="Health")).to_be_visible()


def test_the_workflows_panel_says_when_durable_orchestration_is_off(page: Page) -> None:
    page.goto("/admin/#/workflows")
    expect(page.get_by_text("Durable orchestration is off")).to_be_visible()
    expect(page.get_by_text("No workflow matches.")).to_be_visible()
