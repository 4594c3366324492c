"""DuckDB analytics: the request log and the time-series points.

One database, two kinds of thread:
- the writer thread (``call``) owns the main connection: batch inserts from the record writer, prunes;
- reader threads (``read``) each hold their own cursor: admin reads and analyst queries. DuckDB's MVCC
  lets them run while a batch is being written, so a slow read never holds up the writer.

The database is opened sandboxed for everyone: no file, network or extension access from SQL, no scans of
Python variables, and the configuration locked, so no connection can turn any of it back on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import operator
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import numpy as np
import structlog

from pipeline.types import RequestRecord
from store.rollup import rollup

__all__ = ["CHECKPOINT_WAL_MIB", "MAX_TOKEN_COUNT", "REQUEST_LOG_COLUMNS", "AnalyticsStore", "Cursor", "log_rows"]

log = structlog.get_logger("tokenhub.analytics")
T = TypeVar("T")
Cursor = duckdb.DuckDBPyConnection
_COLUMNS = [f.name for f in dataclasses.fields(RequestRecord)]
# Explicit dtypes: inference costs a pass over the values, and strings as numpy objects (not fixed-width
# unicode) scan several times faster into DuckDB.
_NUMPY_TYPES = {"int": np.int64, "float": np.float64}
_DTYPES = [_NUMPY_TYPES.get(str(f.type), object) for f in dataclasses.fields(RequestRecord)]
_row = operator.attrgetter(*_COLUMNS)
# Optional numbers travel as NaN (numpy float columns have no None) and are stored as NULL.
_NULLABLE = frozenset(
    {"reward", "feedback_score", "propensity", "cost_ref_usd", "latency_ref_ms", "quality_prior", "quality_weight"}
)
_SELECT = ", ".join(
    "to_timestamp(timestamp)"
    if name == "timestamp"
    else f"CASE WHEN isnan({name}) THEN NULL ELSE {name} END"
    if name in _NULLABLE
    else name
    for name in _COLUMNS
)
REQUEST_LOG_COLUMNS = tuple(_COLUMNS)
# No real request comes near a trillion tokens: a count above it is an upstream's garbage, stored clamped so
# the row (and the spend it carries) is kept rather than failing its batch.
MAX_TOKEN_COUNT = 10**12
_TOKEN_COLUMNS = ("input_tokens", "output_tokens")
_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS request_log (
    timestamp TIMESTAMPTZ NOT NULL,
    request_id VARCHAR NOT NULL,
    tenant_id VARCHAR NOT NULL,
    api_key_id VARCHAR NOT NULL,
    endpoint VARCHAR NOT NULL,
    mode VARCHAR NOT NULL,
    model_id VARCHAR NOT NULL,
    provider_id VARCHAR NOT NULL,
    status INTEGER NOT NULL,
    error_class VARCHAR NOT NULL,
    error_message VARCHAR NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cost_usd DOUBLE NOT NULL,
    latency_ms DOUBLE NOT NULL,
    escalations INTEGER NOT NULL,
    routing_reason VARCHAR NOT NULL,
    ttft_ms DOUBLE NOT NULL DEFAULT 0,
    parent_request_id VARCHAR NOT NULL DEFAULT '',
    attempts VARCHAR NOT NULL DEFAULT '',
    reward DOUBLE,
    feedback_score DOUBLE,
    feedback_comment VARCHAR,
    client_request_id VARCHAR NOT NULL DEFAULT '',
    propensity DOUBLE,
    candidates VARCHAR NOT NULL DEFAULT '',
    cost_ref_usd DOUBLE,
    latency_ref_ms DOUBLE,
    quality_prior DOUBLE,
    quality_weight DOUBLE,
    alias_from VARCHAR NOT NULL DEFAULT ''
)
""",
    # One row per (second, metric, model, provider): `value` is the sum of that second's samples and
    # `samples` their count, so any coarser step averages exactly (sum of sums / sum of counts).
    """
CREATE TABLE IF NOT EXISTS tsdb_points (
    ts TIMESTAMPTZ NOT NULL,
    metric VARCHAR NOT NULL,
    model_id VARCHAR NOT NULL DEFAULT '',
    provider_id VARCHAR NOT NULL DEFAULT '',
    value DOUBLE NOT NULL,
    samples BIGINT NOT NULL DEFAULT 1,
    min_value DOUBLE NOT NULL,
    max_value DOUBLE NOT NULL
)
""",
)
# Columns added after the first release: an older file gains them on open. DuckDB refuses NOT NULL in
# ADD COLUMN IF NOT EXISTS, hence defaults instead.
_ADDED_COLUMNS = (
    "ALTER TABLE request_log ADD COLUMN IF NOT EXISTS ttft_ms DOUBLE DEFAULT 0",
    "ALTER TABLE request_log ADD COLUMN IF NOT EXISTS reward DOUBLE",
    "ALTER TABLE request_log ADD COLUMN IF NOT EXISTS parent_request_id VARCHAR DEFAULT ''",
    "ALTER TABLE request_log ADD COLUMN IF NOT EXISTS attempts VARCHAR DEFAULT ''",
    "ALTER TABLE request_log ADD COLUMN IF NOT EXISTS feedback_score DOUBLE",
    "ALTER TABLE request_log ADD COLUMN IF NOT EXISTS feedback_comment VARCHAR",
    "ALTER TABLE request_log ADD COLUMN IF NOT EXISTS client_request_id VARCHAR DEFAULT ''",
    "ALTER TABLE request_log ADD COLUMN IF NOT EXISTS propensity DOUBLE",
    "ALTER TABLE request_log ADD COLUMN IF NOT EXISTS candidates VARCHAR DEFAULT ''",
    "ALTER TABLE request_log ADD COLUMN IF NOT EXISTS cost_ref_usd DOUBLE",
    "ALTER TABLE request_log ADD COLUMN IF NOT EXISTS latency_ref_ms DOUBLE",
    "ALTER TABLE request_log ADD COLUMN IF NOT EXISTS quality_prior DOUBLE",
    "ALTER TABLE request_log ADD COLUMN IF NOT EXISTS quality_weight DOUBLE",
    "ALTER TABLE request_log ADD COLUMN IF NOT EXISTS alias_from VARCHAR DEFAULT ''",
)
# Token counts were INTEGER in the first release: one count over 2^31 failed its whole batch.
_WIDENED_COLUMNS = {"input_tokens": "BIGINT", "output_tokens": "BIGINT"}
_INSERT_POINTS = """
INSERT INTO tsdb_points (ts, metric, model_id, provider_id, value, samples, min_value, max_value)
SELECT to_timestamp(second), metric, model_id, provider_id, value, samples, min_value, max_value FROM point_batch
"""
_SANDBOX = {
    "threads": 1,  # batch inserts gain nothing from parallelism; extra threads would compete with the loop
    "enable_external_access": False,  # no files, URLs, ATTACH, COPY, INSTALL/LOAD from any connection
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "python_enable_replacements": False,  # `FROM some_name` must never scan a Python variable
    # DuckDB's allocator (its own jemalloc) returns freed memory to the system only when the arena that freed
    # it allocates again, unless a background thread purges it: without one, the memory of a reader's query
    # (tens of MiB for a large scan) stayed in the process after the query, measured, until the same reader
    # thread ran another. With it the process comes back to its size before the query within seconds.
    "allocator_background_threads": True,
}


