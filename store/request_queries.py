"""Read-side queries over the request log: filtered pages, windowed stats, ready-made trends.

Each function takes a DuckDB cursor and runs on a reader thread (``AnalyticsStore.read``). Every value
the caller supplies is a bound parameter; only fixed fragments from this module are spliced into SQL.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from store.analytics import REQUEST_LOG_COLUMNS, Cursor, log_rows

__all__ = [
    "STATS_WINDOWS",
    "Bucket",
    "LogCursor",
    "LogFilter",
    "query_logs",
    "request_detail",
    "request_stats",
    "request_trends",
]

STATS_WINDOWS: dict[str, timedelta] = {
    "1m": timedelta(minutes=1),
    "5m": timedelta(minutes=5),
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
}
Bucket = Literal["hour", "day"]


@dataclass(frozen=True, slots=True)
class LogFilter:
    """Equality filters (None = any) plus a time range (inclusive) and an outcome."""

    request_id: str | None = None
    client_request_id: str | None = None
    tenant_id: str | None = None
    api_key_id: str | None = None
    endpoint: str | None = None
    mode: str | None = None
    model_id: str | None = None
    provider_id: str | None = None
    alias_from: str | None = None
    error_class: str | None = None
    status: int | None = None
    outcome: Literal["ok", "error"] | None = None
    start: datetime | None = None
    end: datetime | None = None
    search: str | None = None  # a substring of the request id, the client's request id or the error message

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or f.name in _NOT_EQUALITY:
                continue
            clauses.append(f"{f.name} = ?")
            params.append(value)
        if self.search:
            # Ids match exactly as typed; the message case-insensitively (ILIKE beats lower() on every row).
            pattern = "%" + self.search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            clauses.append(
                "(contains(request_id, ?) OR contains(client_request_id, ?) OR error_message ILIKE ? ESCAPE '\\')"
            )
            params.extend([self.search, self.search, pattern])
        if self.outcome is not None:
            clauses.append("status < 400" if self.outcome == "ok" else "status >= 400")
        if self.start is not None:
            clauses.append("timestamp >= ?")
            params.append(self.start)
        if self.end is not None:
            clauses.append("timestamp <= ?")
            params.append(self.end)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


_NOT_EQUALITY = frozenset({"outcome", "start", "end", "search"})


@dataclass(frozen=True, slots=True)
class LogCursor:
    """Where a page of the log ended: its last row's (timestamp, request_id), the order's sort key. The next
    page is the rows strictly after it, so a deep page costs a filtered scan, not a sort of every row before
    it (as OFFSET does), and rows arriving meanwhile do not shift the pages."""

    timestamp: datetime
    request_id: str

    def encode(self) -> str:
        micros = int(self.timestamp.timestamp() * 1_000_000)
        return base64.urlsafe_b64encode(f"{micros}|{self.request_id}".encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> LogCursor | None:
        """The cursor ``encode`` wrote, or None when ``text`` is not one."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
            micros, request_id = raw.split("|", 1)
            moment = datetime.fromtimestamp(int(micros) / 1_000_000, tz=UTC)
        except (ValueError, binascii.Error, UnicodeDecodeError, OverflowError, OSError):
            return None
        return cls(moment, request_id) if request_id else None


def query_logs(db: Cursor, where: LogFilter, limit: int, offset: int, after: LogCursor | None = None) -> dict[str, Any]:
    """One page of the request log, newest first, how many rows match in all, and the cursor of the next
    page (None on the last one). With ``after`` the page starts behind that cursor (``offset`` still applies
    on top of it, normally 0)."""
    sql_where, params = where.where()
    total = int(db.execute(f"SELECT count(*) FROM request_log{sql_where}", params).fetchall()[0][0])
    page_where, page_params = sql_where, list(params)
    if after is not None:
        # `timestamp <= ?` on its own is what DuckDB pushes into the scan (row groups entirely newer are
        # skipped); the OR then orders ties on the timestamp by request id, as the ORDER BY does.
        page_where += (" AND " if page_where else " WHERE ") + "timestamp <= ? AND (timestamp < ? OR request_id > ?)"
        page_params += [after.timestamp, after.timestamp, after.request_id]
    cursor = db.execute(
        f"SELECT {', '.join(REQUEST_LOG_COLUMNS)} FROM request_log{page_where}"
        " ORDER BY timestamp DESC, request_id LIMIT ? OFFSET ?",
        [*page_params, limit, offset],
    )
    rows = log_rows(cursor)
    next_cursor = None
    if len(rows) == limit:
        last = rows[-1]
        next_cursor = LogCursor(datetime.fromisoformat(last["timestamp"]), last["request_id"]).encode()
    return {"logs": rows, "total": total, "next_cursor": next_cursor}


