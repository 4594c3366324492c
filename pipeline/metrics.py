"""Prometheus metrics on a dedicated registry (no process-global default collectors)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

# The original stopped at 5120 ms, so a 10 s p95 alert could never fire; extended to ~80 s.
LATENCY_BUCKETS_MS = (10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5120, 10240, 20480, 40960, 81920)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "tokenhub_requests", "Requests recorded", ["mode", "model", "provider", "status"], registry=r
        )
        self.latency = Histogram(
            "tokenhub_request_latency_ms",
            "Whole-chain latency of successful requests (ms)",
            ["mode", "model", "provider"],
            buckets=LATENCY_BUCKETS_MS,
            registry=r,
        )
        self.cost = Counter("tokenhub_cost_usd", "Cost of successful requests (USD)", ["model", "provider"], registry=r)
        self.tokens = Counter(
            "tokenhub_tokens", "Tokens of successful requests", ["model", "provider", "direction"], registry=r
        )
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
