"""The embedded time series: points in DuckDB's ``tsdb_points``, queried with downsampling.

Each stored point is a roll-up: ``value`` is the sum of its samples, ``samples`` their count, plus their
min and max. The record writer stores one point per (second, metric, model, provider); ``write_points``
stores single samples. Averages over any step are therefore exact (sum of values / sum of samples),
never an average of averages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from store.analytics import Cursor

__all__ = [
    "AGGREGATES",
    "Aggregate",
    "Point",
    "SeriesQuery",
    "list_metrics",
    "prune_points",
    "prune_requests",
    "query_series",
    "rfc3339_ms",
    "write_points",
]

Aggregate = Literal["avg", "sum", "count", "min", "max"]
AGGREGATES: dict[str, str] = {
    "avg": "sum(value) / sum(samples)",
    "sum": "sum(value)",
    "count": "sum(samples)::DOUBLE",
    "min": "min(min_value)",
    "max": "max(max_value)",
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Point:
    ts: datetime  # timezone-aware
    metric: str
    value: float
    model_id: str = ""
    provider_id: str = ""


@dataclass(frozen=True, slots=True)
class SeriesQuery:
    metric: str
    model_id: str | None = None
    provider_id: str | None = None
    start: datetime | None = None  # inclusive
    end: datetime | None = None  # inclusive
    step_ms: int | None = None  # None: the stored points as they are
    aggregate: Aggregate = "avg"
    max_points: int = 10_000


def write_points(db: Cursor, points: Sequence[Point]) -> None:
    """Store single samples (writer thread)."""
    if not points:
        return
    db.executemany(
        "INSERT INTO tsdb_points (ts, metric, model_id, provider_id, value, samples, min_value, max_value, logged_at)"
        " VALUES (?, ?, ?, ?, ?, 1, ?, ?, now())",
        [(p.ts, p.metric, p.model_id, p.provider_id, p.value, p.value, p.value) for p in points],
    )


def query_series(db: Cursor, q: SeriesQuery) -> dict[str, Any]:
    """Points per (model, provider) series. With a step, bucket = floor(unix_ms / step) * step and the
    value is the aggregate over the bucket; without one, each stored timestamp is its own bucket."""
    where, params = ["metric = ?"], [q.metric]
    for column, value in (("model_id", q.model_id), ("provider_id", q.provider_id)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if q.start is not None:
        where.append("ts >= ?")
        params.append(q.start)
    if q.end is not None:
        where.append("ts <= ?")
        params.append(q.end)
    bucket = "epoch_ms(ts)" if q.step_ms is None else f"(epoch_ms(ts) // {int(q.step_ms)}) * {int(q.step_ms)}"
    rows = db.execute(
        f"SELECT {bucket} AS bucket, model_id, provider_id, {AGGREGATES[q.aggregate]} AS v"
        f" FROM tsdb_points WHERE {' AND '.join(where)}"
        " GROUP BY ALL ORDER BY bucket, model_id, provider_id LIMIT ?",
        [*params, q.max_points + 1],
    ).fetchall()
    truncated = len(rows) > q.max_points
    series: dict[tuple[str, str], dict[str, Any]] = {}  # insertion order = order of first appearance
    for bucket_ms, model_id, provider_id, value in rows[: q.max_points]:
        item = series.get((model_id, provider_id))
        if item is None:
            item = series[model_id, provider_id] = {
                "metric": q.metric,
                "model_id": model_id,
                "provider_id": provider_id,
                "points": [],
            }
        item["points"].append({"t": rfc3339_ms(bucket_ms), "v": value})
    return {
        "series": list(series.values()),
        "step_ms": q.step_ms,
        "aggregate": q.aggregate,
        "truncated": truncated,
    }


def list_metrics(db: Cursor) -> list[str]:
    return [row[0] for row in db.execute("SELECT DISTINCT metric FROM tsdb_points ORDER BY 1").fetchall()]


def prune_points(db: Cursor, older_than: datetime) -> int:
    """Delete points strictly older than ``older_than`` (writer thread); returns how many."""
    return int(db.execute("DELETE FROM tsdb_points WHERE ts < ?", [older_than]).fetchall()[0][0])


def prune_requests(db: Cursor, older_than: datetime) -> int:
    """Delete request-log rows strictly older than ``older_than`` (writer thread); returns how many."""
    return int(db.execute("DELETE FROM request_log WHERE timestamp < ?", [older_than]).fetchall()[0][0])


def rfc3339_ms(unix_ms: int) -> str:
    moment = _EPOCH + timedelta(milliseconds=unix_ms)  # exact, unlike a float through fromtimestamp
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
