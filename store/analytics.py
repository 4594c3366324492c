"""DuckDB analytics: the request log and the time-series points.

One database, two kinds of thread:
- the writer thread (``call``) owns the main connection: batch inserts from the record writer, prunes;
- reader threads (``read``) each hold their own cursor: admin reads and analyst queries. DuckDB's MVCC
  lets them run while a batch is being written, so a slow read never holds up the writer.

The database is opened sandboxed for everyone: no file, network or extension access from SQL (which DuckDB
never lets a running database turn back on), no scans of Python variables. The writer thread also keeps
DuckDB's cache of table blocks within a budget (store/block_cache.py). With a log
export directory (docs/scaling.md, "Cluster-wide analytics") that one directory, and nothing else, is
readable and writable: the exporter writes Parquet segments there and the cluster views read them.

Cluster views: ``read_cluster`` (and ``new_cursor(cluster=True)``) run on cursors where ``request_log`` and
``tsdb_points`` are TEMP views shadowing the tables: every replica's segments (``read_parquet`` over a
checked file list) UNION ALL this database's rows written at or after the export watermark (the rows not
yet in a segment of ours). Without export, or before the first segment scan, they are the plain tables.
"""

from __future__ import annotations

import asyncio
import dataclasses
import operator
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

import duckdb
import numpy as np
import structlog

from pipeline.types import RequestRecord
from store.block_cache import BlockCacheTrim
from store.rollup import rollup
from store.startup_pages import duckdb_library, release_startup_pages, trim_malloc_heap

__all__ = [
    "CHECKPOINT_WAL_MIB",
    "EXPORT_COLUMNS",
    "MAX_TOKEN_COUNT",
    "REQUEST_LOG_COLUMNS",
    "AnalyticsStore",
    "ClusterFiles",
    "Cursor",
    "log_rows",
    "sql_text",
]

