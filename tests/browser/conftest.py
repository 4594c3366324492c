"""Browser tests of the admin web UI: Debian's chromium, headless, driven by Playwright (never a browser
download), against the real `tokenhub serve` process in front of a fake provider that is a real local server.

One TokenHub and one browser per test module (each starts in about a second); a fresh signed-in browser
context per test. Every test fails if the page wrote an error to the console or threw.
Set TOKENHUB_UI_SCREENSHOTS=1 to (re)write the screenshots under docs/img/.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, sync_playwright

from tests.conftest import ADMIN_TOKEN
from tests.fakes.openai_fake import FakeOpenAI
from tests.support.server import free_port

T = TypeVar("T")
CHROMIUM = os.environ.get("TOKENHUB_TEST_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "img"
# Chromium as the machine allows it: headless, no sandbox as root, no calls home (the network is closed).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class ThreadedFake:
    """The fake OpenAI-compatible provider on its own event loop in a thread, so sync tests can script it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.fake = FakeOpenAI()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fake-provider", daemon=True)

    def __enter__(self) -> ThreadedFake:
        self._thread.start()
        self.run(self.fake.start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.run(self.fake.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def call(self, fn: Callable[[FakeOpenAI], T]) -> T:
        """fn(fake) on the fake's loop thread (scripting it from the test thread would race its handlers)."""

        async def inside() -> T:
            return fn(self.fake)

        return self.run(inside())

    @property
    def base_url(self) -> str:
        return self.fake.base_url


class LiveHub:
    """`tokenhub serve` as a subprocess, and a small synchronous client for its API."""

    def __init__(self, data_dir: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TOKENHUB_")},
            "TOKENHUB_DATA_DIR": str(data_dir),
            "TOKENHUB_LISTEN_ADDR": f"127.0.0.1:{self.port}",
            "TOKENHUB_ADMIN_TOKEN": ADMIN_TOKEN,
            "TOKENHUB_ADMIN_RATE_LIMIT_RPS": "1000",
            "TOKENHUB_ADMIN_RATE_LIMIT_BURST": "1000",
            "TOKENHUB_RATE_LIMIT_RPS": "1000",
            "TOKENHUB_RATE_LIMIT_BURST": "1000",
            "TOKENHUB_VAULT_KDF_TIME_COST": "1",
            "TOKENHUB_VAULT_KDF_MEMORY_KIB": "64",
            "TOKENHUB_VAULT_KDF_PARALLELISM": "1",
            "TOKENHUB_VAULT_KDF_ALLOW_WEAK": "true",
            "TOKENHUB_HEALTH_PROBE_INTERVAL_SECS": "0",
            "TOKENHUB_EXPLORATION_TEMP": "0",
            "TOKENHUB_LOG_LEVEL": "warn",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LiveHub:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "serve"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"tokenhub exited with {self.proc.returncode} at start")
            try:
                urllib.request.urlopen(f"{self.url}/healthz", timeout=1)
                return self
            except urllib.error.HTTPError:
                return self  # 503: up, just no provider yet
            except OSError:
                time.sleep(0.05)
        raise AssertionError("tokenhub did not start within 20 s")

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def call(self, method: str, path: str, body: Any = None, *, token: str = ADMIN_TOKEN) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        req.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def admin(self, method: str, path: str, body: Any = None, *, expect: int | None = None) -> Any:
        status, data = self.call(method, f"/admin/v1{path}", body)
        if expect is not None:
            assert status == expect, (status, data)
        return data

    def wait_logged(self, count: int, query: str = "") -> None:
        """Until the request log holds `count` rows matching `query`: a request is recorded just after its
        answer is sent, and a page that reads the log must not race the writer."""
        deadline = time.monotonic() + 10
        while self.admin("GET", f"/logs?limit=1&{query}")["total"] < count:
            assert time.monotonic() < deadline, f"fewer than {count} rows for {query!r}"
            time.sleep(0.05)

    def chat(self, key: str, content: str = "hello", **fields: Any) -> tuple[int, Any]:
        body = {"request": {"messages": [{"role": "user", "content": content}], **fields}}
        return self.call("POST", "/v1/chat", body, token=key)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Per module: while Playwright's sync API is open its event loop counts as running on this thread, and
    the suite's asyncio tests (in other modules) could not start their own."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make system-deps` installs Debian's chromium")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def fake() -> Iterator[ThreadedFake]:
    with ThreadedFake() as fake:
        yield fake


@pytest.fixture(scope="module")
def live_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveHub]:
    with LiveHub(tmp_path_factory.mktemp("ui") / "data") as hub:
        yield hub


class PageErrors:
    """What the page wrote to the console as an error, and what it threw."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.expected: list[str] = []  # substrings of errors a test provokes on purpose (a refused request)

    def console(self, message: ConsoleMessage) -> None:
        if message.type == "error" and not any(part in message.text for part in self.expected):
            self.items.append(f"console: {message.text} at {message.location}")

    def thrown(self, error: Exception) -> None:
        self.items.append(f"uncaught: {error}")


def open_page(context: BrowserContext, errors: PageErrors) -> Page:
    page = context.new_page()
    page.on("console", errors.console)
    page.on("pageerror", errors.thrown)
    page.set_default_timeout(10_000)
    return page


@pytest.fixture
def page_errors() -> PageErrors:
    return PageErrors()


@pytest.fixture
def context(browser: Browser, live_hub: LiveHub) -> Iterator[BrowserContext]:
    context = browser.new_context(base_url=live_hub.url, viewport={"width": 1280, "height": 800})
    yield context
    context.close()


@pytest.fixture
def page(context: BrowserContext, live_hub: LiveHub, page_errors: PageErrors) -> Iterator[Page]:
    """A page signed in through the API (the sign-in form has its own test), on the landing panel."""
    response = context.request.post("/admin/v1/session", data={"token": ADMIN_TOKEN})
    assert response.status == 201, response.text()
    page = open_page(context, page_errors)
    page.goto("/admin/")
    page.get_by_role("navigation", name="panels").wait_for()
    yield page
    assert not page_errors.items, page_errors.items


def screenshot(page: Page, name: str) -> None:
    """docs/img/<name>.png, when TOKENHUB_UI_SCREENSHOTS=1 (test runs leave the committed images alone)."""
    if os.environ.get("TOKENHUB_UI_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=False)
