"""Read-side queries the bandit and the feedback endpoint need (run on a reader thread, values bound)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from store.analytics import Cursor, log_rows

__all__ = ["Evidence", "RatedRow", "recent_rewards", "reward_evidence", "rewarded_request"]

# One row of evidence: (model_id, input_tokens, reward, unix seconds, attempts)
Evidence = tuple[str, int, float, float, str]


@dataclass(frozen=True, slots=True)
class RatedRow:
    """What feedback needs of one written request: whether it succeeded, its reward and model."""

    status: int
    model_id: str
    input_tokens: int
    reward: float | None  # None: the request earned none
    feedback_score: float | None  # None: not rated yet


def reward_evidence(cursor: Cursor, since_unix: float) -> list[Evidence]:
    """Every rewarded request since `since_unix`, oldest first."""
    return cursor.execute(
        "SELECT model_id, input_tokens, reward, epoch(timestamp), attempts FROM request_log "
        "WHERE reward IS NOT NULL AND timestamp >= to_timestamp(?) ORDER BY timestamp",
        [since_unix],
    ).fetchall()


def rewarded_request(cursor: Cursor, api_key_id: str, request_id: str, since: float) -> RatedRow | None:
    """The row of `request_id` if this key made it. Only rows from `since` (unix seconds) on are read:
    DuckDB skips every row group that ended before it, so the cost is the rows since the request."""
    rows = cursor.execute(
        "SELECT status, model_id, input_tokens, reward, feedback_score FROM request_log "
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
