"""The per-request Prometheus series, kept as plain numbers and turned into metric families at scrape time.

Every request updates seven of them (its count, its latency, its spend and tokens, TokenHub's overhead).
prometheus-client takes a lock for each update and walks a histogram's buckets in Python: ~4 µs a request in a
loop, ~6 µs in the server under load. Here an update is arithmetic on a slot (~1 µs). No lock is needed:
requests are recorded on the event loop, and /metrics is scraped there too (pipeline/edge/status.py), so a
scrape never sees a request half-counted. The exposition is prometheus-client's own: the same names, labels,
types, buckets and `_created` samples as the Counter and Histogram objects these replace.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

__all__ = ["Histogram", "RequestSeries", "Spend", "Totals"]


class Histogram:
    """Counts per bucket (the last one +Inf) and the sum; cumulated only when scraped."""

    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # the first bucket whose upper bound >= value
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        cumulative, running = [], 0
        for bound, count in zip((*map(floatToGoString, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            cumulative.append((bound, float(running)))
        return cumulative


class Spend:
    """A (model, provider)'s cost and tokens, shared by every mode's series of that pair."""

    __slots__ = ("cost", "created", "tokens_in", "tokens_out")

    def __init__(self) -> None:
        self.cost = 0.0
        self.tokens_in = 0
        self.tokens_out = 0
        self.created = time.time()


class Totals:
    """A (mode, model, provider)'s request counts and latency histogram, and its pair's spend."""

    __slots__ = ("created", "failed", "latency", "ok", "spend")

    def __init__(self, latency_buckets: Sequence[float], spend: Spend) -> None:
        self.ok = 0
        self.failed = 0
        self.latency = Histogram(latency_buckets)
        self.spend = spend
        self.created = time.time()


class RequestSeries(Collector):
    """tokenhub_requests, tokenhub_request_latency_ms, tokenhub_cost_usd, tokenhub_tokens, tokenhub_overhead_ms."""

    def __init__(self, latency_buckets: Sequence[float], overhead_buckets: Sequence[float]) -> None:
        self._latency_buckets = tuple(latency_buckets)
        self._totals: dict[tuple[str, str, str], Totals] = {}
        self._spend: dict[tuple[str, str], Spend] = {}
        self.overhead = Histogram(overhead_buckets)

    def totals(self, mode: str, model: str, provider: str) -> Totals:
        """The series of one (mode, model, provider), made on its first request."""
        totals = self._totals.get((mode, model, provider))
        if totals is None:
            spend = self._spend.get((model, provider))
            if spend is None:
                spend = self._spend[model, provider] = Spend()
            totals = self._totals[mode, model, provider] = Totals(self._latency_buckets, spend)
        return totals

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "tokenhub_requests", "Requests recorded", labels=["mode", "model", "provider", "status"]
        )
        latency = HistogramMetricFamily(
            "tokenhub_request_latency_ms",
            "Whole-chain latency of successful requests (ms)",
            labels=["mode", "model", "provider"],
        )
        for (mode, model, provider), t in self._totals.items():
            requests.add_metric([mode, model, provider, "ok"], t.ok, created=t.created)
            requests.add_metric([mode, model, provider, "error"], t.failed, created=t.created)
            _add_histogram(latency, {"mode": mode, "model": model, "provider": provider}, t.latency)
        cost = CounterMetricFamily(
            "tokenhub_cost_usd", "Cost of successful requests (USD)", labels=["model", "provider"]
        )
        tokens = CounterMetricFamily(
            "tokenhub_tokens", "Tokens of successful requests", labels=["model", "provider", "direction"]
        )
        for (model, provider), s in self._spend.items():
            cost.add_metric([model, provider], s.cost, created=s.created)
            tokens.add_metric([model, provider, "input"], s.tokens_in, created=s.created)
            tokens.add_metric([model, provider, "output"], s.tokens_out, created=s.created)
        overhead = HistogramMetricFamily(
            "tokenhub_overhead_ms",
            "Time TokenHub adds to a served request: total latency minus the provider call (ms)",
        )
        _add_histogram(overhead, {}, self.overhead)
        yield from (requests, latency, cost, tokens, overhead)


def _add_histogram(family: HistogramMetricFamily, labels: dict[str, str], histogram: Histogram) -> None:
    family.add_metric(list(labels.values()), histogram.buckets(), histogram.sum)
    family.samples.append(Sample(family.name + "_created", labels, histogram.created))
