"""Read-side queries the bandit and the feedback endpoint need (run on a reader thread, values bound)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from store.analytics import Cursor, log_rows

__all__ = [
    "Evidence",
    "LoggedDecision",
    "RatedRow",
    "logged_decisions",
    "recent_rewards",
    "reward_evidence",
    "rewarded_request",
]

# bandit.token_bucket's three buckets, as conditions on a row
_BUCKETS = ("input_tokens < 1000", "input_tokens BETWEEN 1000 AND 10000", "input_tokens > 10000")
_TERMS = (
    "request_id, model_id, input_tokens, status, cost_usd, latency_ms, cost_ref_usd, latency_ref_ms, quality_prior, "
    "coalesce(feedback_score, 'NaN'::DOUBLE), attempts"
)


class Evidence(NamedTuple):
    """What the bandit learns from one request-log row (the names of RequestRecord's fields)."""

    request_id: str
    model_id: str
    input_tokens: int
    status: int
    cost_usd: float
    latency_ms: float
    cost_ref_usd: float
    latency_ref_ms: float
    quality_prior: float
    feedback_score: float  # NaN: not rated
    attempts: str


class LoggedDecision(NamedTuple):
    """One routed request, for counterfactual evaluation: the evidence, and what the policy chose from."""

    evidence: Evidence
    timestamp: float
    mode: str
    reward: float
    propensity: float  # NaN: the routing policy did not choose (a hint, a named model's chain)
    candidates: str
    quality_weight: float


@dataclass(frozen=True, slots=True)
class RatedRow:
    """What feedback needs of one written request: whether it succeeded, its reward and model."""

    status: int
    model_id: str
    input_tokens: int
    reward: float | None  # None: the request earned none
    feedback_score: float | None  # None: not rated yet
    quality_prior: float | None  # None: logged before the objective's terms were recorded
    quality_weight: float | None


def reward_evidence(cursor: Cursor, since_unix: float, per_bucket: int, until_unix: float) -> list[Evidence]:
    """The newest `per_bucket` rewarded requests of each token bucket from `since_unix` to before `until_unix`,
    oldest first. Rows logged before the objective's terms were recorded (no quality prior) are not evidence.

    One top-N per bucket (ORDER BY ... LIMIT keeps `per_bucket` rows in a heap) rather than a window over
    every row since `since_unix`: the window sorted the whole month of log each refresh, ~50 MiB of native
    memory at 150,000 rows and more as the log grows; this holds three horizons of rows whatever its size."""
    newest = (
        f"(SELECT {_TERMS}, timestamp FROM request_log WHERE quality_prior IS NOT NULL AND timestamp >= "
        f"to_timestamp(?) AND timestamp < to_timestamp(?) AND {bucket} ORDER BY timestamp DESC LIMIT ?)"
        for bucket in _BUCKETS
    )
    rows = cursor.execute(
        f"SELECT * FROM ({' UNION ALL '.join(newest)}) ORDER BY timestamp",
        [since_unix, until_unix, per_bucket] * len(_BUCKETS),
    ).fetchall()
    return [Evidence(*row[:-1]) for row in rows]


def logged_decisions(cursor: Cursor, since_unix: float, until_unix: float, limit: int) -> list[LoggedDecision]:
    """Every rewarded request in [since, until), oldest first, at most `limit` (the newest of them)."""
    rows = cursor.execute(
        f"SELECT * FROM (SELECT {_TERMS}, epoch(timestamp) AS logged_at, mode, reward, "
        "coalesce(propensity, 'NaN'::DOUBLE), candidates, quality_weight FROM request_log "
        "WHERE quality_prior IS NOT NULL AND timestamp >= to_timestamp(?) AND timestamp < to_timestamp(?) "
        "ORDER BY timestamp DESC LIMIT ?) ORDER BY logged_at",
        [since_unix, until_unix, limit],
    ).fetchall()
    return [LoggedDecision(Evidence(*row[:11]), *row[11:]) for row in rows]


def rewarded_request(cursor: Cursor, api_key_id: str, request_id: str, since: float) -> RatedRow | None:
    """The row of `request_id` if this key made it. Only rows from `since` (unix seconds) on are read:
    DuckDB skips every row group that ended before it, so the cost is the rows since the request."""
    rows = cursor.execute(
        "SELECT status, model_id, input_tokens, reward, feedback_score, quality_prior, quality_weight FROM request_log "
        "WHERE timestamp >= to_timestamp(?) AND api_key_id = ? AND request_id = ? LIMIT 1",
        [since, api_key_id, request_id],
    ).fetchall()
    return RatedRow(*rows[0]) if rows else None


def recent_rewards(cursor: Cursor, limit: int, offset: int = 0) -> list[dict[str, Any]]:
    """Rewarded requests, newest first (GET /admin/v1/rewards)."""
    cursor.execute(
        "SELECT timestamp, request_id, model_id, provider_id, mode, input_tokens, latency_ms, cost_usd, status, "
        "error_class, reward, feedback_score FROM request_log "
        "WHERE reward IS NOT NULL ORDER BY timestamp DESC LIMIT ? OFFSET ?",
        [limit, offset],
    )
    return log_rows(cursor)
