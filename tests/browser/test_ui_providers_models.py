"""The Providers and Models panels in a real browser against a real TokenHub: add a provider pointing at the
fake, discover its models and register one, edit and disable it, delete one; the leaderboard's inline weight
edit (a refused value shows its error in place) changes the simulator's answer."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.browser.conftest import LiveHub, PageErrors, ThreadedFake, screenshot


def test_add_a_provider_discover_its_models_register_one_then_edit_disable_and_delete(
    page: Page, live_hub: LiveHub, fake: ThreadedFake, page_errors: PageErrors
) -> None:
    page_errors.expected.append("400")  # the refused edit below
    fake.call(lambda f: f.script("fake-chat-large"))
    fake.call(lambda f: f.script("fake-chat-small"))
    page.goto("/admin/#/providers")
    page.get_by_role("button", name="Add provider").click()
    dialog = page.get_by_role("dialog", name="Add provider")
    dialog.get_by_label("Provider id").fill("fakeai")
    dialog.get_by_label("Type").select_option("openai")
    dialog.get_by_label("Base URL").fill(fake.base_url)
    dialog.get_by_label("API key").fill("sk-ui-secret-123")
    expect(dialog.get_by_label("API key")).to_have_attribute("type", "password")
    dialog.get_by_role("button", name="Add provider").click()
    expect(dialog).to_be_hidden()
    row = page.get_by_role("row").filter(has_text="fakeai")
    expect(row).to_contain_text(fake.base_url.removesuffix("/v1"))  # stored without /v1
    expect(row).to_contain_text("sealed")  # where the key is kept; never the key itself
    assert "sk-ui-secret-123" not in page.content()
    stored = live_hub.admin("GET", "/providers", expect=200)["items"]
    assert [(p["id"], p["has_api_key"]) for p in stored] == [("fakeai", True)]

    page.get_by_role("button", name="Discover models of fakeai").click()
    found = page.get_by_role("region", name="models of fakeai")
    expect(found.get_by_role("row").filter(has_text="fake-chat-large")).to_contain_text("no")
    found.get_by_role("button", name="Add fake-chat-small as a model").click()
    add = page.get_by_role("dialog", name="Add model")
    expect(add.get_by_label("Model id")).to_have_value("fake-chat-small")
    expect(add.get_by_label("Upstream name")).to_have_value("fake-chat-small")
    add.get_by_label("Model id").fill("small")
    add.get_by_label("Weight (0-10)").fill("7")
    add.get_by_role("button", name="Add model").click()
    expect(add).to_be_hidden()
    expect(found.get_by_role("row").filter(has_text="fake-chat-small")).to_contain_text("as small")
    model = live_hub.admin("GET", "/models", expect=200)["items"][0]
    assert (model["id"], model["provider_id"], model["upstream_model"], model["weight"]) == (
        "small",
        "fakeai",
        "fake-chat-small",
        7,
    )
    screenshot(page, "providers")

    # an edit the server refuses shows next to its field and changes nothing
    page.get_by_role("button", name="Edit fakeai").click()
    edit = page.get_by_role("dialog", name="Edit provider fakeai")
    edit.get_by_label("Base URL").fill("ftp://nowhere")
    edit.get_by_role("button", name="Save").click()
    expect(edit.locator(".field.invalid")).to_contain_text("base_url")
    edit.get_by_role("button", name="Cancel").click()
    assert live_hub.admin("GET", "/providers")["items"][0]["base_url"] == fake.base_url.removesuffix("/v1")

    page.get_by_role("button", name="Disable fakeai").click()
    expect(row).to_contain_text("disabled")
    assert live_hub.admin("GET", "/providers")["items"][0]["enabled"] is False
    page.get_by_role("button", name="Enable fakeai").click()
    expect(row).to_contain_text("enabled")

    live_hub.admin("POST", "/providers", {"id": "spare", "base_url": fake.base_url}, expect=201)
    page.get_by_role("button", name="Refresh").click()
    page.get_by_role("button", name="Delete spare").click()
    page.get_by_role("dialog", name="Delete provider spare?").get_by_role("button", name="Delete provider").click()
    expect(page.get_by_role("row").filter(has_text="spare")).to_have_count(0)
    assert [p["id"] for p in live_hub.admin("GET", "/providers")["items"]] == ["fakeai"]


def chosen_by_simulator(page: Page) -> str:
    page.get_by_role("link", name="Routing").click()
    page.get_by_label("Mode", exact=True).select_option("high_confidence")
    page.get_by_role("button", name="Simulate").click()
    return page.get_by_test_id("chosen-model").inner_text()


def test_raising_a_weight_inline_makes_the_simulator_choose_that_model(
    page: Page, live_hub: LiveHub, fake: ThreadedFake, page_errors: PageErrors
) -> None:
    page_errors.expected.append("400")  # the refused weight below
    for model in live_hub.admin("GET", "/models")["items"]:  # only this test's models compete
        live_hub.admin("DELETE", f"/models/{model['id']}", expect=200)
    live_hub.admin("POST", "/providers", {"id": "sim", "base_url": fake.base_url, "api_key": "k"}, expect=201)
    prices = {"input_per_1k": 0.001, "output_per_1k": 0.002}
    live_hub.admin("POST", "/models", {"id": "alpha", "provider_id": "sim", "weight": 3, **prices}, expect=201)
    live_hub.admin("POST", "/models", {"id": "beta", "provider_id": "sim", "weight": 6, **prices}, expect=201)
    live_hub.admin("POST", "/models", {"id": "off", "provider_id": "sim", "enabled": False}, expect=201)

    key = live_hub.admin("POST", "/apikeys", {"name": "ui-models"}, expect=201)["key"]
    for _ in range(3):  # traffic for the leaderboard (beta: the higher weight wins)
        assert live_hub.chat(key, "hello")[0] == 200
    live_hub.wait_logged(3, "model=beta")  # the leaderboard counts the request log

    page.goto("/admin/#/routing")
    assert chosen_by_simulator(page) == "beta"
    results = page.get_by_role("table", name="Candidates")
    expect(results.locator("tr.chosen")).to_contain_text("beta")
    expect(results.get_by_role("row").filter(has_text="off")).to_contain_text("excluded: disabled")

    page.get_by_role("link", name="Models").click()
    board = page.get_by_role("table", name="Leaderboard")
    expect(board.get_by_role("row").filter(has_text="alpha")).to_be_visible()
    beta = board.get_by_role("row").filter(has_text="beta")
    expect(beta.locator("td[data-col=requests]")).to_have_text("3")  # from the request log
    expect(beta.locator("td[data-col=reward]")).not_to_have_text("—")  # the bandit learned from them
    weight = page.get_by_label("Weight of alpha")
    weight.fill("11")
    weight.press("Enter")
    expect(board.get_by_role("row").filter(has_text="alpha").get_by_role("alert")).to_contain_text("weight")
    assert live_hub.admin("GET", "/models?limit=1&offset=0")["items"][0]["weight"] == 3  # nothing changed
    weight.fill("10")
    weight.press("Enter")
    expect(page.get_by_label("Weight of alpha")).to_have_value("10")
    expect(board.get_by_role("alert")).to_have_count(0)
    page.get_by_label("Input price of beta").fill("0.0005")
    page.get_by_label("Input price of beta").press("Enter")
    expect(page.get_by_label("Input price of beta")).to_have_value("0.0005")
    models = {m["id"]: m for m in live_hub.admin("GET", "/models")["items"]}
    assert (models["alpha"]["weight"], models["beta"]["input_per_1k"]) == (10, 0.0005)

    # add a model through the form: a refused price first, shown next to its field
    page.get_by_role("button", name="Add model").click()
    add = page.get_by_role("dialog", name="Add model")
    add.get_by_label("Model id").fill("gamma")
    add.get_by_label("Provider").select_option("sim")
    add.get_by_label("Input $/1k tokens").fill("-1")
    add.get_by_role("button", name="Add model").click()
    expect(add.locator(".field.invalid")).to_contain_text("input_per_1k")
    add.get_by_label("Input $/1k tokens").fill("0.002")
    add.get_by_role("button", name="Add model").click()
    expect(add).to_be_hidden()
    expect(board.get_by_role("row").filter(has_text="gamma")).to_be_visible()
    page.get_by_role("button", name="Disable gamma").click()
    expect(board.get_by_role("row").filter(has_text="gamma")).to_contain_text("disabled")
    board.evaluate("table => table.parentElement.scrollTo(0, 0)")  # the focused button scrolled it sideways
    screenshot(page, "models")

    assert chosen_by_simulator(page) == "alpha"
    expect(page.get_by_role("table", name="Candidates").locator("tr.chosen")).to_contain_text("alpha")
    page.get_by_role("heading", name="Simulator").scroll_into_view_if_needed()
    page.mouse.wheel(0, 250)
    screenshot(page, "routing")
