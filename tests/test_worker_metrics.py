"""pipeline/worker_metrics.py: every worker's series in one exposition, as Prometheus and promtool read it.

The real processes (two workers, a scrape through each, the owner killed) are in tests/test_workers.py.
"""

from __future__ import annotations

import dataclasses
import subprocess

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from pipeline.errors import InvalidRequest
from pipeline.metrics import Metrics
from pipeline.worker_metrics import FORGET_SECS, WorkerMetrics, families, render
from store.owner_wire import dumps, loads
from tests.fakes.clock import FakeClock
from tests.test_observability_api import samples, value
from tests.test_record_writer import make_record


def _registry(requests: int, latency_ms: float) -> CollectorRegistry:
    registry = CollectorRegistry()
    counter = Counter("demo_requests", "Requests", ["model"], registry=registry)
    counter.labels("m1").inc(requests)
    Gauge("demo_in_flight", "In flight", registry=registry).set(requests % 3)
    Histogram("demo_latency_ms", "Latency", buckets=(1, 10), registry=registry).observe(latency_ms)
    return registry


def test_each_workers_samples_come_labelled_with_its_index_and_nothing_else_changes() -> None:
    first, second = _registry(3, 0.5), _registry(5, 20.0)
    text = render({0: families(first), 1: families(second)}, {0: 0.0, 1: 1.5}).decode()

    merged = samples(text)
    for index, registry in ((0, first), (1, second)):
        for (name, labels), own in samples(generate_latest(registry).decode()).items():
            assert merged.pop((name, labels | {("worker", str(index))})) == own
    ages = {labels: age for (name, labels), age in merged.items() if name == "tokenhub_worker_metrics_age_seconds"}
    assert ages == {frozenset({("worker", "0")}): 0.0, frozenset({("worker", "1")}): 1.5}
    assert len(merged) == 2  # nothing but the ages besides the workers' own samples
    # each family once, with its type: Prometheus refuses a family that appears twice
    assert text.count("# TYPE demo_requests_total counter") == 1
    assert text.count("# TYPE demo_latency_ms histogram") == 1


def test_a_copy_survives_the_owners_restricted_unpickling() -> None:
    copy = families(Metrics().registry)
    assert loads(dumps((1, copy, True))) == (1, copy, True)


def test_promtool_accepts_the_merged_exposition_of_tokenhubs_own_registry() -> None:
    metrics = Metrics()
    for n in range(4):  # every per-request series, a failure's too
        metrics.observe_request(dataclasses.replace(make_record(n), status=502 if n % 2 else 200), 1.0)
    workers = {index: families(metrics.registry) for index in range(3)}
    result = subprocess.run(
        ["promtool", "check", "metrics"],
        input=render(workers, dict.fromkeys(workers, 0.0)),
        capture_output=True,
        timeout=60,
    )
    # exit 3 is promtool's naming advice (the `_ms` names); a parse error (a family twice, ...) exits 1
    assert result.returncode in (0, 3) and b"error" not in result.stderr, result.stderr


async def test_the_owner_answers_with_every_workers_last_copy_until_it_is_forgotten() -> None:
    clock = FakeClock()
    owner = WorkerMetrics(_registry(3, 0.5), worker_index=0, clock=clock)
    assert await owner.receive((1, families(_registry(5, 20.0)), False)) is None
    clock.now += 1.0
    text = await owner.receive((2, families(_registry(7, 2.0)), True))
    assert text is not None
    totals = {labels: n for (name, labels), n in samples(text.decode()).items() if name == "demo_requests_total"}
    assert totals == {frozenset({("model", "m1"), ("worker", str(w))}): n for w, n in ((0, 3.0), (1, 5.0), (2, 7.0))}

    # a newer copy replaces the older; a worker that stopped sending leaves the scrape after FORGET_SECS
    clock.now += FORGET_SECS - 1.0
    await owner.receive((1, families(_registry(6, 20.0)), False))
    clock.now += 0.5
    seen = samples((await owner.exposition()).decode())
    assert value(seen, "demo_requests_total", model="m1", worker="1") == 6.0
    assert value(seen, "demo_requests_total", model="m1", worker="2") == 7.0  # FORGET_SECS - 0.5 old
    assert value(seen, "tokenhub_worker_metrics_age_seconds", worker="1") == 0.5
    clock.now += 1.0
    seen = samples((await owner.exposition()).decode())
    assert {labels for name, labels in seen if name == "tokenhub_worker_metrics_age_seconds"} == {
        frozenset({("worker", "0")}),
        frozenset({("worker", "1")}),
    }
    assert not any(("worker", "2") in labels for _, labels in seen)


@pytest.mark.parametrize(
    "value",
    [
        "not a tuple",
        (1, [], True, "extra"),
        (0, [], False),  # the owner's own index
        (-1, [], False),
        (1, "families", False),
        (1, [("demo", "counter", "help", "")], False),  # no samples
        (1, [("demo", "no-such-type", "help", "", [])], False),
        (1, [("demo", "counter", "help", "", [("demo_total", {"a": 1}, 1.0)])], False),  # a label's value
        (1, [("demo", "counter", "help", "", [("demo_total", {}, "1")])], False),  # a value that is no float
        (1, [], "yes"),
    ],
)
async def test_a_malformed_copy_is_refused_and_changes_nothing(value: object) -> None:
    owner = WorkerMetrics(_registry(3, 0.5), worker_index=0, clock=FakeClock())
    before = await owner.receive((1, families(_registry(5, 20.0)), True))
    with pytest.raises(InvalidRequest):
        await owner.receive(value)
    assert await owner.exposition() == before


async def test_one_process_answers_its_registry_as_it_is() -> None:
    registry = _registry(3, 0.5)
    assert await WorkerMetrics(registry).exposition() == generate_latest(registry)
