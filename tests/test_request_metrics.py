"""The per-request series (pipeline/request_metrics.py) expose exactly what prometheus-client's Counter and
Histogram objects would for the same requests: names, labels, types, cumulative buckets, sums and `_created`."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from pipeline.metrics import LATENCY_BUCKETS_MS, OVERHEAD_BUCKETS_MS, Metrics
from pipeline.types import RequestRecord
from tests.test_record_writer import make_record

RECORDS = [  # (record, upstream_ms): values on bucket bounds, between them and past the last; failures; spend
    (make_record(1, latency_ms=20.0, cost_usd=0.001, input_tokens=20, output_tokens=30), 19.5),
    (make_record(2, latency_ms=12.5, mode="cheap"), 12.0),
    (make_record(3, latency_ms=99_999.0, model_id="other", provider_id="p2"), 1.0),
    (make_record(4, latency_ms=0.1), None),
    (make_record(5, status=502, cost_usd=0.0005, output_tokens=3), None),
    (make_record(6, status=429, model_id="", provider_id=""), None),
]


def reference_exposition(records: list[tuple[RequestRecord, float | None]]) -> str:
    """What the series were before: prometheus-client's objects, updated the way observe_request did."""
    r = CollectorRegistry()
    requests = Counter("tokenhub_requests", "Requests recorded", ["mode", "model", "provider", "status"], registry=r)
    latency = Histogram(
        "tokenhub_request_latency_ms",
        "Whole-chain latency of successful requests (ms)",
        ["mode", "model", "provider"],
        buckets=LATENCY_BUCKETS_MS,
        registry=r,
    )
    cost = Counter("tokenhub_cost_usd", "Cost of successful requests (USD)", ["model", "provider"], registry=r)
    tokens = Counter("tokenhub_tokens", "Tokens of successful requests", ["model", "provider", "direction"], registry=r)
    overhead = Histogram(
        "tokenhub_overhead_ms",
        "Time TokenHub adds to a served request: total latency minus the provider call (ms)",
        buckets=OVERHEAD_BUCKETS_MS,
        registry=r,
    )
    for record, upstream in records:
        if upstream is not None:
            overhead.observe(max(0.0, record.latency_ms - upstream))
        series = (record.mode, record.model_id, record.provider_id)
        ok, failed = requests.labels(*series, "ok"), requests.labels(*series, "error")
        latency_child = latency.labels(*series)
        spent = cost.labels(record.model_id, record.provider_id)
        tokens_in = tokens.labels(record.model_id, record.provider_id, "input")
        tokens_out = tokens.labels(record.model_id, record.provider_id, "output")
        if record.status < 400:
            ok.inc()
            latency_child.observe(record.latency_ms)
        else:
            failed.inc()
        spent.inc(record.cost_usd)
        tokens_in.inc(record.input_tokens)
        tokens_out.inc(record.output_tokens)
    return generate_latest(r).decode()


def comparable(exposition: str, names: tuple[str, ...]) -> list[str]:
    """The lines of these families, sorted, with the `_created` timestamps masked."""
    lines = [line for line in exposition.splitlines() if any(name in line for name in names)]
    return sorted(re.sub(r"(_created(?:\{[^}]*\})?) \S+$", r"\1 T", line) for line in lines)


def test_the_per_request_series_expose_what_prometheus_clients_objects_did() -> None:
    metrics = Metrics()
    for record, upstream in RECORDS:
        metrics.observe_request(record, upstream)
    names = ("tokenhub_requests", "tokenhub_request_latency_ms", "tokenhub_cost_usd", "tokenhub_tokens_", "overhead")
    ours = comparable(generate_latest(metrics.registry).decode(), names)
    assert ours == comparable(reference_exposition(RECORDS), names)
    assert 'tokenhub_request_latency_ms_bucket{le="20.0",mode="normal",model="gpt-test",provider="fake"} 2.0' in ours
    assert 'tokenhub_overhead_ms_bucket{le="0.5"} 2.0' in ours  # 20.0 - 19.5 lands on the bound: le is inclusive
    assert "tokenhub_request_errors_total" not in "\n".join(ours)


def test_a_failed_request_counts_its_status_and_its_spend() -> None:
    metrics = Metrics()
    metrics.observe_request(make_record(1, status=502, cost_usd=0.25, output_tokens=7))
    exposition = generate_latest(metrics.registry).decode()
    assert 'tokenhub_requests_total{mode="normal",model="gpt-test",provider="fake",status="error"} 1.0' in exposition
    assert 'tokenhub_request_errors_total{http_status="502",mode="normal",model="gpt-test",provider="fake"} 1.0' in (
        exposition
    )
    assert 'tokenhub_cost_usd_total{model="gpt-test",provider="fake"} 0.25' in exposition
    assert 'tokenhub_tokens_total{direction="output",model="gpt-test",provider="fake"} 7.0' in exposition
    assert 'tokenhub_request_latency_ms_count{mode="normal",model="gpt-test",provider="fake"} 0.0' in exposition
