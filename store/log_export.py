"""Export this machine's request log and time-series points as closed Parquet segments, and keep the cluster
views (store/analytics.py) reading every replica's segments.

A round (``run_once``, on the periodic helper, never on the event loop):

1. on the DuckDB writer thread, for each exported table: every closed window ``[start, end)`` of write
   times (``logged_at``; windows are ``segment_secs`` long, aligned to the epoch) from the watermark up to
   now is written with ``COPY ... TO`` under a temporary name, fsynced and renamed into place
   (store/segments.py), then the watermark moves to its end and is stored in ``log_export_state``. Windows
   without rows write nothing. The writer thread also inserts the batches, so a batch is wholly before or
   after an export, and every batch is stamped at or after the watermark: no row is exported twice or
   skipped;
2. on a reader thread: list every replica's segments, check each new file's Parquet footer once (a file
   that fails is skipped with a warning, and checked again if it is rewritten), and publish the file list
   with the watermarks to the cluster views in one swap.

Restart: the watermark is the larger of the stored one and the end of this replica's newest segment in the
directory, so a crash between a rename and the watermark's update re-exports nothing (and a re-export of a
window would write the same name, replacing the file).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import structlog

from store.analytics import EXPORT_COLUMNS, AnalyticsStore, Cursor, sql_text
from store.segments import (
    EXPORTED_TABLES,
    Segment,
    list_segments,
    remove_stale_temp_files,
    segment_path,
    temp_path,
)

__all__ = ["ExportRound", "LogExporter"]

log = structlog.get_logger("tokenhub.log_export")
_STATE = "CREATE TABLE IF NOT EXISTS log_export_state (table_name VARCHAR PRIMARY KEY, watermark DOUBLE NOT NULL)"
_TIME_COLUMN = {"request_log": "timestamp", "tsdb_points": "ts"}


@dataclass(slots=True)
class ExportRound:
    """What one round wrote (table -> segments, rows) and read (segments listed, unreadable)."""

    segments: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    listed: int = 0
    unreadable: int = 0


class LogExporter:
    def __init__(
        self,
        analytics: AnalyticsStore,
        *,
        replica_id: str,
        segment_secs: float,
        clock: Callable[[], float] = time.time,
        on_segment: Callable[[str, int], None] = lambda table, rows: None,
        on_unreadable: Callable[[int], None] = lambda count: None,
    ) -> None:
        if not analytics.export_dir:
            raise ValueError("the analytics store was opened without an export directory")
        self._analytics = analytics
        self.root = Path(analytics.export_dir)
        self.replica_id = replica_id
        self.segment_secs = max(1, round(segment_secs))
        self._clock = clock
        self._on_segment = on_segment
        self._on_unreadable = on_unreadable
        self._watermarks: dict[str, float] = {}
        self._checked: set[tuple[str, int, int]] = set()  # segment files whose footer read fine
        self._unreadable: set[tuple[str, int, int]] = set()

    @property
    def watermarks(self) -> dict[str, float]:
        return dict(self._watermarks)

    async def run_once(self) -> ExportRound:
        result = ExportRound()
        if not self._watermarks:
            await self._analytics.call(self._load_watermarks)
        await self._analytics.call(self._export_closed, result)
        await self.refresh(result)
        return result

    async def refresh(self, result: ExportRound | None = None) -> None:
        """List and check the segments, then publish them with the watermarks (step 2 of a round)."""
        result = result or ExportRound()
        files = await self._analytics.read(self._scan, result)
        self._analytics.publish_cluster(files, self._watermarks, self.replica_id)

    # --- writer thread -----------------------------------------------------------------------------------

    def _load_watermarks(self) -> None:
        db = self._analytics.db
        db.execute(_STATE)
        stored = dict(db.execute("SELECT table_name, watermark FROM log_export_state").fetchall())
        removed = remove_stale_temp_files(self.root, EXPORTED_TABLES, self.replica_id)
        if removed:
            log.info("log_export_temp_files_removed", count=removed)
        for table in EXPORTED_TABLES:
            own_end = max((s.end for s in list_segments(self.root, table) if s.replica == self.replica_id), default=0)
            watermark = max(float(stored.get(table, 0.0)), float(own_end))
            if watermark == 0.0:  # never exported: from the window of the oldest row (or now, when none)
                first = _first_logged(db, table, 0.0)
                now = self._clock()
                watermark = float(self._align(first if first is not None else now))
            self._watermarks[table] = watermark
        self._analytics.set_watermark_floor(max(self._watermarks.values()))

    def _export_closed(self, result: ExportRound) -> None:
        db = self._analytics.db
        now = self._clock()
        for table in EXPORTED_TABLES:
            watermark = self._watermarks[table]
            while True:
                first = _first_logged(db, table, watermark)
                if first is None:  # nothing written since: jump to the open window (later rows are stamped after now)
                    watermark = max(watermark, float(self._align(now)))
                    break
                start = max(watermark, float(self._align(first)))
                end = float(self._align(start) + self.segment_secs)
                if end > now:  # the window holding the oldest unexported row is still open
                    watermark = start
                    break
                rows = self._write_segment(db, table, int(start), int(end))
                watermark = end
                self._store_watermark(db, table, watermark)
                result.segments[table] = result.segments.get(table, 0) + 1
                result.rows[table] = result.rows.get(table, 0) + rows
                self._on_segment(table, rows)
            if watermark != self._watermarks[table]:
                self._store_watermark(db, table, watermark)
        self._analytics.set_watermark_floor(max(self._watermarks.values()))

    def _write_segment(self, db: Cursor, table: str, start: int, end: int) -> int:
        final = segment_path(self.root, table, self.replica_id, start, end)
        final.parent.mkdir(parents=True, exist_ok=True)
        temp = temp_path(final)
        query = (
            f"SELECT {', '.join(EXPORT_COLUMNS[table])}, {sql_text(self.replica_id)} AS replica_id FROM {table}"
            f" WHERE logged_at >= to_timestamp({start}) AND logged_at < to_timestamp({end})"
            f" ORDER BY {_TIME_COLUMN[table]}"
        )
        try:
            written = db.execute(
                f"COPY ({query}) TO {sql_text(str(temp))} (FORMAT parquet, COMPRESSION zstd)"
            ).fetchall()
            _fsync(temp)
            os.replace(temp, final)  # atomic: readers see the whole segment or none
            _fsync(final.parent)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        rows = int(written[0][0]) if written else 0
        self._checked.add(_identity(final))
        log.info("log_segment_exported", table=table, rows=rows, start=start, end=end, file=str(final))
        return rows

    def _store_watermark(self, db: Cursor, table: str, watermark: float) -> None:
        db.execute("INSERT OR REPLACE INTO log_export_state VALUES (?, ?)", [table, watermark])
        self._watermarks[table] = watermark

    def _align(self, unix: float) -> int:
        return math.floor(unix / self.segment_secs) * self.segment_secs

    # --- reader thread -----------------------------------------------------------------------------------

    def _scan(self, cursor: Cursor, result: ExportRound) -> dict[str, tuple[str, ...]]:
        files: dict[str, tuple[str, ...]] = {}
        unreadable = 0
        for table in EXPORTED_TABLES:
            good: list[str] = []
            for segment in list_segments(self.root, table):
                result.listed += 1
                if self._readable(cursor, segment):
                    good.append(segment.path)
                else:
                    unreadable += 1
            files[table] = tuple(good)
        result.unreadable = unreadable
        self._on_unreadable(unreadable)
        return files

    def _readable(self, cursor: Cursor, segment: Segment) -> bool:
        identity = segment.identity
        if identity in self._checked:
            return True
        if identity in self._unreadable:
            return False
        try:  # the footer: a truncated or foreign file fails here, before any query reads it
            cursor.execute(f"SELECT count(*) FROM parquet_metadata({sql_text(segment.path)})").fetchall()
        except duckdb.Error as exc:
            if not os.path.exists(segment.path):  # deleted meanwhile (retention elsewhere): not corrupt
                return False
            self._unreadable.add(identity)
            log.warning(
                "log_export_segment_unreadable", file=segment.path, error=str(exc).strip().splitlines()[0][:300]
            )
            return False
        self._checked.add(identity)
        return True


def _first_logged(db: Cursor, table: str, since: float) -> float | None:
    """The write time of the oldest row at or after ``since`` (unix seconds), or None."""
    value = db.execute(
        f"SELECT epoch(min(logged_at)) FROM {table} WHERE logged_at >= to_timestamp(?)", [since]
    ).fetchall()[0][0]
    return None if value is None else float(value)


def _identity(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path), stat.st_size, stat.st_mtime_ns


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
