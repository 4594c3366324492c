"""OpenTelemetry tracing (spec row 57), against a collector stub that is a real HTTP server decoding OTLP
protobuf: a span per request, per stage and per provider attempt, parent/child links, the client's W3C
trace context continued and passed upstream, no secrets in spans, and nothing at all when off."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from pipeline.settings import SettingsError, load_settings
from pipeline.stage import stages_in
from pipeline.tracing import TracedStage
from pipeline.web import PIPELINES
from tests.conftest import ADMIN_TOKEN, Hub
from tests.fakes.openai_fake import Fail
from tests.fakes.otel_collector import FakeCollector, Span

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
SERVER, CLIENT = 2, 3  # opentelemetry.proto Span.SpanKind


@pytest.fixture
async def collector() -> AsyncIterator[FakeCollector]:
    async with FakeCollector() as server:
        yield server


@pytest.fixture
async def traced(collector: FakeCollector, make_hub: Callable[..., Any]) -> tuple[Hub, str]:
    # the collector first, so it outlives the hub: stopping the hub exports the last spans
    hub = await make_hub(otel_enabled=True, otel_endpoint=collector.url, otel_service_name="tokenhub-test")
    await hub.add_provider()
    await hub.add_model("gpt-a", weight=9, max_context_tokens=8000)
    await hub.add_model("gpt-b", weight=1, max_context_tokens=8000)
    return hub, await hub.new_key()


async def _spans(hub: Hub, collector: FakeCollector, wanted: Callable[[list[Span]], bool]) -> list[Span]:
    """Flush the exporter until the collector holds what the test waits for (a streamed response may reach
    the client a moment before its request span ends)."""
    tracing = hub.services.tracing
    assert tracing is not None
    for _ in range(40):
        await tracing.flush()
        if wanted(collector.spans):
            return collector.spans
        await asyncio.sleep(0.05)
    raise AssertionError(f"spans never arrived: {[s.name for s in collector.spans]}")


def _upstream_traceparent(hub: Hub) -> list[str]:
    return [value for r in hub.fake.requests for name, value in r["headers"].items() if name.lower() == "traceparent"]


def _has_request(spans: list[Span]) -> bool:
    return any(s.name == "tokenhub.request" for s in spans)


async def test_client_trace_continues_through_stages_to_the_provider(
    traced: tuple[Hub, str], collector: FakeCollector
) -> None:
    hub, key = traced
    headers = {"traceparent": TRACEPARENT, "tracestate": "vendor=abc"}
    body = await hub.chat_ok(key, headers=headers)
    spans = await _spans(hub, collector, _has_request)
    by_id = {s.span_id: s for s in spans}

    [request] = collector.named("tokenhub.request")
    assert request.trace_id == TRACE_ID and request.parent_span_id == CLIENT_SPAN and request.kind == SERVER
    assert request.attributes["http.request.method"] == "POST" and request.attributes["url.path"] == "/v1/chat"
    assert request.attributes["http.response.status_code"] == 200 and request.attributes["tokenhub.request_id"]
    assert request.resource["service.name"] == "tokenhub-test"
    assert collector.content_types == {"application/x-protobuf"}

    # one span per stage, nested in pipeline order under the request span
    stage_spans = [s for s in spans if s.name.startswith("tokenhub.stage.")]
    names = [s.attributes["tokenhub.stage"] for s in stage_spans]
    assert {"record", "auth", "policy", "dispatch"} <= set(names)
    for span in stage_spans:
        assert span.trace_id == TRACE_ID
        chain = []
        parent = by_id.get(span.parent_span_id)
        while parent is not None:
            chain.append(parent.name)
            parent = by_id.get(parent.parent_span_id)
        assert chain[-1] == "tokenhub.request"
    dispatch = next(s for s in stage_spans if s.attributes["tokenhub.stage"] == "dispatch")

    # the provider attempt: a client span under dispatch, and its context sent upstream
    [attempt] = collector.named("tokenhub.provider_attempt")
    assert attempt.kind == CLIENT and attempt.trace_id == TRACE_ID
    assert by_id[attempt.parent_span_id].name.startswith("tokenhub.") and attempt.parent_span_id
    ancestors = set()
    parent = by_id.get(attempt.parent_span_id)
    while parent is not None:
        ancestors.add(parent.span_id)
        parent = by_id.get(parent.parent_span_id)
    assert dispatch.span_id in ancestors
    assert attempt.attributes["server.address"] == "127.0.0.1" and attempt.attributes["url.path"].endswith(
        "/chat/completions"
    )
    assert attempt.attributes["http.response.status_code"] == 200
    [upstream] = _upstream_traceparent(hub)
    assert upstream == f"00-{TRACE_ID}-{attempt.span_id}-01"
    tracestate = [v for n, v in hub.fake.requests[0]["headers"].items() if n.lower() == "tracestate"]
    assert tracestate == ["vendor=abc"]
    assert body["negotiated_model"] == "gpt-a"

    # nothing secret in any span: provider key, API key, admin token, Authorization
    everything = repr(spans)
    for secret in ("sk-test-secret", key, ADMIN_TOKEN, "Bearer"):
        assert secret not in everything


async def test_failover_attempts_are_spans_with_their_outcome(
    traced: tuple[Hub, str], collector: FakeCollector
) -> None:
    hub, key = traced
    hub.fake.script("gpt-a", Fail(401, {"error": {"message": "bad things", "type": "invalid_api_key"}}))
    await hub.chat_ok(key)

    def both(spans: list[Span]) -> bool:
        return _has_request(spans) and len(collector.named("tokenhub.provider_attempt")) >= 2

    spans = await _spans(hub, collector, both)
    attempts = collector.named("tokenhub.provider_attempt")
    [request] = collector.named("tokenhub.request")
    assert all(a.trace_id == request.trace_id for a in attempts)
    failed = [a for a in attempts if "error.type" in a.attributes]
    assert failed and failed[0].attributes["http.response.status_code"] == 401
    assert attempts[-1].attributes["http.response.status_code"] == 200
    assert len(_upstream_traceparent(hub)) == len(attempts)  # every attempt carried its own span's context
    assert "bad things" not in repr(spans)


async def test_stream_and_error_requests_are_traced_without_a_client_context(
    traced: tuple[Hub, str], collector: FakeCollector
) -> None:
    hub, key = traced
    resp = await hub.client.post(
        "/v1/chat/completions",
        json={"model": "auto", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert resp.status == 200 and b"[DONE]" in await resp.read()
    refused = await hub.client.post(
        "/v1/chat", json={"request": {"messages": []}}, headers={"Authorization": "Bearer x"}
    )
    assert refused.status == 401
    await _spans(hub, collector, lambda s: len(collector.named("tokenhub.request")) >= 2)
    requests = {s.attributes["url.path"]: s for s in collector.named("tokenhub.request")}
    stream = requests["/v1/chat/completions"]
    assert stream.parent_span_id == "" and stream.trace_id != TRACE_ID  # a new trace
    [upstream] = _upstream_traceparent(hub)
    assert upstream.split("-")[1] == stream.trace_id
    assert requests["/v1/chat"].attributes["http.response.status_code"] == 401
    assert not any(
        s.name == "tokenhub.request" and s.attributes["url.path"].startswith("/admin") for s in collector.spans
    )


async def test_off_means_no_wrappers_and_nothing_sent(ready_hub: tuple[Hub, str]) -> None:
    hub, key = ready_hub
    services = hub.services
    assert services.tracing is None
    stages = list(stages_in(hub.client.server.app[PIPELINES].chain_for("default")))
    assert stages and not any(isinstance(s, TracedStage) for s in stages)
    assert services.http._attempt.__func__ is type(services.http)._attempt  # the plain method
    assert len(hub.client.server.app.middlewares) == 1  # request ids and errors only
    await hub.chat_ok(key, headers={"traceparent": TRACEPARENT})
    assert _upstream_traceparent(hub) == []  # the client's context is not forwarded either


def test_endpoint_settings() -> None:
    assert load_settings({"TOKENHUB_OTEL_ENDPOINT": "collector:4318"}).otel_endpoint == "http://collector:4318"
    assert load_settings({}).otel_endpoint == "http://localhost:4318" and not load_settings({}).otel_enabled
    for bad in ("ftp://collector", "http://", "http://a b"):
        with pytest.raises(SettingsError, match="TOKENHUB_OTEL_ENDPOINT"):
            load_settings({"TOKENHUB_OTEL_ENDPOINT": bad})
