"""What ``/metrics`` answers, in one process and across the workers of ``tokenhub serve --workers N``.

Every worker counts what it serves in its own registry. The workers other than the DuckDB owner (worker 0) send
a copy of theirs to the owner over its Unix socket every PUSH_SECS, and again with each scrape they take; the
owner answers a scrape with every worker's series, each sample labelled ``worker="<index>"``. So whichever
worker the kernel gives the scrape's connection to, Prometheus sees the whole machine, and sums it with
``sum without (worker) (...)`` (docs/scaling.md). A copy travels as plain tuples of names, labels and numbers,
which the owner's restricted unpickling (store/owner_wire.py) takes as they are.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.metrics_core import METRIC_TYPES

from pipeline.errors import InvalidRequest
from store.owner_link import OwnerFailed, OwnerLink, OwnerUnavailable

__all__ = ["METRICS_ROUTE", "PUSH_SECS", "Families", "WorkerMetrics"]

log = structlog.get_logger("tokenhub.metrics")

METRICS_ROUTE = "/internal/v1/metrics"
PUSH_SECS = 2.0  # how old, at most, another worker's counters are in a scrape (Prometheus scrapes every 15 s+)
FORGET_SECS = 60.0  # a worker that stopped sending (one fewer worker after a restart) leaves the scrape then
SCRAPE_WAIT_SECS = 1.0  # a worker's scrape while the owner restarts: its own series after this
SCRAPE_TIMEOUT_SECS = 5.0  # under Prometheus's default scrape timeout (10 s)

Sample = tuple[str, dict[str, str], float]
Family = tuple[str, str, str, str, list[Sample]]  # name, type, help, unit, samples
Families = list[Family]


def families(registry: CollectorRegistry) -> Families:
    """A registry's series as plain values (none of TokenHub's carry timestamps or exemplars)."""
    return [
        (m.name, m.type, m.documentation, m.unit, [(s.name, dict(s.labels), float(s.value)) for s in m.samples])
        for m in registry.collect()
    ]


def render(by_worker: dict[int, Families], ages: dict[int, float]) -> bytes:
    """Prometheus's text format: each family once, with every worker's samples labelled by its index, then each
    worker's copy's age."""
    merged: dict[str, Metric] = {}
    for index in sorted(by_worker):
        worker = str(index)
        for name, kind, documentation, unit, samples in by_worker[index]:
            metric = merged.get(name)
            if metric is None:
                metric = merged[name] = Metric(name, documentation, kind, unit)
            for sample_name, labels, value in samples:
                metric.add_sample(sample_name, {**labels, "worker": worker}, value)
    age = GaugeMetricFamily(
        "tokenhub_worker_metrics_age_seconds",
        f"How old each worker's series in this scrape are (the others send theirs every {PUSH_SECS:g} s)",
        labels=["worker"],
    )
    for index in sorted(ages):
        age.add_metric([str(index)], round(ages[index], 3))
    return generate_latest(_Collected([*merged.values(), age]))  # type: ignore[arg-type]


def _well_formed(copy: Any) -> bool:
    """``families``' shape, checked before it is kept: a bad copy would otherwise break every later scrape."""
    return isinstance(copy, list) and all(
        isinstance(family, tuple)
        and len(family) == 5
        and all(isinstance(field, str) for field in family[:4])
        and family[1] in METRIC_TYPES
        and isinstance(family[4], list)
        and all(_well_formed_sample(sample) for sample in family[4])
        for family in copy
    )


def _well_formed_sample(sample: Any) -> bool:
    return (
        isinstance(sample, tuple)
        and len(sample) == 3
        and isinstance(sample[0], str)
        and isinstance(sample[1], dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in sample[1].items())
        and isinstance(sample[2], float)
    )


class _Collected:
    """What ``generate_latest`` reads: anything with ``collect()``."""

    def __init__(self, metrics: Iterable[Metric]) -> None:
        self._metrics = list(metrics)

    def collect(self) -> list[Metric]:
        return self._metrics


class WorkerMetrics:
    """``/metrics``'s answer for this process: its registry alone (one process), every worker's (the owner),
    or the owner's answer with this worker's newest counters in it (another worker)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        worker_index: int = -1,
        owner: OwnerLink | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.worker_index = worker_index
        self.owner = owner
        self._clock = clock
        self._received: dict[int, tuple[float, Families]] = {}  # the owner's: each other worker's last copy

    async def exposition(self) -> bytes:
        if self.worker_index < 0:
            return generate_latest(self.registry)
        if self.owner is None:
            return await self._everyone()
        own = families(self.registry)
        try:
            answer = await self.owner.post(
                METRICS_ROUTE,
                (self.worker_index, own, True),
                wait_secs=SCRAPE_WAIT_SECS,
                timeout_secs=SCRAPE_TIMEOUT_SECS,
            )
        except (OwnerUnavailable, OwnerFailed) as exc:
            # Better this worker's series than a failed scrape: the others' resume with the owner.
            log.warning("metrics_owner_unavailable", error=str(exc), answered="this worker's series only")
            return render({self.worker_index: own}, {self.worker_index: 0.0})
        return bytes(answer)

    async def push(self) -> None:
        """A worker's periodic job: its counters to the owner, so a scrape that the owner answers has them."""
        if self.owner is None:
            return
        try:
            copy = (self.worker_index, families(self.registry), False)
            await self.owner.post(METRICS_ROUTE, copy, wait_secs=0, timeout_secs=SCRAPE_TIMEOUT_SECS)
        except (OwnerUnavailable, OwnerFailed) as exc:  # the owner restarting: the next push brings them
            log.debug("metrics_push_skipped", error=str(exc))

    async def receive(self, value: Any) -> bytes | None:
        """The owner's side of ``METRICS_ROUTE``: keep a worker's copy; with a scrape, answer everyone's."""
        if not (isinstance(value, tuple) and len(value) == 3):
            raise InvalidRequest("expected (worker index, families, scrape)")
        index, copy, scrape = value
        if not (isinstance(index, int) and index > 0 and isinstance(scrape, bool) and _well_formed(copy)):
            raise InvalidRequest("expected (worker index, families, scrape)")
        self._received[index] = (self._clock(), copy)
        return await self._everyone() if scrape else None

    async def _everyone(self) -> bytes:
        now = self._clock()
        self._received = {i: got for i, got in self._received.items() if now - got[0] <= FORGET_SECS}
        by_worker = {i: copy for i, (_, copy) in self._received.items()}
        ages = {i: now - at for i, (at, _) in self._received.items()}
        # Read on the loop (this registry's series are updated there, without a lock); rendered in a thread,
        # because every worker's samples take ~6 µs each (~35 ms for four workers' 1,300 each): the loop then
        # serves on between the GIL's switches instead of stalling for all of it (docs/scaling.md).
        by_worker[self.worker_index], ages[self.worker_index] = families(self.registry), 0.0
        return await asyncio.to_thread(render, by_worker, ages)