# How far before an id's own start time its row (and its plan steps) may be stamped: clocks of the same
# process, so a little slack is plenty.
_ID_CLOCK_SLACK = timedelta(minutes=5)


def request_detail(db: Cursor, request_id: str, started: datetime | None) -> dict[str, Any] | None:
    """One request's row, its plan steps (rows naming it as ``parent_request_id``, oldest first) and its
    attempts split into a list; None when no row has that id. ``started`` (from an id of ours) bounds the
    scans to the row groups since then."""
    since = [] if started is None else [started - _ID_CLOCK_SLACK]
    bound = "" if started is None else " AND timestamp >= ?"
    columns = ", ".join(REQUEST_LOG_COLUMNS)
    found = db.execute(f"SELECT {columns} FROM request_log WHERE request_id = ?{bound} LIMIT 1", [request_id, *since])
    rows = log_rows(found)
    if not rows:
        return None
    steps = db.execute(
        f"SELECT {columns} FROM request_log WHERE parent_request_id = ?{bound} ORDER BY timestamp, request_id"
        " LIMIT 1000",
        [request_id, *since],
    )
    row = rows[0]
    return {"request": row, "attempts": _attempts(row["attempts"]), "steps": log_rows(steps)}


def _attempts(text: str) -> list[dict[str, str]]:
    """The ``attempts`` column ("gpt-a=transient, gpt-b=ok"; stages/learning.py writes it) as a list."""
    out = []
    for entry in text.split(", ") if text else ():
        model_id, _, outcome = entry.rpartition("=")
        out.append({"model_id": model_id, "outcome": outcome})
    return out


# GROUPING() bits, most significant first: model_id, provider_id, api_key_id, mode. A set bit means the
# column is rolled up, so each grouping set has one value.
_VIEWS = {15: "global", 7: "by_model", 11: "by_provider", 13: "by_api_key", 14: "by_mode"}
_STATS_SQL = """
WITH windows(name, since) AS (VALUES {windows}),
recent AS (
    SELECT w.name AS window_name, r.*
    FROM request_log r JOIN windows w ON r.timestamp > w.since
    WHERE r.timestamp > ?
)
SELECT window_name, model_id, provider_id, api_key_id, mode,
       GROUPING(model_id, provider_id, api_key_id, mode) AS grouping_id,
       count(*) AS request_count,
       count(*) FILTER (status >= 400) AS error_count,
       avg(latency_ms) AS avg_latency_ms,
       quantile_disc(latency_ms, 0.5) AS p50_latency_ms,
       quantile_disc(latency_ms, 0.95) AS p95_latency_ms,
       sum(cost_usd) AS total_cost_usd,
       sum(input_tokens) AS input_tokens,
       sum(output_tokens) AS output_tokens
FROM recent
GROUP BY GROUPING SETS (
    (window_name), (window_name, model_id), (window_name, provider_id), (window_name, api_key_id),
    (window_name, mode)
)
"""


