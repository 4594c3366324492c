"""Read-side queries the bandit and the feedback endpoint need (run on a reader thread, values bound)."""

from __future__ import annotations

from typing import Any

from store.analytics import Cursor

# One row of evidence: (model_id, input_tokens, reward, unix seconds, attempts)
Evidence = tuple[str, int, float, float, str]


def reward_evidence(cursor: Cursor, since_unix: float) -> list[Evidence]:
    """Every rewarded request since `since_unix`, oldest first."""
    return cursor.execute(
        "SELECT model_id, input_tokens, reward, epoch(timestamp), attempts FROM request_log "
        "WHERE reward IS NOT NULL AND timestamp >= to_timestamp(?) ORDER BY timestamp",
        [since_unix],
    ).fetchall()


def rewarded_request(cursor: Cursor, request_id: str) -> dict[str, Any] | None:
    """What feedback needs of one request: who made it, whether it succeeded, its reward and model."""
    rows = cursor.execute(
        "SELECT api_key_id, status, model_id, input_tokens, reward, feedback_score FROM request_log "
        "WHERE request_id = ? LIMIT 1",
        [request_id],
    ).fetchall()
    if not rows:
        return None
    api_key_id, status, model_id, input_tokens, reward, score = rows[0]
    return {
        "api_key_id": api_key_id,
        "status": status,
        "model_id": model_id,
        "input_tokens": input_tokens,
        "reward": reward,
        "feedback_score": score,
    }


def recent_rewards(cursor: Cursor, limit: int, offset: int = 0) -> list[dict[str, Any]]:
    """Rewarded requests, newest first (GET /admin/v1/rewards)."""
    cursor.execute(
        "SELECT timestamp, request_id, model_id, provider_id, mode, input_tokens, latency_ms, cost_usd, status, "
        "error_class, reward, feedback_score FROM request_log "
        "WHERE reward IS NOT NULL ORDER BY timestamp DESC LIMIT ? OFFSET ?",
        [limit, offset],
    )
    names = [d[0] for d in cursor.description]
    out = []
    for row in cursor.fetchall():
        item = dict(zip(names, row, strict=True))
        item["timestamp"] = item["timestamp"].isoformat()
        out.append(item)
    return out
