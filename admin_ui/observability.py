"""Admin observability API: request log, stats, time series, retention, analyst SQL, trends, SSE events.

Every query runs in DuckDB on a reader thread (``AnalyticsStore.read_cluster``: with a log export directory
the request log and time series are the whole cluster's, docs/scaling.md); prunes run on the writer thread.
Reads flush the record queue first so they include the requests that just finished.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web

from admin_ui.common import get_services as _services
from admin_ui.common import read_json
from admin_ui.params import choice_param, int_param, str_param, time_param
from pipeline.errors import InvalidRequest, NotFound, QueryError
from pipeline.events import sse_frame
from pipeline.services import Services
from pipeline.settings import MAX_TSDB_RETENTION_DAYS
from pipeline.web import REQUEST_ID, request_id_started
from store.analyst import QueryFailed, QueryRefused, QueryTimedOut, analyst_schema, run_query
from store.request_queries import LogCursor, LogFilter, query_logs, request_detail, request_stats, request_trends
from store.tsdb import AGGREGATES, SeriesQuery, list_metrics, query_series

__all__ = [
    "analytics_query",
    "analytics_schema",
    "analytics_trends",
    "events_stream",
    "get_log",
    "get_retention",
    "list_logs",
    "prune_tsdb",
    "put_retention",
    "stats",
    "tsdb_metrics",
    "tsdb_query",
]

MAX_TSDB_POINTS = 10_000
MAX_TREND_BUCKETS = 10_000
_TREND_DEFAULT_SPAN = {"hour": timedelta(hours=24), "day": timedelta(days=30)}
_TREND_BUCKET = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
_CONNECTED = sse_frame("connected", {"status": "ok"})


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data, default=_json_default), status=status, content_type="application/json")


def _json_default(value: Any) -> Any:
    """Analyst results may hold any DuckDB type; orjson handles datetimes, UUIDs and NaN (as null)."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return str(value)


async def _fresh(services: Services) -> None:
    await services.records.flush()  # include requests recorded a moment ago


# --- request log and stats ---------------------------------------------------------------------------
async def list_logs(request: web.Request) -> web.Response:
    services = _services(request)
    limit = int_param(request, "limit", 100, 1, 1000)
    offset = int_param(request, "offset", 0, 0, 10**9)
    outcome = choice_param(request, "outcome", ("ok", "error"), None)
    where = LogFilter(
        request_id=str_param(request, "request_id"),
        client_request_id=str_param(request, "client_request_id"),
        tenant_id=str_param(request, "tenant"),
        api_key_id=str_param(request, "api_key_id"),
        endpoint=str_param(request, "endpoint"),
        mode=str_param(request, "mode"),
        model_id=str_param(request, "model"),
        provider_id=str_param(request, "provider"),
        alias_from=str_param(request, "alias_from"),
        error_class=str_param(request, "error_class"),
        status=int_param(request, "status", None, 100, 599),
        outcome=outcome,  # type: ignore[arg-type]
        start=time_param(request, "start"),
        end=time_param(request, "end"),
        search=str_param(request, "q") or None,
    )
    after = None
    if raw_cursor := request.query.get("cursor"):
        after = LogCursor.decode(raw_cursor)
        if after is None:
            raise InvalidRequest("cursor is not one this API returned as next_cursor", field="cursor")
    await _fresh(services)
    page = await services.analytics.read_cluster(query_logs, where, limit, offset, after)
    return _json({**page, "limit": limit, "offset": offset})


async def get_log(request: web.Request) -> web.Response:
    """One request: its row, its attempts (with each model's provider as configured now), its plan steps."""
    services = _services(request)
    request_id = request.match_info["request_id"]
    started = request_id_started(request_id)
    since = datetime.fromtimestamp(started, tz=UTC) if started is not None else None
    await _fresh(services)
    detail = await services.analytics.read_cluster(request_detail, request_id, since)
    if detail is None:
        raise NotFound(f"no request {request_id!r} in the request log")
    models = services.snapshot.models
    for attempt in detail["attempts"]:
        model = models.get(attempt["model_id"])
        attempt["provider_id"] = model.provider_id if model else ""
    return _json(detail)


async def stats(request: web.Request) -> web.Response:
    services = _services(request)
    key_names = {key.id: key.name for key in services.snapshot.keys_by_digest.values()}
    await _fresh(services)
    now = datetime.fromtimestamp(time.time(), tz=UTC)
    return _json(await services.analytics.read_cluster(request_stats, now, key_names))


# --- time series -------------------------------------------------------------------------------------
async def tsdb_query(request: web.Request) -> web.Response:
    metric = request.query.get("metric", "").strip()
    if not metric:
        raise InvalidRequest("metric parameter required", field="metric")
    start, end = time_param(request, "start"), time_param(request, "end")
    if start and end and start > end:
        raise InvalidRequest("start must not be after end", field="start")
    query = SeriesQuery(
        metric=metric,
        model_id=str_param(request, "model"),
        provider_id=str_param(request, "provider"),
        start=start,
        end=end,
        step_ms=int_param(request, "step", None, 1, 366 * 86_400_000),
        aggregate=choice_param(request, "agg", tuple(AGGREGATES), "avg"),  # type: ignore[arg-type]
        max_points=MAX_TSDB_POINTS,
    )
    services = _services(request)
    await _fresh(services)
    return _json(await services.analytics.read_cluster(query_series, query))