def request_stats(db: Cursor, now: datetime, key_names: Mapping[str, str]) -> dict[str, Any]:
    """Aggregates over the last 1m, 5m, 1h and 24h: overall and by model, provider, API key and mode.
    Windows with no request are left out. ``key_names`` maps API key ids to names (ids when unknown)."""
    sinces = [now - span for span in STATS_WINDOWS.values()]
    windows_sql = ", ".join(f"('{name}', ?::TIMESTAMPTZ)" for name in STATS_WINDOWS)
    rows = db.execute(_STATS_SQL.format(windows=windows_sql), [*sinces, min(sinces)]).fetchall()
    out: dict[str, Any] = {"global": [], **{view: {} for view in list(_VIEWS.values())[1:]}}
    order = list(STATS_WINDOWS)
    rows.sort(key=lambda row: (order.index(row[0]), -row[6], tuple(v or "" for v in row[1:5])))
    for window, model_id, provider_id, api_key_id, mode, grouping_id, n, errors, *rest in rows:
        view = _VIEWS.get(grouping_id)
        if view is None:
            continue
        avg_ms, p50_ms, p95_ms, cost, tokens_in, tokens_out = rest
        item: dict[str, Any] = {"window": window}
        if view == "by_model":
            item["model_id"] = model_id
        elif view == "by_provider":
            item["provider_id"] = provider_id
        elif view == "by_api_key":
            item["api_key_id"] = api_key_id
            item["api_key_name"] = key_names.get(api_key_id, api_key_id)
        elif view == "by_mode":
            item["mode"] = mode
        item.update(
            request_count=n,
            error_count=errors,
            error_rate=errors / n,
            avg_latency_ms=round(avg_ms, 3),
            p50_latency_ms=p50_ms,
            p95_latency_ms=p95_ms,
            total_cost_usd=round(cost, 10),
            input_tokens=int(tokens_in),
            output_tokens=int(tokens_out),
            total_tokens=int(tokens_in + tokens_out),
        )
        if view == "global":
            out["global"].append(item)
        else:
            out[view].setdefault(window, []).append(item)
    return out


_TRENDS: dict[str, str] = {
    "cost_per_model": """
        SELECT date_trunc('{bucket}', timestamp) AS t, model_id, provider_id,
               count(*) AS requests, sum(cost_usd) AS cost_usd
        FROM request_log WHERE timestamp BETWEEN ? AND ? AND model_id <> ''
        GROUP BY ALL ORDER BY t, model_id, provider_id""",
    "latency_per_provider": """
        SELECT date_trunc('{bucket}', timestamp) AS t, provider_id, count(*) AS requests,
               quantile_disc(latency_ms, 0.5) AS p50_latency_ms, quantile_disc(latency_ms, 0.95) AS p95_latency_ms
        FROM request_log WHERE timestamp BETWEEN ? AND ? AND provider_id <> '' AND status < 400
        GROUP BY ALL ORDER BY t, provider_id""",
    "error_rate": """
        SELECT date_trunc('{bucket}', timestamp) AS t, count(*) AS requests,
               count(*) FILTER (status >= 400) AS errors,
               count(*) FILTER (status >= 400) / count(*) AS error_rate
        FROM request_log WHERE timestamp BETWEEN ? AND ?
        GROUP BY ALL ORDER BY t""",
    "tokens_per_tenant": """
        SELECT date_trunc('{bucket}', timestamp) AS t, tenant_id,
               sum(input_tokens)::BIGINT AS input_tokens, sum(output_tokens)::BIGINT AS output_tokens,
               sum(input_tokens + output_tokens)::BIGINT AS total_tokens
        FROM request_log WHERE timestamp BETWEEN ? AND ?
        GROUP BY ALL ORDER BY t, tenant_id""",
}


def request_trends(db: Cursor, start: datetime, end: datetime, bucket: Bucket) -> dict[str, Any]:
    """Cost per model, p50/p95 latency per provider (successes), error rate and tokens per tenant, per
    hour or day (UTC) between ``start`` and ``end`` inclusive."""
    out: dict[str, Any] = {"bucket": bucket, "start": _iso(start), "end": _iso(end)}
    for name, sql in _TRENDS.items():
        cursor = db.execute(sql.format(bucket=bucket), [start, end])
        names = [d[0] for d in cursor.description]
        series = []
        for row in cursor.fetchall():
            item = dict(zip(names, row, strict=True))
            item["t"] = _iso(item["t"])
            if "cost_usd" in item:
                item["cost_usd"] = round(item["cost_usd"], 10)
            series.append(item)
        out[name] = series
    return out


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
