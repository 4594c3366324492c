"""The pricing refresh: a LiteLLM price table from a local HTTP server or a file updates the stored models'
prices (not vLLM's, not manual ones), the request path prices with them, and a failed round keeps them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry
from structlog.testing import LogCapture

from stages.pricing_refresh import PricingRefresher, describe_source
from store.pricing import PriceEntry, PriceTableError, parse_price_table
from tests.conftest import Hub

TABLE: dict[str, Any] = {
    "sample_spec": {"input_cost_per_token": 0.0, "output_cost_per_token": 0.0, "max_input_tokens": "docs"},
    "gpt-a": {"input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05, "max_input_tokens": 128000},
    "gpt-b": {"input_cost_per_token": 9e-06, "output_cost_per_token": 9e-06, "max_input_tokens": 64000},
    "gpt-c": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06, "max_input_tokens": 32000},
    "upstream-d": {"input_cost_per_token": 3e-06, "output_cost_per_token": 4e-06},
    "gpt-v": {"input_cost_per_token": 5e-06, "output_cost_per_token": 5e-06, "max_input_tokens": 4096},
    "broken-1": {"input_cost_per_token": "0.1", "output_cost_per_token": 1e-06},
    "broken-2": {"input_cost_per_token": -1e-06, "output_cost_per_token": 1e-06},
    "broken-3": {"input_cost_per_token": 1e-06},
    "broken-4": {"input_cost_per_token": True, "output_cost_per_token": 1e-06},
    "broken-5": ["not", "an", "object"],
    "broken-6": {"input_cost_per_token": 5.0, "output_cost_per_token": 1e-06},
}


class PriceServer:
    """Serves a price table at /prices.json; `status`, `body` and `hold` script the next answers."""

    def __init__(self) -> None:
        self.body: bytes = json.dumps(TABLE).encode()
        self.status = 200
        self.hold: asyncio.Event | None = None  # when set, the answer waits until the event is set
        self.chunked = False  # stream the body without a Content-Length
        self.hits = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> PriceServer:
        app = web.Application()
        app.router.add_get("/prices.json", self._prices)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/prices.json"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None  # a held answer is cancelled (handler_cancellation), never sent
        await self._runner.cleanup()

    async def _prices(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.hold is not None:
            await self.hold.wait()
        if not self.chunked:
            return web.Response(body=self.body, status=self.status, content_type="application/json")
        response = web.StreamResponse(status=self.status, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(self.body), 100):
            await response.write(self.body[start : start + 100])
        await response.write_eof()
        return response


@contextlib.contextmanager
def capture_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every structlog event, at every level, unrendered (so nothing is redacted on the way: a stricter
    check than the real output). The suite logs at error level otherwise."""
    saved = structlog.get_config()
    capture = LogCapture()
    structlog.configure(
        processors=[capture],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.ReturnLoggerFactory(),
        cache_logger_on_first_use=False,
    )
    try:
        yield capture.entries
    finally:
        structlog.configure(**saved)


@pytest.fixture
async def prices() -> AsyncIterator[PriceServer]:
    async with PriceServer() as server:
        yield server


async def _hub_with_models(make_hub: Any, source: str, **overrides: Any) -> Hub:
    hub: Hub = await make_hub(pricing_url=source, **overrides)
    await hub.services.pricing.round_finished.wait()  # the start-up round (no models yet)
    await hub.add_provider()
    await hub.admin("POST", "/providers", {"id": "gpu", "type": "vllm", "base_url": hub.fake.base_url}, expect=201)
    await hub.add_model("gpt-a", weight=5)  # no price: refreshed, window filled
    await hub.add_model("gpt-b", weight=5, input_per_1k=0.5, output_per_1k=0.6)  # manual: kept
    await hub.add_model("gpt-c", weight=5, max_context_tokens=8000)  # window set: kept
    await hub.add_model("d-model", weight=5, upstream_model="upstream-d")  # matched by its upstream name
    await hub.add_model("gpt-v", "gpu", weight=5)  # vLLM: never priced from the table
    await hub.add_model("gpt-unlisted", weight=5)
    return hub


def _prices_of(hub: Hub) -> dict[str, tuple[float, float, int]]:
    return {
        m.id: (m.input_per_1k, m.output_per_1k, m.max_context_tokens) for m in hub.services.snapshot.models.values()
    }


def _sources(hub: Hub) -> dict[str, str]:
    return dict(hub.services.config.db.execute("SELECT id, pricing_source FROM models").fetchall())


EXPECTED = {
    "gpt-a": (0.0025, 0.01, 128000),
    "gpt-b": (0.5, 0.6, 0),
    "gpt-c": (0.001, 0.002, 8000),
    "d-model": (0.003, 0.004, 0),
    "gpt-v": (0.0, 0.0, 0),
    "gpt-unlisted": (0.0, 0.0, 0),
}


