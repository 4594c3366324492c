"""HealthTracker: EWMA latency, degraded/down states with cooldown, and Retry-After back-off."""

from __future__ import annotations

import pytest

from stages.health import DEGRADED_AFTER, DOWN_AFTER, DOWN_COOLDOWN_SECS, HealthTracker
from tests.fakes.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(500.0)


@pytest.fixture
def tracker(clock: FakeClock) -> HealthTracker:
    return HealthTracker(clock=clock)


def fail(tracker: HealthTracker, times: int, provider: str = "p") -> None:
    for i in range(times):
        tracker.error(provider, f"boom {i}")


def test_thresholds_match_the_spec() -> None:
    # spec: 30 s cooldown; ours is 15 s because the half-open gate already limits the risk to one call
    assert (DEGRADED_AFTER, DOWN_AFTER, DOWN_COOLDOWN_SECS) == (2, 5, 15.0)


def test_unknown_provider_is_available(tracker: HealthTracker) -> None:
    assert tracker.unavailable_reason("never-seen") is None
    assert tracker.snapshot() == {}  # asking does not create an entry


def test_success_is_healthy_and_first_sample_sets_the_average(tracker: HealthTracker) -> None:
    tracker.success("p", 200.0)
    health = tracker.get("p")
    assert health.state == "healthy"
    assert health.avg_latency_ms == 200.0
    assert health.total_requests == 1
    assert health.error_rate == 0.0
    assert tracker.unavailable_reason("p") is None


def test_latency_ewma_weights_new_samples_by_a_tenth(tracker: HealthTracker) -> None:
    tracker.success("p", 100.0)
    tracker.success("p", 200.0)
    assert tracker.get("p").avg_latency_ms == pytest.approx(110.0)  # 0.9 * 100 + 0.1 * 200
    tracker.success("p", 1110.0)
    assert tracker.get("p").avg_latency_ms == pytest.approx(0.9 * 110.0 + 0.1 * 1110.0)  # 210


def test_first_latency_sample_after_errors_sets_the_average(tracker: HealthTracker) -> None:
    tracker.error("p", "timeout")
    tracker.success("p", 1000.0)
    assert tracker.get("p").avg_latency_ms == pytest.approx(1000.0)


def test_one_error_keeps_healthy(tracker: HealthTracker) -> None:
    fail(tracker, 1)
    health = tracker.get("p")
    assert health.state == "healthy"
    assert health.consec_errors == 1
    assert health.last_error == "boom 0"


def test_two_errors_degrade_but_stay_available(tracker: HealthTracker) -> None:
    fail(tracker, 2)
    assert tracker.get("p").state == "degraded"
    assert tracker.unavailable_reason("p") is None
    fail(tracker, 2)  # 4 in a row: still only degraded
    assert tracker.get("p").state == "degraded"
    assert tracker.unavailable_reason("p") is None


def test_five_errors_down_until_cooldown_passes(tracker: HealthTracker, clock: FakeClock) -> None:
    fail(tracker, 5)
    health = tracker.get("p")
    assert health.state == "down"
    assert health.cooldown_until == clock.now + 15.0
    assert tracker.unavailable_reason("p") == "health_down"
    assert tracker.breaker_state("p") == "open"
    clock.advance(14.9)
    assert tracker.unavailable_reason("p") == "health_down"
    clock.advance(0.1)  # exactly 15 s after the fifth error
    assert tracker.unavailable_reason("p") is None
    assert tracker.breaker_state("p") == "half_open"


def test_error_while_down_restarts_the_cooldown(tracker: HealthTracker, clock: FakeClock) -> None:
    fail(tracker, 5)
    clock.advance(15.0)
    assert tracker.unavailable_reason("p") is None  # a probe may go through
    fail(tracker, 1)  # the probe failed
    assert tracker.unavailable_reason("p") == "health_down"
    clock.advance(14.0)
    assert tracker.unavailable_reason("p") == "health_down"
    clock.advance(1.0)
    assert tracker.unavailable_reason("p") is None