# Rows committed since the last checkpoint live in DuckDB's memory (the WAL only replays them): about 0.75 KiB
# a request-log row with its time-series points, measured. DuckDB checkpoints when the WAL reaches this size;
# its default (16 MiB, ~100 000 rows) let a server at a few hundred requests a second grow by ~70 MiB before
# each checkpoint, which read as a leak over minutes. At 4 MiB the resident share stays under ~20 MiB, the
# checkpoints are small (they run on the writer thread, never on the event loop), and a restart after a
# kill replays at most 4 MiB of WAL.
CHECKPOINT_WAL_MIB = 4


class AnalyticsStore:
    def __init__(self, path: str, *, readers: int = 2, memory_limit_mib: int = 256, temp_limit_mib: int = 4096) -> None:
        self._path = path
        # Bounds for every connection, analyst queries included: memory, then what may spill to disk.
        self._limits = {
            "memory_limit": f"{memory_limit_mib}MiB",
            "max_temp_directory_size": f"{temp_limit_mib}MiB",
            "checkpoint_threshold": f"{CHECKPOINT_WAL_MIB}MiB",
        }
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="duckdb")
        self._readers = ThreadPoolExecutor(
            max_workers=readers, thread_name_prefix="duckdb-read", initializer=self._init_reader
        )
        self._conn: duckdb.DuckDBPyConnection | None = None
        self._cursor_source: duckdb.DuckDBPyConnection | None = None
        self._cursor_lock = threading.Lock()
        self._local = threading.local()

    def open(self) -> None:
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        conn = duckdb.connect(self._path, config={**_SANDBOX, **self._limits})
        conn.execute("SET GLOBAL TimeZone = 'UTC'")  # GLOBAL: every cursor buckets hours and days in UTC
        conn.execute("SET lock_configuration = true")  # from here on no connection can change a setting
        for statement in _SCHEMA:
            conn.execute(statement)
        for statement in _ADDED_COLUMNS:
            conn.execute(statement)
        _widen(conn)
        self._conn = conn
        # Reader cursors are made from this one (under a lock), never from the writer's connection, which
        # is busy on its own thread.
        self._cursor_source = conn.cursor()

    def close(self) -> None:
        self._readers.shutdown(wait=True)
        self._executor.shutdown(wait=True)  # let queued writes finish before the connection goes
        if self._conn is not None:
            self._conn.close()  # closes every cursor made from it, releasing the file
            self._conn = None
            self._cursor_source = None

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the writer thread (the one that may use ``db``)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args))

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(cursor, *args)`` on a reader thread with that thread's own cursor."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, lambda: fn(self._local.cursor, *args))

    def new_cursor(self) -> Cursor:
        """A fresh connection to the same database, for one caller on one thread; close it after use."""
        with self._cursor_lock:
            if self._cursor_source is None:
                raise RuntimeError("analytics store is not open")
            return self._cursor_source.cursor()

    def _init_reader(self) -> None:
        self._local.cursor = self.new_cursor()

    @property
    def db(self) -> duckdb.DuckDBPyConnection:
        if self._conn is None:
            raise RuntimeError("analytics store is not open")
        return self._conn

    def write_requests(self, records: Sequence[RequestRecord]) -> None:
        """Insert a batch and its time-series points (store/rollup.py) in one transaction: all, or none.

        The batch goes in as one columnar scan: DuckDB's executemany costs ~0.3 ms per row, a registered
        dict of numpy columns ~10 us per row at batch sizes of a few hundred."""
        if not records:
            return
        columns = zip(*map(_row, records), strict=True)
        batch: dict[str, np.ndarray] = {}
        for name, dtype, values in zip(_COLUMNS, _DTYPES, columns, strict=True):
            if name not in _TOKEN_COLUMNS:
                batch[name] = np.array(values, dtype=dtype)
                continue
            batch[name], clamped = _token_counts(values)
            for i in clamped:
                log.warning("token_count_clamped", request_id=records[i].request_id, column=name, reported=values[i])
        points = rollup(batch)
        db = self.db
        db.register("request_batch", batch)
        db.register("point_batch", points)
        try:
            db.execute("BEGIN TRANSACTION")
            try:
                db.execute(f"INSERT INTO request_log ({', '.join(_COLUMNS)}) SELECT {_SELECT} FROM request_batch")
                db.execute(_INSERT_POINTS)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        finally:
            db.unregister("request_batch")
            db.unregister("point_batch")

    def set_feedback(
        self, api_key_id: str, request_id: str, since: float, reward: float, score: float, comment: str | None
    ) -> int:
        """Store a key's feedback on its own written row (on the writer thread); returns the rows changed (0
        when the row is still in the writer's queue: its record object already carries the new values).
        ``since`` (unix seconds, no later than the row's timestamp) bounds the scan: DuckDB skips every row
        group that ended before it, so the update costs the rows since the request, not the whole log."""
        cursor = self.db.execute(
            "UPDATE request_log SET reward = ?, feedback_score = ?, feedback_comment = ? "
            "WHERE timestamp >= to_timestamp(?) AND api_key_id = ? AND request_id = ?",
            [reward, score, comment, since, api_key_id, request_id],
        )
        return int(cursor.fetchall()[0][0])

    def recent_requests(self, limit: int, offset: int) -> list[dict[str, Any]]:
        cursor = self.db.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM request_log ORDER BY timestamp DESC LIMIT ? OFFSET ?",
            [limit, offset],
        )
        return log_rows(cursor)

    def count_requests(self) -> int:
        # fetchall, not fetchone: DuckDB refuses other work on a connection with an unfinished result.
        return int(self.db.execute("SELECT count(*) FROM request_log").fetchall()[0][0])