# --- the table ---------------------------------------------------------------------------------------
def test_malformed_entries_are_skipped_and_prices_are_per_1k() -> None:
    entries, malformed = parse_price_table(json.dumps(TABLE).encode())
    assert sorted(entries) == ["gpt-a", "gpt-b", "gpt-c", "gpt-v", "upstream-d"]
    assert malformed == 6
    assert entries["gpt-a"] == PriceEntry(0.0025, 0.01, 128000)
    assert entries["upstream-d"] == PriceEntry(0.003, 0.004, 0)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [(b"<html>", "not JSON"), (b"[1, 2]", "JSON object"), (b'{"x": {"input_cost_per_token": "a"}}', "no usable")],
)
def test_an_unusable_table_is_an_error(raw: bytes, reason: str) -> None:
    with pytest.raises(PriceTableError, match=reason):
        parse_price_table(raw)


def test_a_logged_source_carries_no_credentials() -> None:
    assert describe_source("https://user:s3cret@prices.example:8443/t.json?token=s3cret#x") == (
        "https://prices.example:8443/t.json"
    )
    assert describe_source("/srv/prices.json") == "/srv/prices.json"


# --- over HTTP ---------------------------------------------------------------------------------------
async def test_refresh_from_a_url_updates_stored_prices_and_the_request_path(
    make_hub: Any, prices: PriceServer
) -> None:
    hub = await _hub_with_models(make_hub, prices.url)
    result = await hub.services.pricing.run_once()
    assert result.ok and sorted(result.updated) == ["d-model", "gpt-a", "gpt-c"]
    assert (result.manual, result.unmatched, result.malformed) == (1, 1, 6)
    assert _prices_of(hub) == EXPECTED  # the snapshot was reloaded
    listed = {m["id"]: m for m in (await hub.admin("GET", "/models"))["items"]}
    assert (listed["gpt-a"]["input_per_1k"], listed["gpt-a"]["max_context_tokens"]) == (0.0025, 128000)
    assert _sources(hub) == {
        "gpt-a": "litellm",
        "gpt-b": "manual",
        "gpt-c": "litellm",
        "d-model": "litellm",
        "gpt-v": "manual",
        "gpt-unlisted": "manual",
    }
    assert {m: listed[m]["pricing_source"] for m in ("gpt-a", "gpt-b")} == {"gpt-a": "litellm", "gpt-b": "manual"}
    # The next request is priced with the refreshed table: 10 tokens in, 5 out at gpt-a's prices.
    key = await hub.new_key()
    status, body, _ = await hub.chat(key, model_hint="gpt-a")
    assert status == 200 and body["negotiated_model"] == "gpt-a", body
    await hub.services.records.flush()
    row = next(r for r in await hub.logs() if r["model_id"] == "gpt-a")
    assert row["cost_usd"] == pytest.approx(10 / 1000 * 0.0025 + 5 / 1000 * 0.01)
    again = await hub.services.pricing.run_once()  # nothing changed: nothing written, no reload
    assert again.ok and again.updated == () and again.unchanged == 3


async def test_an_admin_price_becomes_manual_and_survives_later_refreshes(make_hub: Any, prices: PriceServer) -> None:
    hub = await _hub_with_models(make_hub, prices.url)
    await hub.services.pricing.run_once()
    await hub.admin("PATCH", "/models/gpt-a", {"input_per_1k": 0.7}, expect=200)  # an admin sets a price
    await hub.admin("PATCH", "/models/gpt-c", {"weight": 7}, expect=200)  # no price change: still litellm
    table = {**TABLE, "gpt-a": {**TABLE["gpt-a"], "input_cost_per_token": 1e-06}}
    table["gpt-c"] = {**TABLE["gpt-c"], "output_cost_per_token": 8e-06}
    prices.body = json.dumps(table).encode()
    result = await hub.services.pricing.run_once()
    assert result.updated == ("gpt-c",)
    models = _prices_of(hub)
    assert models["gpt-a"] == (0.7, 0.01, 128000) and _sources(hub)["gpt-a"] == "manual"
    assert models["gpt-c"] == (0.001, 0.008, 8000) and hub.services.snapshot.models["gpt-c"].weight == 7


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (500, b"{}", "HTTP 500"),
        (200, b"<html>not json</html>", "not JSON"),
        (200, b'{"only": {"input_cost_per_token": "x"}}', "no usable entry"),
    ],
)
async def test_a_failed_round_keeps_the_prices_logs_and_counts(
    make_hub: Any, prices: PriceServer, status: int, body: bytes, reason: str
) -> None:
    hub = await _hub_with_models(make_hub, prices.url)
    await hub.services.pricing.run_once()
    before = _prices_of(hub)
    version = hub.services.snapshot.version
    prices.status, prices.body = status, body
    with capture_logs() as logs:
        result = await hub.services.pricing.run_once()
    assert not result.ok and reason in result.error
    assert _prices_of(hub) == before and hub.services.snapshot.version == version
    failed = [e for e in logs if e["event"] == "pricing_refresh_failed"]
    assert failed and failed[0]["source"] == prices.url and reason in failed[0]["reason"]
    metrics = await (await hub.client.get("/metrics")).text()
    assert 'tokenhub_pricing_refresh_total{outcome="failed"} 1.0' in metrics
    assert 'tokenhub_pricing_refresh_total{outcome="ok"} 2.0' in metrics  # start-up round and the first one
    assert "tokenhub_pricing_models_updated_total 3.0" in metrics


