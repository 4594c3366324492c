"""The Live panel (the landing page): the request-flow graph shows the topology before any traffic, traffic sent
through the API appears in it and in the charts, and a provider whose breaker opens turns red."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from stages.health import DOWN_AFTER
from tests.browser.conftest import LiveHub, ThreadedFake, screenshot
from tests.fakes.openai_fake import Fail


@pytest.fixture(scope="module")
def key(live_hub: LiveHub, fake: ThreadedFake) -> Iterator[str]:
    live_hub.admin("POST", "/providers", {"id": "fake", "base_url": fake.base_url, "api_key": "sk-x"}, expect=201)
    live_hub.admin(
        "POST",
        "/models",
        {
            "id": "gpt-live",
            "provider_id": "fake",
            "input_per_1k": 0.01,
            "output_per_1k": 0.02,
            "max_output_tokens": 100,
        },
        expect=201,
    )
    yield live_hub.admin("POST", "/apikeys", {"name": "live-client"}, expect=201)["key"]


def graph_item(page: Page, attribute: str, value: str):
    return page.get_by_role("list", name="Request-flow graph").locator(f"li[data-{attribute}='{value}']")


def test_traffic_appears_in_the_graph_and_the_charts(page: Page, live_hub: LiveHub, key: str) -> None:
    expect(page.get_by_role("heading", name="Live", exact=True)).to_be_visible()  # the landing page
    expect(page.get_by_role("link", name="Live")).to_have_attribute("aria-current", "page")
    # the topology is there before any traffic
    expect(graph_item(page, "node", "p:fake")).to_have_count(1)
    expect(graph_item(page, "node", "m:gpt-live")).to_have_attribute("data-requests", "0")
    expect(graph_item(page, "edge", "p:fake>m:gpt-live")).to_have_attribute("data-total", "0")
    expect(page.get_by_role("status").filter(has_text="requests in the last minute")).to_contain_text("0 requests")

    for i in range(3):
        status, body = live_hub.chat(key, f"hello {i}")
        assert status == 200, body

    expect(graph_item(page, "node", "c:live-client")).to_have_attribute("data-requests", "3")
    expect(graph_item(page, "node", "m:gpt-live")).to_have_attribute("data-requests", "3")
    expect(graph_item(page, "edge", "p:fake>m:gpt-live")).to_have_attribute("data-total", "3")
    expect(graph_item(page, "edge", "hub>p:fake")).to_have_attribute("data-active", "yes")  # pulsing
    summary = page.get_by_role("status").filter(has_text="requests in the last minute")
    expect(summary).to_have_attribute("data-requests-1m", "3")
    expect(summary).to_contain_text("3 requests in the last minute · 0 errors")
    expect(graph_item(page, "node", "p:fake")).to_have_attribute("data-state", "healthy")
    for title in ("Requests / s", "Error rate", "Latency", "Cost / min"):
        expect(page.get_by_role("figure", name=title).locator("canvas")).to_have_count(1)
    expect(graph_item(page, "edge", "hub>p:fake")).to_have_attribute("data-active", "no", timeout=8000)  # decays
    screenshot(page, "live")

    # reopened, the charts are seeded from the server's history, not only from events
    page.reload()
    expect(page.get_by_role("status").filter(has_text="requests in the last minute")).to_have_attribute(
        "data-requests-1m", "3"
    )


def test_the_provider_turns_red_when_its_breaker_opens(
    page: Page, live_hub: LiveHub, fake: ThreadedFake, key: str
) -> None:
    expect(graph_item(page, "node", "p:fake")).to_have_count(1)
    fake.call(lambda f: f.script("gpt-live", *[Fail(500)] * (DOWN_AFTER * 3)))
    for _ in range(DOWN_AFTER * 3):
        status, _ = live_hub.chat(key, "fail")
        assert status >= 500
        if live_hub.admin("GET", "/health")["providers"][0]["breaker"] == "open":
            break
    fake.call(lambda f: f.reset())
    expect(graph_item(page, "node", "p:fake")).to_have_attribute("data-state", "down")
    expect(graph_item(page, "node", "m:gpt-live")).to_have_attribute("data-state", "down")
    expect(page.get_by_label("provider states").locator("[data-provider='fake'] .badge")).to_have_text("down")
    # a request no model answered has no provider or model: its error shows on the client's edge
    expect(graph_item(page, "edge", "c:live-client>hub")).not_to_have_attribute("data-errors", "0")
    summary = page.get_by_role("status").filter(has_text="requests in the last minute")
    expect(summary).not_to_have_attribute("data-errors-1m", "0")


def test_the_three_panels_fit_a_narrow_screen(page: Page, key: str) -> None:
    page.set_viewport_size({"width": 390, "height": 800})
    for panel, heading in (("live", "Live"), ("trends", "Trends"), ("console", "Analyst console")):
        page.goto(f"/admin/#/{panel}")
        expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
        if panel == "console":
            page.get_by_label("SQL").fill("SELECT * FROM request_log")
            page.get_by_role("button", name="Run query").click()
            expect(page.get_by_role("table", name="Result")).to_be_visible()
        page.wait_for_timeout(300)  # charts size themselves to their box
        # wide content (tables, charts) scrolls inside its own box, never the page sideways
        assert page.evaluate("document.scrollingElement.scrollWidth") <= 390, panel