async def tsdb_metrics(request: web.Request) -> web.Response:
    services = _services(request)
    await _fresh(services)
    return _json({"metrics": await services.analytics.read_cluster(list_metrics)})


async def get_retention(request: web.Request) -> web.Response:
    retention = _services(request).retention
    return _json({"retention_days": retention.tsdb_days, "request_log_retention_days": retention.request_log_days})


async def put_retention(request: web.Request) -> web.Response:
    services = _services(request)
    body = await read_json(request)
    days = body.get("days") if isinstance(body, dict) else None
    if isinstance(days, bool) or not isinstance(days, int):
        raise InvalidRequest(f'body must be {{"days": <integer 1..{MAX_TSDB_RETENTION_DAYS}>}}', field="days")
    if not 1 <= days <= MAX_TSDB_RETENTION_DAYS:
        # A cutoff before year 1 overflows and every later prune fails: ten years is the ceiling.
        raise InvalidRequest(f"days must be between 1 and {MAX_TSDB_RETENTION_DAYS}", field="days")
    services.retention.set_tsdb_days(days)
    return _json({"ok": True, "retention_days": days})


async def prune_tsdb(request: web.Request) -> web.Response:
    services = _services(request)
    await _fresh(services)
    deleted = await services.retention.prune_tsdb()
    return _json({"deleted": deleted, "retention_days": services.retention.tsdb_days})


# --- analyst queries and trends ----------------------------------------------------------------------
async def analytics_query(request: web.Request) -> web.Response:
    services = _services(request)
    settings = services.settings
    body = await read_json(request)
    sql = body.get("sql") if isinstance(body, dict) else None
    if not isinstance(sql, str) or not sql.strip():
        raise InvalidRequest('body must be {"sql": "SELECT ..."}', field="sql")
    max_rows = body.get("max_rows", settings.analytics_query_max_rows)
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise InvalidRequest("max_rows must be a positive integer", field="max_rows")
    max_rows = min(max_rows, settings.analytics_query_max_rows)
    analytics = services.analytics
    await _fresh(services)
    try:
        result = await analytics.read(
            lambda db: run_query(
                db,
                sql,
                max_rows=max_rows,
                max_bytes=settings.analytics_query_max_bytes,
                timeout=settings.analytics_query_timeout_secs,
                new_cursor=lambda: analytics.new_cursor(cluster=True),
                retry_on=analytics.drop_failed_segments,
            )
        )
    except QueryRefused as exc:
        raise QueryError("query_refused", str(exc)) from None
    except QueryFailed as exc:
        raise QueryError("query_failed", str(exc)) from None
    except QueryTimedOut as exc:
        raise QueryError("query_timeout", str(exc)) from None
    return _json(result)


async def analytics_schema(request: web.Request) -> web.Response:
    """The tables and columns analyst SQL can read, from DuckDB's catalog (the console shows it beside the editor)."""
    return _json(await _services(request).analytics.read_cluster(analyst_schema))


async def analytics_trends(request: web.Request) -> web.Response:
    bucket = choice_param(request, "bucket", ("hour", "day"), "hour")
    assert bucket is not None
    end = time_param(request, "end") or datetime.fromtimestamp(time.time(), tz=UTC)
    start = time_param(request, "start") or end - _TREND_DEFAULT_SPAN[bucket]
    if start > end:
        raise InvalidRequest("start must not be after end", field="start")
    if (end - start) / _TREND_BUCKET[bucket] > MAX_TREND_BUCKETS:
        raise InvalidRequest(f"the range spans more than {MAX_TREND_BUCKETS} {bucket}s; narrow it", field="start")
    services = _services(request)
    await _fresh(services)
    return _json(await services.analytics.read_cluster(request_trends, start, end, bucket))


# --- events ------------------------------------------------------------------------------------------
async def events_stream(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: ``connected`` first, then every event in publish order. Ends with a
    ``dropped`` event when this client fell more than the buffer behind, or quietly at shutdown."""
    bus = _services(request).events
    subscriber = bus.subscribe()  # before the first byte: nothing published after `connected` is missed
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "Connection": "keep-alive",
            "X-Accel-Buffering": "no",  # tell nginx-style proxies not to buffer the stream
            "X-Request-Id": request[REQUEST_ID],
        }
    )
    try:
        await response.prepare(request)
        await response.write(_CONNECTED)
        while frames := await subscriber.next_frames():
            await response.write(b"".join(frames))
        if subscriber.dropped:
            await response.write(sse_frame("dropped", {"type": "dropped", "reason": "client fell behind"}))
    except ConnectionResetError:  # the client went away
        pass
    finally:
        bus.unsubscribe(subscriber)
    return response
