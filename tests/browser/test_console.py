"""The Analyst console: run SQL from the editor (keyboard), get a sortable paged table and a chart, download
the result as CSV, run an example query, and see the server's reason when a statement is refused."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import LiveHub, PageErrors, ThreadedFake, screenshot


@pytest.fixture(scope="module")
def traffic(live_hub: LiveHub, fake: ThreadedFake) -> Iterator[None]:
    live_hub.admin("POST", "/providers", {"id": "fake", "base_url": fake.base_url, "api_key": "sk-x"}, expect=201)
    live_hub.admin("POST", "/models", {"id": "gpt-sql", "provider_id": "fake", "input_per_1k": 0.01}, expect=201)
    key = live_hub.admin("POST", "/apikeys", {"name": "analyst"}, expect=201)["key"]
    for i in range(4):
        assert live_hub.chat(key, f"q {i}")[0] == 200
    live_hub.wait_logged(4)
    yield


def run_sql(page: Page, sql: str) -> None:
    editor = page.get_by_label("SQL")
    editor.fill(sql)
    editor.press("Control+Enter")


def test_a_query_gives_a_table_and_a_chart(page: Page, traffic: None) -> None:
    page.get_by_role("link", name="Analyst console").click()
    expect(page.get_by_role("heading", name="Analyst console")).to_be_visible()
    schema = page.get_by_role("complementary", name="schema")
    expect(schema.get_by_role("list", name="request_log columns")).to_contain_text("latency_ms")
    run_sql(page, "SELECT model_id, count(*) AS n, sum(cost_usd) AS cost FROM request_log GROUP BY ALL")
    expect(page.get_by_role("status").filter(has_text="rows in")).to_contain_text("1 rows")
    table = page.get_by_role("table", name="Result")
    expect(table.get_by_role("row").nth(1)).to_contain_text("gpt-sql")
    expect(table.locator("td[data-col='n']")).to_have_text("4")
    expect(page.get_by_role("figure", name="n by model_id").locator("canvas")).to_have_count(1)  # bar chart

    # a time column and numbers: a line chart
    run_sql(page, "SELECT date_trunc('minute', timestamp) AS minute, count(*) AS requests FROM request_log GROUP BY 1")
    expect(page.get_by_role("figure", name="requests by minute").locator("canvas")).to_have_count(1)
    screenshot(page, "console")


def test_sort_page_and_download_csv(page: Page, traffic: None) -> None:
    page.goto("/admin/#/console")
    run_sql(page, "SELECT range AS i, range % 7 AS r, 'row ' || range AS label FROM range(120)")
    pages = page.get_by_role("navigation", name="pages")
    expect(pages).to_contain_text("1\u201350 of 120")
    table = page.get_by_role("table", name="Result")
    expect(table.locator("td[data-col='i']").first).to_have_text("0")
    pages.get_by_role("button", name="Next →").click()
    expect(pages).to_contain_text("51\u2013100 of 120")
    expect(table.locator("td[data-col='i']").first).to_have_text("50")

    header = table.get_by_role("columnheader").first.get_by_role("button")  # "i", then "i ▲"
    header.click()
    header.click()  # descending: the sort covers every row, not just this page, and goes back to page 1
    expect(table.get_by_role("columnheader", name="i ▼")).to_have_attribute("aria-sort", "descending")
    expect(pages).to_contain_text("1\u201350 of 120")
    expect(table.locator("td[data-col='i']").first).to_have_text("119")

    with page.expect_download() as info:
        page.get_by_role("button", name="Download CSV").click()
    download = info.value
    assert download.suggested_filename.startswith("tokenhub-query-") and download.suggested_filename.endswith(".csv")
    with open(download.path(), newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(io.StringIO(fh.read())))
    assert rows[0] == ["i", "r", "label"] and len(rows) == 121  # the whole result, not the page shown
    assert rows[1] == ["0", "0", "row 0"] and rows[120] == ["119", "0", "row 119"]


def test_refused_statements_show_the_servers_reason(page: Page, page_errors: PageErrors, traffic: None) -> None:
    page_errors.expected.append("400")  # the refusals are 400s the browser reports
    page.goto("/admin/#/console")
    run_sql(page, "COPY request_log TO '/tmp/out.csv'")
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("query_refused")
    expect(alert).to_contain_text("refused statement kind: COPY")
    expect(page.get_by_role("table", name="Result")).to_have_count(0)
    run_sql(page, "SELECT * FROM read_csv('/etc/passwd')")
    expect(alert).to_contain_text("table function(s) not allowed: read_csv")
    run_sql(page, "SELECT no_such_column FROM request_log")
    expect(alert).to_contain_text("query_failed")
    run_sql(page, "SELECT 1 AS ok")  # a good query clears the error
    expect(alert).to_have_count(0)
    expect(page.get_by_role("table", name="Result")).to_contain_text("1")


def test_example_queries_run(page: Page, traffic: None) -> None:
    page.goto("/admin/#/console")
    examples = page.get_by_role("group", name="example queries")
    examples.get_by_role("button", name="Cost by tenant this month").click()
    table = page.get_by_role("table", name="Result")
    expect(table.locator("td[data-col='tenant_id']")).to_have_text("default")
    expect(table.locator("td[data-col='requests']")).to_have_text("4")
    for name in ("Slowest providers (p95)", "Models by reward", "Errors by class today", "Tokens per key"):
        examples.get_by_role("button", name=name).click()
        expect(page.get_by_role("status").filter(has_text="rows in")).to_be_visible()
        expect(page.get_by_role("alert")).to_have_count(0)
    expect(table.locator("td[data-col='total_tokens']")).to_have_text("60")
