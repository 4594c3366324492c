"""The Trends panel: charts and tables for a range with data, presets and a custom range kept in the URL, and a
bad custom range shown as the server's error."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import LiveHub, PageErrors, ThreadedFake, screenshot
from tests.fakes.openai_fake import Fail

CHARTS = ("Cost per model", "Latency per provider", "Error rate", "Tokens per tenant", "Requests per model")


@pytest.fixture(scope="module")
def traffic(live_hub: LiveHub, fake: ThreadedFake) -> Iterator[None]:
    live_hub.admin("POST", "/providers", {"id": "fake", "base_url": fake.base_url, "api_key": "sk-x"}, expect=201)
    live_hub.admin("POST", "/models", {"id": "gpt-trend", "provider_id": "fake", "input_per_1k": 0.01}, expect=201)
    key = live_hub.admin("POST", "/apikeys", {"name": "trends"}, expect=201)["key"]
    for i in range(5):
        assert live_hub.chat(key, f"t {i}")[0] == 200
    fake.call(lambda f: f.script("gpt-trend", Fail(400)))  # a client error: counted, breaker untouched
    assert live_hub.chat(key, "bad")[0] >= 400
    yield


def test_trends_show_charts_and_tables_for_a_range(page: Page, traffic: None) -> None:
    page.get_by_role("link", name="Trends").click()
    expect(page.get_by_role("heading", name="Trends")).to_be_visible()
    expect(page.get_by_role("button", name="Last 24 hours")).to_have_attribute("aria-pressed", "true")
    for title in CHARTS:
        expect(page.get_by_role("figure", name=title).locator("canvas")).to_have_count(1)
    cost = page.get_by_role("table", name="Cost per model: per bucket")
    expect(cost.locator("td[data-col='Model']")).to_have_text("gpt-trend")
    expect(cost.locator("td[data-col='Requests']")).to_have_text("5")
    errors = page.get_by_role("table", name="Error rate: per bucket")
    expect(errors.locator("td[data-col='Requests']")).to_have_text("6")
    expect(errors.locator("td[data-col='Errors']")).to_have_text("1")
    expect(
        page.get_by_role("table", name="Tokens per tenant: per bucket").locator("td[data-col='Tenant']")
    ).to_have_text("default")
    per_model = page.get_by_role("table", name="Requests per model: per bucket")
    row = per_model.get_by_role("row")
    expect(row.filter(has_text="gpt-trend").locator("td[data-col='Requests']")).to_have_text("5")
    # the refused request reached no model: it has its own series
    expect(row.filter(has_text="(no model)").locator("td[data-col='Requests']")).to_have_text("1")
    screenshot(page, "trends")

    page.get_by_role("button", name="Last 30 days").click()
    expect(page.get_by_role("button", name="Last 30 days")).to_have_attribute("aria-pressed", "true")
    assert "range=30d" in page.url
    expect(page.get_by_text("per day (UTC buckets")).to_be_visible()
    expect(
        page.get_by_role("table", name="Cost per model: per bucket").locator("td[data-col='Requests']")
    ).to_have_text("5")


def test_a_custom_range(page: Page, page_errors: PageErrors, traffic: None) -> None:
    page_errors.expected.append("400")  # the reversed range below is a 400 the browser reports
    page.goto("/admin/#/trends")
    page.get_by_label("From", exact=True).fill("2020-01-01T00:00")
    page.get_by_label("To", exact=True).fill("2020-01-03T00:00")
    page.get_by_label("Per", exact=True).select_option("day")
    page.get_by_role("button", name="Show range").click()
    expect(page.get_by_role("button", name="Show range")).to_have_attribute("aria-pressed", "true")
    assert "range=custom" in page.url and "bucket=day" in page.url
    expect(page.get_by_text("No data in this range.")).to_have_count(len(CHARTS))  # long before the traffic

    page.get_by_label("From", exact=True).fill("2020-01-05T00:00")  # after "To": the server says what is wrong
    page.get_by_role("button", name="Show range").click()
    expect(page.get_by_role("alert")).to_contain_text("start must not be after end")
