"""Per-provider health: EWMA latency, error rate, a circuit breaker, and Retry-After back-off.

Updated by dispatch as calls finish and by the prober; read by policy when it scores candidates.
All in memory, O(1) per update. A state transition (healthy / degraded / down / half_open) is reported to
``on_change`` (the services publish it as a ``health_change`` event and a metric).

The breaker: `DOWN_AFTER` consecutive errors open it (state ``down``: the provider is skipped) for the
cooldown. After the cooldown it is half-open: exactly one call (a request or a probe) is let through at a
time; its success closes the breaker, its failure opens it for another cooldown.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "DEGRADED_AFTER",
    "DOWN_AFTER",
    "DOWN_COOLDOWN_SECS",
    "TRIAL_TIMEOUT_SECS",
    "HealthTracker",
    "ProviderHealth",
    "StateChange",
]

DEGRADED_AFTER = 2
DOWN_AFTER = 5
DOWN_COOLDOWN_SECS = 15.0
TRIAL_TIMEOUT_SECS = 30.0  # a half-open trial that never reported back stops blocking the next one


@dataclass(slots=True)
class ProviderHealth:
    state: str = "healthy"
    total_requests: int = 0
    total_errors: int = 0
    consec_errors: int = 0
    avg_latency_ms: float = 0.0
    latency_samples: int = 0
    last_error: str = ""
    cooldown_until: float = 0.0  # monotonic; down providers are skipped until then
    trial_started: float = 0.0  # monotonic; the half-open breaker's one call in flight (0 = none)
    rate_limited_until: float = 0.0  # monotonic; set from Retry-After on a 429

    @property
    def error_rate(self) -> float:
        return self.total_errors / self.total_requests if self.total_requests else 0.0


StateChange = Callable[[str, str, str, str], None]  # (provider_id, old_state, new_state, reason)
# Told what other replicas must know (stages/shared_health.py): (provider_id, breaker event, open until, Retry-After
# back-off until), the event "open", "closed" or "" (none), times on this tracker's clock (0 = none).
SharedChange = Callable[[str, str, float, float], None]


class HealthTracker:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        on_change: StateChange | None = None,
        cooldown_secs: float = DOWN_COOLDOWN_SECS,
    ) -> None:
        self._clock = clock
        self._providers: dict[str, ProviderHealth] = {}
        self._on_change = on_change
        self.cooldown_secs = cooldown_secs
        self.on_shared: SharedChange | None = None  # set when replicas share health (stages/shared_health.py)

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock

    def get(self, provider_id: str) -> ProviderHealth:
        health = self._providers.get(provider_id)
        if health is None:
            health = self._providers[provider_id] = ProviderHealth()
        return health

    def success(self, provider_id: str, latency_ms: float) -> None:
        h = self.get(provider_id)
        # Count samples apart from requests: errors carry no latency, so the first success after errors
        # must set the average rather than blend with the 0.0 placeholder.
        h.avg_latency_ms = latency_ms if h.latency_samples == 0 else 0.9 * h.avg_latency_ms + 0.1 * latency_ms
        h.latency_samples += 1
        h.total_requests += 1
        h.consec_errors = 0
        h.cooldown_until = 0.0
        h.trial_started = 0.0
        if h.state != "healthy":
            if h.state == "down" and self.on_shared is not None:
                self.on_shared(provider_id, "closed", 0.0, 0.0)
            self._transition(provider_id, h, "healthy", "call succeeded")

    def error(self, provider_id: str, message: str, *, retry_after: float | None = None) -> None:
        h = self.get(provider_id)
        now = self._clock()
        h.total_requests += 1
        h.total_errors += 1
        h.consec_errors += 1
        h.last_error = message
        if retry_after:
            h.rate_limited_until = max(h.rate_limited_until, now + retry_after)
        h.trial_started = 0.0
        opened = h.consec_errors >= DOWN_AFTER
        if self.on_shared is not None and (opened or retry_after):
            until = now + self.cooldown_secs if opened else 0.0
            self.on_shared(provider_id, "open" if opened else "", until, h.rate_limited_until if retry_after else 0.0)
        if opened:
            h.cooldown_until = now + self.cooldown_secs  # (re)open the breaker
            if h.state != "down":
                self._transition(provider_id, h, "down", f"{h.consec_errors} consecutive errors; last: {message}")
        elif h.consec_errors >= DEGRADED_AFTER and h.state != "degraded":
            self._transition(provider_id, h, "degraded", f"{h.consec_errors} consecutive errors; last: {message}")

    def _transition(self, provider_id: str, h: ProviderHealth, new_state: str, reason: str) -> None:
        old_state, h.state = h.state, new_state
        if self._on_change is not None:
            self._on_change(provider_id, old_state, new_state, reason)

    def apply_shared(self, provider_id: str, breaker: str, open_until: float, rate_limited_until: float) -> None:
        """What another replica learned (times on this tracker's clock): its breaker opened until `open_until`
        or closed, and/or a Retry-After back-off. Not passed on again to `on_shared`."""
        h = self.get(provider_id)
        h.rate_limited_until = max(h.rate_limited_until, rate_limited_until)
        if breaker == "open" and open_until > self._clock():
            h.consec_errors = max(h.consec_errors, DOWN_AFTER)  # a failed half-open trial here re-opens it
            h.cooldown_until = max(h.cooldown_until, open_until)
            h.trial_started = 0.0
            if h.state != "down":
                self._transition(provider_id, h, "down", "circuit breaker opened by another replica")
        elif breaker == "closed" and h.state != "healthy":
            h.consec_errors = 0
            h.cooldown_until = 0.0
            h.trial_started = 0.0
            self._transition(provider_id, h, "healthy", "recovered on another replica")

    def unavailable_reason(self, provider_id: str) -> str | None:
        """Why the provider should be skipped right now, or None if it may be called."""
        h = self._providers.get(provider_id)
        if h is None:
            return None
        now = self._clock()
        if h.state == "down":
            if now < h.cooldown_until:
                return "health_down"
            if h.trial_started and now - h.trial_started < TRIAL_TIMEOUT_SECS:
                return "circuit_half_open"  # its one trial call is in flight
        if now < h.rate_limited_until:
            return "rate_limited"
        return None

    def begin_call(self, provider_id: str) -> None:
        """Dispatch is about to call the provider: a half-open breaker's trial starts now."""
        h = self._providers.get(provider_id)
        if h is not None and h.state == "down" and self._clock() >= h.cooldown_until:
            h.trial_started = self._clock()

    def breaker_state(self, provider_id: str) -> str:
        """closed, open or half_open (for the admin health view)."""
        h = self._providers.get(provider_id)
        if h is None or h.state != "down":
            return "closed"
        return "open" if self._clock() < h.cooldown_until else "half_open"

    def known(self, provider_id: str) -> ProviderHealth | None:
        """The provider's health, None when it was never called (read-only: `get` creates the entry)."""
        return self._providers.get(provider_id)

    def snapshot(self) -> dict[str, ProviderHealth]:
        return dict(self._providers)
