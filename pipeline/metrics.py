"""Prometheus metrics on a dedicated registry (no process-global default collectors)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from pipeline.request_metrics import RequestSeries
from pipeline.types import RequestRecord

__all__ = ["HEALTH_STATE_VALUES", "LATENCY_BUCKETS_MS", "OVERHEAD_BUCKETS_MS", "Metrics"]

# The original stopped at 5120 ms, so a 10 s p95 alert could never fire; extended to ~80 s.
LATENCY_BUCKETS_MS = (10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5120, 10240, 20480, 40960, 81920)
# TokenHub's own share of a request is a few milliseconds when all is well; the top buckets catch stalls.
OVERHEAD_BUCKETS_MS = (0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 1000, 5000)
HEALTH_STATE_VALUES = {"healthy": 2, "degraded": 1, "down": 0}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # The series every request updates: plain numbers, no lock (pipeline/request_metrics.py).
        self.request_series = RequestSeries(LATENCY_BUCKETS_MS, OVERHEAD_BUCKETS_MS)
        r.register(self.request_series)
        self.errors = Counter(
            "tokenhub_request_errors",
            "Failed requests by HTTP status",
            ["mode", "model", "provider", "http_status"],
            registry=r,
        )
        self.rate_limited = Counter("tokenhub_rate_limited", "Requests rejected by the per-IP limiter", registry=r)
        self.provider_skips = Counter(
            "tokenhub_provider_skips", "Models excluded from routing", ["provider", "reason"], registry=r
        )
        self.provider_attempts = Counter(
            "tokenhub_provider_attempts",
            "Calls to providers by outcome (ok or error class)",
            ["provider", "outcome"],
            registry=r,
        )
        self.store_dropped = Counter("tokenhub_store_dropped", "Records the store could not keep", ["op"], registry=r)
        self.stream_malformed = Counter(
            "tokenhub_stream_malformed_chunks", "Unparseable upstream stream events skipped", ["provider"], registry=r
        )
        self.stream_rescues = Counter(
            "tokenhub_stream_rescues",
            "Streams that broke after their first token, by what rescue made of them"
            " (rescued, failed, no_capable_fallback, tool_calls, disabled)",
            ["outcome"],
            registry=r,
        )
        self.models_disabled = Counter(
            "tokenhub_models_disabled",
            "Models disabled in memory because their provider reported its quota or credit used up",
            ["provider", "model"],
            registry=r,
        )
        self.models_disabled_now = Gauge(
            "tokenhub_models_quota_disabled", "Models disabled right now for their provider's quota", registry=r
        )
        self.last_resort = Counter(
            "tokenhub_last_resort",
            "Requests that reached the last-resort pass (every eligible candidate failed), by outcome",
            ["outcome"],
            registry=r,
        )
        self.shared_state_up = Gauge(
            "tokenhub_shared_state_up",
            "1 while Redis (TOKENHUB_REDIS_URL) answers, 0 while this replica runs on local state instead",
            registry=r,
        )
        self.shared_state_fallbacks = Counter(
            "tokenhub_shared_state_fallbacks",
            "Operations that used local state because Redis did not answer, by what they were",
            ["what"],
            registry=r,
        )
        self.config_store_up = Gauge(
            "tokenhub_config_store_up",
            "1 while this replica listens to configuration changes (PostgreSQL), 0 while it serves its last snapshot",
            registry=r,
        )
        self.config_reloads = Counter(
            "tokenhub_config_reloads_from_elsewhere",
            "Configuration reloads because another replica or worker committed a change",
            registry=r,
        )
        self.hedges = Counter(
            "tokenhub_hedges",
            "Hedged dispatches (a second candidate started after hedge_after_ms), by which answered",
            ["winner"],
            registry=r,
        )
        self.heartbeats = Counter("tokenhub_heartbeat", "Heartbeat events published", registry=r)
        self.event_subscribers_dropped = Counter(
            "tokenhub_event_subscribers_dropped", "SSE subscribers dropped for falling behind", registry=r
        )
        self.record_sink_failures = Counter(
            "tokenhub_record_sink_failures", "Recorder sinks that raised on a request record", ["sink"], registry=r
        )
        self.budget_refusals = Counter(
            "tokenhub_budget_refusals",
            "Requests refused because a budget, counting what requests in flight reserved, cannot cover them",
            ["budget"],  # key (monthly, 429) or plan (a /v1/plan step: the plan stops)
            registry=r,
        )
        self.budget_reserved = Gauge(
            "tokenhub_budget_reserved_usd", "USD held by requests in flight against their budgets", registry=r
        )
        self.idempotent_replays = Counter(
            "tokenhub_idempotent_replays",
            "Repeated Idempotency-Key requests answered from the stored response (no provider call, no charge)",
            ["endpoint"],
            registry=r,
        )
        self.idempotency_conflicts = Counter(
            "tokenhub_idempotency_conflicts",
            "Idempotency-Key reuse refused: 422 another body, 409 the first still running after the wait",
            ["reason"],
            registry=r,
        )
        # Cluster-wide analytics (TOKENHUB_LOG_EXPORT_DIR, docs/scaling.md)
        self.log_export_rows = Counter(
            "tokenhub_log_export_rows", "Rows written to exported Parquet segments, by table", ["table"], registry=r
        )
        self.log_export_unreadable = Gauge(
            "tokenhub_log_export_unreadable_segments",
            "Segment files in the export directory skipped by the cluster views because they cannot be read",
            registry=r,
        )
        self._attempt_children: dict[tuple[str, str], Any] = {}

    def watch(
        self,
        *,
        health_states: Callable[[], Mapping[str, str]],
        record_queue_depth: Callable[[], int],
        event_subscribers: Callable[[], int],
        log_lines_dropped: Callable[[], int] | None = None,
        analytics_reopens: Callable[[], int] = lambda: 0,
    ) -> None:
        """Series read from live objects at scrape time: nothing to update on the request path."""
        self.registry.register(
            _LiveCollector(
                health_states,
                record_queue_depth,
                event_subscribers,
                log_lines_dropped or _log_lines_dropped,
                analytics_reopens,
            )
        )

    def count_attempt(self, provider: str, outcome: str) -> None:
        """One provider call by outcome (``ok`` or an error class); the label child is cached."""
        child = self._attempt_children.get((provider, outcome))
        if child is None:
            child = self._attempt_children[provider, outcome] = self.provider_attempts.labels(provider, outcome)
        child.inc()

    def observe_request(self, r: RequestRecord, upstream_ms: float | None = None) -> None:
        """Update every per-request series. ``upstream_ms`` is the time spent in provider calls, given only when
        it is fully known (see stages/sinks/metrics.py)."""
        series = self.request_series
        if upstream_ms is not None:
            series.overhead.observe(max(0.0, r.latency_ms - upstream_ms))
        mode, model, provider = r.mode, r.model_id, r.provider_id
        totals = series.totals(mode, model, provider)
        if r.status < 400:
            totals.ok += 1
            totals.latency.observe(r.latency_ms)
        else:
            totals.failed += 1
            self.errors.labels(mode, model, provider, str(r.status)).inc()
        # Spend counts whatever the status: a stream cut after its first token is billed by the provider.
        spend = totals.spend
        if r.cost_usd:
            spend.cost += r.cost_usd
        if r.input_tokens:
            spend.tokens_in += r.input_tokens
        if r.output_tokens:
            spend.tokens_out += r.output_tokens


class _LiveCollector(Collector):
    def __init__(
        self,
        health_states: Callable[[], Mapping[str, str]],
        record_queue_depth: Callable[[], int],
        event_subscribers: Callable[[], int],
        log_lines_dropped: Callable[[], int],
        analytics_reopens: Callable[[], int],
    ) -> None:
        self._health_states = health_states
        self._record_queue_depth = record_queue_depth
        self._event_subscribers = event_subscribers
        self._log_lines_dropped = log_lines_dropped
        self._analytics_reopens = analytics_reopens

    def collect(self) -> Iterator[Any]:
        health = GaugeMetricFamily(
            "tokenhub_provider_health_state", "Provider health: 2 healthy, 1 degraded, 0 down", labels=["provider"]
        )
        for provider, state in sorted(self._health_states().items()):
            health.add_metric([provider], HEALTH_STATE_VALUES.get(state, 0))
        yield health
        yield GaugeMetricFamily(
            "tokenhub_record_queue_depth", "Records waiting for the DuckDB writer", value=self._record_queue_depth()
        )
        yield GaugeMetricFamily(
            "tokenhub_event_subscribers", "Connected /admin/v1/events streams", value=self._event_subscribers()
        )
        yield GaugeMetricFamily(
            "tokenhub_asyncio_tasks",
            "asyncio tasks alive in the server's event loop (a steady climb is a leak)",
            value=_asyncio_tasks(),
        )
        yield CounterMetricFamily(
            "tokenhub_log_dropped",
            "Log lines dropped because stdout could not keep up (the log buffer was full)",
            value=self._log_lines_dropped(),
        )
        yield CounterMetricFamily(
            "tokenhub_analytics_reopens",
            "Times the DuckDB writer closed and opened the database again to give back its row groups' memory",
            value=self._analytics_reopens(),
        )


def _asyncio_tasks() -> int:
    """Counted at scrape time only (the scrape runs on the loop); 0 when read off the loop."""
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # no running loop: the registry describing the collector at registration
        return 0


def _log_lines_dropped() -> int:
    """The overflow count of the queued log stream that ``configure_logging`` installed (0 before)."""
    logger = structlog.get_config()["logger_factory"]()
    return int(getattr(logger, "dropped", 0))
