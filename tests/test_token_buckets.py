"""TokenBuckets: continuous refill, per-key independence, and bounded memory (LRU cap + idle eviction)."""

from __future__ import annotations

import pytest

from stages.rate_limit import TokenBuckets
from tests.fakes.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


def test_burst_allowed_then_denied_with_wait(clock: FakeClock) -> None:
    buckets = TokenBuckets(rate=2.0, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = buckets.take("a")
    assert wait == pytest.approx(0.5)  # (1 - 0 tokens) / 2 per second


def test_wait_accounts_for_partial_refill(clock: FakeClock) -> None:
    buckets = TokenBuckets(rate=2.0, burst=1, clock=clock)
    assert buckets.take("a") == 0.0
    clock.advance(0.2)  # 0.4 tokens
    assert buckets.take("a") == pytest.approx((1 - 0.4) / 2.0)
    clock.advance(0.1)  # denied takes consume nothing: 0.6 tokens now
    assert buckets.take("a") == pytest.approx((1 - 0.6) / 2.0)


def test_denied_wait_is_positive_and_exact_after_it_elapses(clock: FakeClock) -> None:
    buckets = TokenBuckets(rate=4.0, burst=2, clock=clock)
    buckets.take("a")
    buckets.take("a")
    wait = buckets.take("a")
    assert wait > 0
    clock.advance(wait)
    assert buckets.take("a") == 0.0


def test_refill_over_time_caps_at_burst(clock: FakeClock) -> None:
    buckets = TokenBuckets(rate=1.0, burst=2, clock=clock)
    assert buckets.take("a") == 0.0
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0
    clock.advance(1.0)
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0
    clock.advance(100.0)  # a long pause refills only up to the burst
    assert [buckets.take("a") == 0.0 for _ in range(3)] == [True, True, False]


def test_separate_keys_are_independent(clock: FakeClock) -> None:
    buckets = TokenBuckets(rate=1.0, burst=1, clock=clock)
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0
    assert buckets.take("b") == 0.0
    assert buckets.take("b") > 0
    assert buckets.take("c") == 0.0
    assert len(buckets) == 3


def test_lru_cap_evicts_least_recently_used(clock: FakeClock) -> None:
    buckets = TokenBuckets(rate=0.001, burst=1, max_keys=2, clock=clock)
    buckets.take("a")
    buckets.take("b")
    buckets.take("c")  # evicts "a", the least recently used
    assert len(buckets) == 2
    # "b" and "c" are still tracked (empty); "a" starts again with a full bucket.
    assert buckets.take("b") > 0
    assert buckets.take("c") > 0
    assert buckets.take("a") == 0.0  # evicts "b"
    assert buckets.take("c") > 0
    assert buckets.take("b") == 0.0  # "b" was evicted, so it starts full again


def test_access_refreshes_recency(clock: FakeClock) -> None:
    buckets = TokenBuckets(rate=0.001, burst=1, max_keys=2, clock=clock)
    buckets.take("a")
    buckets.take("b")
    buckets.take("a")  # "a" becomes most recent; "b" is now the LRU key
    buckets.take("c")  # evicts "b", not "a"
    assert len(buckets) == 2
    assert buckets.take("a") > 0  # still tracked, still empty
    assert buckets.take("b") == 0.0  # was evicted


def test_idle_buckets_evicted_when_new_key_arrives(clock: FakeClock) -> None:
    buckets = TokenBuckets(rate=0.001, burst=1, idle_secs=60.0, clock=clock)
    buckets.take("old1")
    buckets.take("old2")
    clock.advance(30.0)
    buckets.take("recent")
    clock.advance(31.0)  # old1/old2 idle for 61 s, recent for 31 s
    assert len(buckets) == 3  # nothing is evicted until a new key arrives
    buckets.take("new")
    assert len(buckets) == 2
    assert buckets.take("recent") > 0  # kept: still tracked and empty
    assert buckets.take("old1") == 0.0  # evicted: starts full again


def test_touching_a_bucket_keeps_it_from_idle_eviction(clock: FakeClock) -> None:
    buckets = TokenBuckets(rate=0.001, burst=1, idle_secs=60.0, clock=clock)
    buckets.take("a")
    buckets.take("b")
    clock.advance(50.0)
    buckets.take("a")  # refreshed
    clock.advance(20.0)  # a idle 20 s, b idle 70 s
    buckets.take("c")
    assert len(buckets) == 2
    assert buckets.take("a") > 0
    assert buckets.take("b") == 0.0


def test_len_stays_bounded_under_many_distinct_keys(clock: FakeClock) -> None:
    buckets = TokenBuckets(rate=10.0, burst=5, max_keys=50, clock=clock)
    for i in range(10_000):
        assert buckets.take(f"10.0.{i // 256}.{i % 256}") == 0.0
        assert len(buckets) <= 50
        clock.advance(0.001)
    assert len(buckets) == 50
    allowed = [buckets.take("10.0.39.15") == 0.0 for _ in range(5)]
    assert allowed == [True, True, True, True, False]  # the newest key is still tracked: 4 of 5 tokens left
    allowed = [buckets.take("10.0.0.0") == 0.0 for _ in range(6)]
    assert allowed == [True] * 5 + [False]  # the first key was evicted long ago: a fresh, full bucket