def test_half_open_lets_one_trial_through_at_a_time(tracker: HealthTracker, clock: FakeClock) -> None:
    fail(tracker, 5)
    clock.advance(15.0)
    tracker.begin_call("p")  # the trial call starts
    assert tracker.unavailable_reason("p") == "circuit_half_open"  # nobody else meanwhile
    clock.advance(1.0)
    tracker.success("p", 120.0)  # the trial succeeded: the breaker closes
    assert tracker.unavailable_reason("p") is None
    assert tracker.breaker_state("p") == "closed" and tracker.get("p").state == "healthy"


def test_a_lost_trial_stops_blocking_after_its_timeout(tracker: HealthTracker, clock: FakeClock) -> None:
    fail(tracker, 5)
    clock.advance(15.0)
    tracker.begin_call("p")
    clock.advance(29.0)
    assert tracker.unavailable_reason("p") == "circuit_half_open"
    clock.advance(1.0)
    assert tracker.unavailable_reason("p") is None


def test_success_resets_state_and_consecutive_errors(tracker: HealthTracker) -> None:
    fail(tracker, 5)
    tracker.success("p", 50.0)
    health = tracker.get("p")
    assert health.state == "healthy"
    assert health.consec_errors == 0
    assert health.cooldown_until == 0.0
    assert tracker.unavailable_reason("p") is None
    fail(tracker, 1)
    assert tracker.get("p").state == "healthy"  # the run of errors starts again from zero


def test_error_rate_counts_all_requests(tracker: HealthTracker) -> None:
    tracker.success("p", 10.0)
    tracker.success("p", 10.0)
    tracker.success("p", 10.0)
    fail(tracker, 1)
    health = tracker.get("p")
    assert (health.total_requests, health.total_errors) == (4, 1)
    assert health.error_rate == pytest.approx(0.25)


def test_retry_after_marks_rate_limited_until_it_elapses(tracker: HealthTracker, clock: FakeClock) -> None:
    tracker.error("p", "429", retry_after=10.0)
    assert tracker.get("p").state == "healthy"  # one error: not degraded, but backing off
    assert tracker.unavailable_reason("p") == "rate_limited"
    clock.advance(9.5)
    assert tracker.unavailable_reason("p") == "rate_limited"
    clock.advance(0.5)
    assert tracker.unavailable_reason("p") is None


def test_shorter_retry_after_does_not_shorten_the_back_off(tracker: HealthTracker, clock: FakeClock) -> None:
    tracker.error("p", "429", retry_after=20.0)
    tracker.error("p", "429", retry_after=1.0)
    clock.advance(5.0)
    assert tracker.unavailable_reason("p") == "rate_limited"
    clock.advance(15.0)
    assert tracker.unavailable_reason("p") is None


@pytest.mark.parametrize("retry_after", [None, 0.0])
def test_error_without_retry_after_does_not_rate_limit(tracker: HealthTracker, retry_after: float | None) -> None:
    tracker.error("p", "500", retry_after=retry_after)
    assert tracker.unavailable_reason("p") is None


def test_health_down_takes_precedence_over_rate_limited(tracker: HealthTracker, clock: FakeClock) -> None:
    fail(tracker, 4)
    tracker.error("p", "429", retry_after=60.0)
    assert tracker.unavailable_reason("p") == "health_down"
    clock.advance(30.0)
    assert tracker.unavailable_reason("p") == "rate_limited"
    clock.advance(30.0)
    assert tracker.unavailable_reason("p") is None


def test_providers_are_tracked_independently(tracker: HealthTracker) -> None:
    fail(tracker, 5, provider="bad")
    tracker.success("good", 80.0)
    assert tracker.unavailable_reason("bad") == "health_down"
    assert tracker.unavailable_reason("good") is None
    assert set(tracker.snapshot()) == {"bad", "good"}