def _refresher(hub: Hub, source: str, **limits: Any) -> PricingRefresher:
    """A second refresher over the hub's own stores, with test-sized limits."""
    services = hub.services
    return PricingRefresher(
        source=source,
        http=services.http,
        config=services.config,
        reload=services.reload_config,
        registry=CollectorRegistry(),
        **limits,
    )


async def test_the_fetch_is_bounded_and_its_failures_keep_the_prices(make_hub: Any, prices: PriceServer) -> None:
    hub = await _hub_with_models(make_hub, prices.url)
    size = len(prices.body)
    result = await _refresher(hub, prices.url, max_bytes=256).run_once()
    assert not result.ok and result.error == f"the table is {size} bytes, over the 256-byte limit"
    prices.chunked = True  # no Content-Length: counted while reading
    result = await _refresher(hub, prices.url, max_bytes=256).run_once()
    assert not result.ok and result.error == "the table is over the 256-byte limit"
    prices.hold = asyncio.Event()  # the server does not answer while held
    result = await _refresher(hub, prices.url, timeout_secs=0.2).run_once()
    assert not result.ok and result.error == "no complete answer within 0.2 s"
    assert _prices_of(hub)["gpt-a"] == (0.0, 0.0, 0)  # nothing applied by any of them
    prices.hold = None
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/prices.json"
    result = await _refresher(hub, dead).run_once()
    assert not result.ok and result.error == "connection failed: ClientConnectorError"
    assert (await _refresher(hub, prices.url, max_bytes=size).run_once()).ok  # exactly at the limit is fine
    assert _prices_of(hub)["gpt-a"] == (0.0025, 0.01, 128000)


async def test_credentials_in_the_url_never_reach_the_log(make_hub: Any, prices: PriceServer) -> None:
    secret_url = prices.url.replace("http://", "http://reader:pr1ce-s3cret@") + "?token=pr1ce-s3cret"
    hub = await _hub_with_models(make_hub, secret_url)
    with capture_logs() as logs:
        assert (await hub.services.pricing.run_once()).ok
        prices.status = 503
        assert not (await hub.services.pricing.run_once()).ok
    assert logs and "pr1ce-s3cret" not in repr(logs)
    assert {e["source"] for e in logs if e["event"].startswith("pricing_")} == {prices.url}


# --- from a file, and off --------------------------------------------------------------------------
async def test_refresh_from_a_local_file(make_hub: Any, tmp_path: Path) -> None:
    table = tmp_path / "model_prices_and_context_window.json"
    table.write_text(json.dumps(TABLE))
    hub = await _hub_with_models(make_hub, str(table))
    result = await hub.services.pricing.run_once()
    assert result.ok and sorted(result.updated) == ["d-model", "gpt-a", "gpt-c"]
    assert _prices_of(hub) == EXPECTED
    table.unlink()
    result = await hub.services.pricing.run_once()
    assert not result.ok and result.error == "cannot read: No such file or directory"
    assert _prices_of(hub) == EXPECTED


async def test_no_source_or_disabled_means_nothing_is_fetched(make_hub: Any, prices: PriceServer) -> None:
    hub = await make_hub()  # the default: no TOKENHUB_PRICING_URL
    assert hub.services.pricing.source == ""
    off = await make_hub(
        pricing_url=prices.url, pricing_refresh_enabled=False, data_dir=hub.services.settings.data_dir.parent / "off"
    )
    assert off.services.pricing.source == ""
    key = await off.new_key()
    await off.add_provider()
    await off.add_model("gpt-a", weight=5)
    status, body, _ = await off.chat(key)  # a full round trip: a started refresher would have fetched by now
    assert status == 200 and body["negotiated_model"] == "gpt-a"
    assert prices.hits == 0 and off.services.pricing.last is None
