"""Exported Parquet segments on the shared export directory: their names, listing, checks and deletion.

Layout (one directory tree shared by every replica, docs/scaling.md "Cluster-wide analytics")::

    <dir>/<table>/date=YYYY-MM-DD/<replica>-<start>-<end>.parquet

``start``/``end`` are the unix seconds of the closed window ``[start, end)`` of write times the segment
holds, ``date`` the UTC day of ``start``. Names never collide across replicas (the replica id is in them)
and are a pure function of (replica, window), so re-exporting a window after a crash replaces the file
instead of adding a second copy. Files are written under a temporary name (a leading dot, no ``.parquet``
suffix) and renamed into place: a reader sees a whole segment or none. Everything here is blocking file
I/O: callers run it off the event loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

__all__ = [
    "EXPORTED_TABLES",
    "Segment",
    "default_replica_id",
    "delete_segments_before",
    "list_segments",
    "remove_stale_temp_files",
    "segment_path",
    "temp_path",
]

EXPORTED_TABLES = ("request_log", "tsdb_points")
_SUFFIX = ".parquet"
_NAME = re.compile(r"^(?P<replica>[A-Za-z0-9_.][A-Za-z0-9_.-]*)-(?P<start>\d+)-(?P<end>\d+)\.parquet$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True, slots=True)
class Segment:
    table: str
    path: str  # absolute
    replica: str
    start: int  # unix seconds, inclusive
    end: int  # unix seconds, exclusive
    size: int
    mtime_ns: int

    @property
    def identity(self) -> tuple[str, int, int]:
        """What a check of the file's contents is valid for: a rewritten file is checked again."""
        return self.path, self.size, self.mtime_ns


def default_replica_id(data_dir: Path) -> str:
    """Host name plus a hash of the absolute data directory: stable across restarts, distinct for two
    servers on one host (they cannot share a data directory). Set TOKENHUB_LOG_EXPORT_REPLICA_ID where
    host names repeat (e.g. containers with a fixed hostname)."""
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:8]
    return f"{sanitize_replica_id(socket.gethostname())}_{digest}"


def sanitize_replica_id(text: str) -> str:
    """A replica id safe in a file name and a SQL literal: [A-Za-z0-9_.-], not starting with '.' or '-'."""
    cleaned = _UNSAFE.sub("_", text.strip())[:100].lstrip(".-")
    return cleaned or "replica"


def segment_path(root: Path, table: str, replica: str, start: int, end: int) -> Path:
    day = datetime.fromtimestamp(start, tz=UTC).strftime("%Y-%m-%d")
    return root / table / f"date={day}" / f"{replica}-{start}-{end}{_SUFFIX}"


def temp_path(final: Path) -> Path:
    """Where a segment is written before its rename: ignored by every listing (leading dot, other suffix)."""
    return final.with_name(f".{final.stem}.{os.getpid()}.tmp")


def list_segments(root: Path, table: str) -> list[Segment]:
    """Every finished segment of ``table`` (any replica), oldest window first. Temporary files and names
    that are not segments are ignored; a file that vanishes while listing (retention elsewhere) is skipped."""
    found: list[Segment] = []
    base = root / table
    try:
        days = [entry for entry in os.scandir(base) if entry.is_dir() and entry.name.startswith("date=")]
    except FileNotFoundError:
        return found
    for day in days:
        try:
            entries = list(os.scandir(day.path))
        except FileNotFoundError:
            continue
        for entry in entries:
            match = _NAME.match(entry.name)
            if match is None:
                continue
            try:
                stat = entry.stat()
            except FileNotFoundError:
                continue
            found.append(
                Segment(
                    table,
                    entry.path,
                    match["replica"],
                    int(match["start"]),
                    int(match["end"]),
                    stat.st_size,
                    stat.st_mtime_ns,
                )
            )
    found.sort(key=lambda s: (s.start, s.replica, s.end))
    return found


def delete_segments_before(root: Path, table: str, cutoff_unix: float) -> list[Segment]:
    """Delete the segments (of every replica) whose whole window ended before ``cutoff_unix``; a segment
    straddling the cutoff is kept until it is entirely past it. Empty day directories go too. Returns the
    segments deleted. Any replica may run this: deleting a file another replica deleted first is a no-op."""
    deleted = []
    for segment in list_segments(root, table):
        if segment.end <= cutoff_unix:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(segment.path)
                deleted.append(segment)
    _remove_empty_days({Path(s.path).parent for s in deleted})
    return deleted


def remove_stale_temp_files(root: Path, tables: Iterable[str], replica: str) -> int:
    """Remove this replica's temporary files left by a crash mid-write (never another replica's)."""
    removed = 0
    prefix = f".{replica}-"
    for table in tables:
        for day in (root / table).glob("date=*"):
            for path in day.glob(f"{prefix}*.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
    return removed


def _remove_empty_days(days: set[Path]) -> None:
    for day in days:
        with contextlib.suppress(OSError):  # not empty (another segment, a temp file) or already gone
            day.rmdir()