def log_rows(cursor: Cursor) -> list[dict[str, Any]]:
    """A request-log query's rows as JSON-ready dicts (the timestamp in ISO 8601)."""
    names = [d[0] for d in cursor.description]
    rows = []
    for row in cursor.fetchall():
        item = dict(zip(names, row, strict=True))
        item["timestamp"] = item["timestamp"].isoformat()
        rows.append(item)
    return rows


def _token_counts(values: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """A token column as int64 with every count clamped into [0, MAX_TOKEN_COUNT], and the positions clamped."""
    try:
        counts = np.array(values, dtype=np.int64)
    except OverflowError:  # a count beyond int64: bring it into range before numpy sees it
        counts = np.array([min(max(v, -1), MAX_TOKEN_COUNT + 1) for v in values], dtype=np.int64)
    clamped = np.flatnonzero((counts < 0) | (counts > MAX_TOKEN_COUNT))
    if clamped.size:
        np.clip(counts, 0, MAX_TOKEN_COUNT, out=counts)
    return counts, clamped


def _widen(conn: duckdb.DuckDBPyConnection) -> None:
    """Widen columns an older file created narrower (a one-off rewrite of those columns, on open)."""
    current = dict(
        conn.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'request_log'").fetchall()
    )
    for name, wanted in _WIDENED_COLUMNS.items():
        if current.get(name) != wanted:
            conn.execute(f"ALTER TABLE request_log ALTER COLUMN {name} TYPE {wanted}")