log = structlog.get_logger("tokenhub.analytics")
T = TypeVar("T")
Cursor = duckdb.DuckDBPyConnection
_FIELDS = [f for f in dataclasses.fields(RequestRecord) if f.metadata.get("column", True)]
_COLUMNS = [f.name for f in _FIELDS]
# Explicit dtypes: inference costs a pass over the values, and strings as numpy objects (not fixed-width
# unicode) scan several times faster into DuckDB.
_NUMPY_TYPES = {"int": np.int64, "float": np.float64}
_DTYPES = [_NUMPY_TYPES.get(str(f.type), object) for f in _FIELDS]
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
# When each row was written to this database (unix time of its batch, never before the export watermark):
# the export partitions by it, so a row that arrives late for its request time is still exported exactly
# once. Rows from before the column existed take their own time.
_LOGGED_AT = {"request_log": "timestamp", "tsdb_points": "ts"}
# The columns a segment carries (plus replica_id); logged_at stays local.
EXPORT_COLUMNS: dict[str, tuple[str, ...]] = {
    "request_log": REQUEST_LOG_COLUMNS,
    "tsdb_points": ("ts", "metric", "model_id", "provider_id", "value", "samples", "min_value", "max_value"),
}
# Token counts were INTEGER in the first release: one count over 2^31 failed its whole batch.
_WIDENED_COLUMNS = {"input_tokens": "BIGINT", "output_tokens": "BIGINT"}
_INSERT_POINTS = """
INSERT INTO tsdb_points (ts, metric, model_id, provider_id, value, samples, min_value, max_value, logged_at)
SELECT to_timestamp(second), metric, model_id, provider_id, value, samples, min_value, max_value, to_timestamp(?)
FROM point_batch
"""
_SANDBOX = {
    "threads": 1,  # batch inserts gain nothing from parallelism; extra threads would compete with the loop
    "async_threads": 0,  # eight idle threads by default, for remote I/O, which external access forbids anyway
    # No vacuum: a checkpoint would otherwise merge the small row groups earlier checkpoints wrote, reading
    # them back and rewriting them, up to +46 MiB for 0.3 s and more as the table grew (measured: it set the
    # server's peak RSS under load). Row groups now keep the rows of one checkpoint each (~9,000 to 13,000 at
    # CHECKPOINT_WAL_MIB); retention's deletes, oldest rows first, still free a row group once all are gone.
    "max_vacuum_tasks": 0,
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

# DuckDB keeps in memory, until the database is closed, some state of every row group this process wrote (~70 KB
# each, one per table and checkpoint: ~1 MiB per 100,000 request-log rows, measured). No checkpoint, vacuum or
# setting gives it back, and a database opened again loads little of it. So the writer opens the database again
# after this many rows (~40 ms, measured): the growth stays within ~2 MiB (docs/observability.md). Opening runs
# DuckDB's catalogue registration again (~7 MiB of its library's pages, resident until released), and glibc keeps
# what the close freed resident in the freeing thread's arena: the reopen gives both back (`_give_back_memory`).
REOPEN_ROWS = 200_000


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterFiles:
    """What the cluster views read: per table, the checked segment files and this replica's watermark
    (unix seconds: its rows written before it are in its segments, the rest are read locally)."""

    replica_id: str
    files: dict[str, tuple[str, ...]]
    watermarks: dict[str, float]
    generation: int = 0


class AnalyticsStore:
    def __init__(
        self,
        path: str,
        *,
        readers: int = 2,
        memory_limit_mib: int = 256,
        cache_mib: int = 4,
        temp_limit_mib: int = 4096,
        export_dir: str = "",
        clock: Callable[[], float] = time.time,
        reopen_rows: int = REOPEN_ROWS,
    ) -> None:
        self._path = path
        # The one directory SQL may touch (segments); '' = none. Resolved: DuckDB compares path prefixes.
        self.export_dir = os.path.realpath(export_dir) if export_dir else ""
        self._clock = clock
        self._floor = 0.0  # no row is stamped logged_at before this (the export watermark)
        self._cluster: ClusterFiles | None = None
        self._cluster_lock = threading.Lock()
        self._catalog = ""
        # Bounds for every connection, analyst queries included: memory, then what may spill to disk.
        self._limits = {
            "memory_limit": f"{memory_limit_mib}MiB",
            "max_temp_directory_size": f"{temp_limit_mib}MiB",
            "checkpoint_threshold": f"{CHECKPOINT_WAL_MIB}MiB",
        }
        # In memory, the table blocks are the data itself: evicting them would only move them to temp files.
        self.cache_trim = BlockCacheTrim(self._limits["memory_limit"], cache_mib) if path != ":memory:" else None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="duckdb")
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="duckdb-read")
        self._conn: duckdb.DuckDBPyConnection | None = None
        self._cursor_source: duckdb.DuckDBPyConnection | None = None
        self._local = threading.local()
        # Reopening (REOPEN_ROWS) closes every cursor: it waits for a moment with no read running, and reads
        # wait while it runs. A file only: an in-memory database would lose its rows. `_use` also serialises
        # making cursors from `_cursor_source`.
        self._reopen_rows = reopen_rows if path != ":memory:" else 0
        self._written = 0  # rows written since the database was opened
        self._generation = 0  # which opening the reader threads' cursors belong to
        self.reopens = 0
        self._reopen_failed = False
        self._use = threading.Condition()
        self._reading = 0
        self._reopening = False

    def open(self) -> None:
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        if self.export_dir:
            Path(self.export_dir).mkdir(parents=True, exist_ok=True)
            # allowed_directories can only be set while external access is on: set it, then turn access off
            # (before any other connection exists and before the lock below).
            config = {k: v for k, v in _SANDBOX.items() if k != "enable_external_access"}
            conn = duckdb.connect(self._path, config={**config, **self._limits})
            conn.execute(f"SET allowed_directories = [{sql_text(self.export_dir + os.sep)}]")
            conn.execute("SET enable_external_access = false")
        else:
            conn = duckdb.connect(self._path, config={**_SANDBOX, **self._limits})
        conn.execute("SET GLOBAL TimeZone = 'UTC'")  # GLOBAL: every cursor buckets hours and days in UTC
        # The configuration is not locked (lock_configuration): the cache trim changes memory_limit. Analyst SQL
        # cannot change a setting anyway (one SELECT, store/analyst.py), and external access cannot come back.
        for statement in _SCHEMA:
            conn.execute(statement)
        for statement in _ADDED_COLUMNS:
            conn.execute(statement)
        _widen(conn)
        _add_logged_at(conn)
        self._catalog = conn.execute("SELECT current_database()").fetchall()[0][0]
        self._conn = conn
        # Reader cursors are made from this one (under `_use`), never from the writer's connection, which
        # is busy on its own thread.
        self._cursor_source = conn.cursor()

    def close(self) -> None:
        self._reopen_rows = 0  # the last writes need no fresh database
        self._readers.shutdown(wait=True)
        self._executor.shutdown(wait=True)  # let queued writes finish before the connection goes
        self._close_connection()

    def _close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()  # closes every cursor made from it, releasing the file
            self._conn = None
            self._cursor_source = None

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the writer thread (the one that may use ``db``), then trim the block cache
        if it is due (the writes are what grows it)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._on_writer, fn, args)

    async def call_with_db(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(db, *args)`` on the writer thread, with the connection of that moment (a reopen replaces it)."""
        return await self.call(lambda: fn(self.db, *args))

    def _on_writer(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        if self._conn is None and self._reopen_failed:  # try again before this work needs the database
            self._reopen()
        try:
            return fn(*args)
        finally:
            if self._reopen_rows and self._written >= self._reopen_rows:
                self._reopen()
            if self.cache_trim is not None and self._conn is not None:
                self.cache_trim.maybe_trim(self._conn)

    def _reopen(self) -> None:
        """Close the database and open it again (REOPEN_ROWS), unless a read is running: then after a later
        write. Writes wait meanwhile (this is the writer thread), reads wait in ``_read``."""
        with self._use:
            if self._reading:
                return
            self._reopening = True
        started = time.perf_counter()
        written, self._written = self._written, 0
        try:
            self._close_connection()
            self.open()
        except Exception:  # never the write's failure: it succeeded; the next writer call tries again
            self._reopen_failed = True
            log.exception("analytics_reopen_failed")
            return
        finally:
            with self._use:
                self._generation += 1
                self._reopening = False
                self._use.notify_all()
        self._reopen_failed = False
        self.reopens += 1
        ms = round((time.perf_counter() - started) * 1000, 1)
        self._give_back_memory(written, ms)

    @staticmethod
    def _give_back_memory(rows: int, reopen_ms: float) -> None:
        """After a reopen: the old database's freed state to the kernel, and the pages of DuckDB's library
        that opening ran again (its catalogue), as start-up does (store/startup_pages.py)."""
        started = time.perf_counter()
        trim_malloc_heap()
        library = duckdb_library()
        released = release_startup_pages(library) if library is not None else None
        freed = round(released.freed_kib / 1024, 1) if released is not None else 0.0
        ms = round((time.perf_counter() - started) * 1000, 1)
        log.info("analytics_reopened", rows=rows, ms=reopen_ms, pages_released_mib=freed, give_back_ms=ms)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(cursor, *args)`` on a reader thread with that thread's own cursor."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._read, lambda: fn(self._reader_cursor(), *args))

    def _read(self, run: Callable[[], T]) -> T:
        with self._use:
            while self._reopening:
                self._use.wait()
            self._reading += 1
        try:
            return run()
        finally:
            with self._use:
                self._reading -= 1

    def _reader_cursor(self) -> Cursor:
        """This reader thread's cursor, made again after a reopen (which closed the old one)."""
        local = self._local
        if getattr(local, "generation", None) != self._generation:
            local.cursor = self.new_cursor()
            local.cluster = None
            local.cluster_generation = None
            local.generation = self._generation
        return cast(Cursor, local.cursor)

    async def read_cluster(self, fn: Callable[..., T], *args: Any) -> T:
        """``read``, on a cursor whose ``request_log`` and ``tsdb_points`` are the cluster's (the module doc).
        A segment that vanished (retention on another replica) or turns out unreadable is dropped from the
        views and the read runs again."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._read, lambda: self._read_cluster(fn, args))

    def _read_cluster(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        for _ in range(3):
            try:
                return fn(self._cluster_cursor(), *args)  # the views bind (read footers) when made
            except duckdb.Error as exc:
                if not self.drop_failed_segments(exc):
                    raise
        return fn(self._cluster_cursor(), *args)

    def new_cursor(self, *, cluster: bool = False) -> Cursor:
        """A fresh connection to the same database, for one caller on one thread; close it after use.
        ``cluster``: with the cluster views (``read_cluster``)."""
        with self._use:
            if self._cursor_source is None:
                raise RuntimeError("analytics store is not open")
            cursor = self._cursor_source.cursor()
        for _ in range(3):
            if not cluster or (view := self._cluster) is None:
                return cursor
            try:
                self._create_views(cursor, view)
                return cursor
            except duckdb.Error as exc:
                if not self.drop_failed_segments(exc):
                    cursor.close()
                    raise
        cursor.close()
        raise RuntimeError("the cluster views kept failing on segments that vanished")

    # --- export support (store/log_export.py) ------------------------------------------------------------

    @property
    def cluster_files(self) -> ClusterFiles | None:
        return self._cluster

    def publish_cluster(self, files: dict[str, tuple[str, ...]], watermarks: dict[str, float], replica_id: str) -> None:
        """Swap what the cluster views read (files and watermarks together, so no row is read twice)."""
        with self._cluster_lock:
            generation = self._cluster.generation + 1 if self._cluster else 1
            self._cluster = ClusterFiles(replica_id, dict(files), dict(watermarks), generation)

    def forget_segments(self, paths: Iterable[str]) -> None:
        """Stop reading these files (deleted by retention, or unreadable)."""
        gone = set(paths)
        with self._cluster_lock:
            view = self._cluster
            if view is None or not gone:
                return
            files = {table: tuple(p for p in paths_ if p not in gone) for table, paths_ in view.files.items()}
            if files != view.files:
                self._cluster = ClusterFiles(view.replica_id, files, view.watermarks, view.generation + 1)

    def drop_failed_segments(self, exc: BaseException) -> bool:
        """After a cluster read failed: drop the segments it names or that no longer exist; True if any."""
        view = self._cluster
        if view is None or not isinstance(exc, duckdb.IOException | duckdb.InvalidInputException):
            return False
        message = str(exc)
        bad = [path for paths in view.files.values() for path in paths if path in message or not os.path.exists(path)]
        if bad:
            log.warning("log_export_segments_dropped", count=len(bad), error=message.strip().splitlines()[0][:300])
            self.forget_segments(bad)
        return bool(bad)

    def set_watermark_floor(self, unix: float) -> None:
        self._floor = max(self._floor, unix)

    def _stamp(self) -> float:
        """logged_at of a batch written now: never before the watermark, even if the clock steps back."""
        return max(self._clock(), self._floor)

    def _cluster_cursor(self) -> Cursor:
        view = self._cluster
        cursor = self._reader_cursor()
        local = self._local
        if view is None:
            return cursor
        if local.cluster_generation != view.generation:
            if local.cluster is None:
                local.cluster = self.new_cursor()
            self._create_views(local.cluster, view)
            local.cluster_generation = view.generation
        return local.cluster

    def _create_views(self, cursor: Cursor, view: ClusterFiles) -> None:
        for table, columns in EXPORT_COLUMNS.items():
            local = (
                f"SELECT {', '.join(columns)}, {sql_text(view.replica_id)} AS replica_id"
                f' FROM "{self._catalog.replace(chr(34), chr(34) * 2)}".main.{table}'
                f" WHERE logged_at >= to_timestamp({float(view.watermarks.get(table, 0.0))!r})"
            )
            files = view.files.get(table, ())
            if files:
                listed = ", ".join(sql_text(path) for path in files)
                local += (
                    f" UNION ALL BY NAME SELECT * FROM read_parquet([{listed}],"
                    " hive_partitioning = false, union_by_name = true)"
                )
            cursor.execute(f"CREATE OR REPLACE TEMP VIEW {table} AS {local}")

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
        self._written += len(records)
        for record in records:  # routing reasons left for later are rendered here, off the event loop
            record.resolve_reason()
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
                stamp = self._stamp()
                db.execute(
                    f"INSERT INTO request_log ({', '.join(_COLUMNS)}, logged_at)"
                    f" SELECT {_SELECT}, to_timestamp(?) FROM request_batch",
                    [stamp],
                )
                db.execute(_INSERT_POINTS, [stamp])
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


def sql_text(value: str) -> str:
    """A SQL string literal (for the places DuckDB takes no parameter: COPY targets, view bodies)."""
    return "'" + value.replace("'", "''") + "'"


def _add_logged_at(conn: duckdb.DuckDBPyConnection) -> None:
    """Add ``logged_at`` where it is missing; the rows already there take their own time as theirs."""
    present = {
        row[0]
        for row in conn.execute(
            "SELECT table_name FROM duckdb_columns() WHERE column_name = 'logged_at' AND schema_name = 'main'"
        ).fetchall()
    }
    for table, time_column in _LOGGED_AT.items():
        if table in present:
            continue
        # No DEFAULT current_timestamp: replaying a WAL that holds such a column fails with extension
        # autoloading off (the function is not registered yet at replay). Every insert sets it instead.
        conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS logged_at TIMESTAMPTZ")
        conn.execute(f"UPDATE {table} SET logged_at = {time_column}")


def _widen(conn: duckdb.DuckDBPyConnection) -> None:
    """Widen columns an older file created narrower (a one-off rewrite of those columns, on open)."""
    current = dict(
        conn.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'request_log'").fetchall()
    )
    for name, wanted in _WIDENED_COLUMNS.items():
        if current.get(name) != wanted:
            conn.execute(f"ALTER TABLE request_log ALTER COLUMN {name} TYPE {wanted}")
