"""Parquet export of the request log and the time series (store/log_export.py, store/segments.py), with a clock
the test moves: closed windows only, atomic files, the watermark across restarts, retention of segments,
unreadable and temporary files, and the sandbox around the export directory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from store.analyst import QueryFailed, QueryRefused, run_query
from store.analytics import AnalyticsStore
from store.log_export import LogExporter
from store.retention import Retention
from store.segments import list_segments, segment_path
from tests.fakes.clock import FakeClock
from tests.test_record_writer import make_record

DAY = 86_400.0
T0 = 1_700_000_000.0  # a multiple of 100: windows of 100 s start here


class Replica:
    """One machine: its own DuckDB file, the shared export directory, one clock for stamps and windows."""

    def __init__(self, tmp: Path, name: str, export_dir: Path, clock: FakeClock, segment_secs: float = 100) -> None:
        self.store = AnalyticsStore(str(tmp / f"{name}.duckdb"), export_dir=str(export_dir), clock=clock)
        self.store.open()
        self.exporter = LogExporter(self.store, replica_id=name, segment_secs=segment_secs, clock=clock)
        self.name = name
        self.clock = clock

    def write(self, *ids: int) -> None:
        now = self.clock()  # requests stamped as they finish, like the recorder does
        self.store.write_requests([make_record(i, request_id=f"{self.name}-{i}", timestamp=now) for i in ids])

    async def ids(self) -> list[str]:
        def read(db: Any) -> list[str]:
            return [row[0] for row in db.execute("SELECT request_id FROM request_log ORDER BY 1").fetchall()]

        return await self.store.read_cluster(read)

    async def count(self, sql: str) -> Any:
        return await self.store.read_cluster(lambda db: db.execute(sql).fetchall())

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0 + 10)


@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    return tmp_path / "export"


@pytest.fixture
def replicas(tmp_path: Path, export_dir: Path, clock: FakeClock) -> Iterator[list[Replica]]:
    made = [Replica(tmp_path, name, export_dir, clock) for name in ("a", "b")]
    yield made
    for replica in made:
        replica.close()


def parquet_ids(export_dir: Path) -> list[str]:
    """Every request id in every finished segment, as an outside reader sees the directory."""
    files = [s.path for s in list_segments(export_dir, "request_log")]
    if not files:
        return []
    conn = duckdb.connect()
    try:
        return [r[0] for r in conn.execute("SELECT request_id FROM read_parquet(?) ORDER BY 1", [files]).fetchall()]
    finally:
        conn.close()


async def test_only_closed_windows_are_exported_and_each_row_is_read_once(
    replicas: list[Replica], export_dir: Path, clock: FakeClock
) -> None:
    a, b = replicas
    a.write(1, 2)
    b.write(3)
    await a.exporter.run_once()
    await b.exporter.run_once()
    assert list_segments(export_dir, "request_log") == []  # [T0, T0+100) is still open
    assert await a.ids() == ["a-1", "a-2"]  # local rows, no segment yet
    clock.now = T0 + 150  # the window closed; new rows fall into the next one
    a.write(4)
    await a.exporter.run_once()
    await b.exporter.run_once()
    await a.exporter.refresh()
    segments = list_segments(export_dir, "request_log")
    assert [(s.replica, s.start, s.end) for s in segments] == [("a", T0, T0 + 100), ("b", T0, T0 + 100)]
    assert Path(segments[0].path).parent.name == "date=2023-11-14"
    assert parquet_ids(export_dir) == ["a-1", "a-2", "b-3"]
    # a: both replicas' segments plus its own unexported row, each once; b has not seen a's segment yet
    assert await a.ids() == ["a-1", "a-2", "a-4", "b-3"]
    assert await b.ids() == ["a-1", "a-2", "b-3"]
    assert await a.count("SELECT replica_id, count(*) FROM request_log GROUP BY 1 ORDER BY 1") == [("a", 3), ("b", 1)]
    # the time series too: two replicas' points of the same second add up (sums and sample counts)
    samples = await a.count("SELECT sum(samples) FROM tsdb_points WHERE metric = 'latency'")
    assert samples == [(4,)]
    # the plain tables are untouched: a's own rows stay local until retention
    assert await a.store.read(lambda db: db.execute("SELECT count(*) FROM request_log").fetchall()) == [(3,)]


async def test_a_restart_continues_from_the_watermark(tmp_path: Path, export_dir: Path, clock: FakeClock) -> None:
    a = Replica(tmp_path, "a", export_dir, clock)
    a.write(1)
    clock.now = T0 + 100
    await a.exporter.run_once()
    first = list_segments(export_dir, "request_log")
    assert len(first) == 1
    a.write(2)
    a.close()
    clock.now = T0 + 350
    a = Replica(tmp_path, "a", export_dir, clock)  # restart: the stored watermark says T0 + 100
    try:
        a.write(3)
        await a.exporter.run_once()
        segments = list_segments(export_dir, "request_log")
        assert [(s.start, s.end) for s in segments] == [(T0, T0 + 100), (T0 + 100, T0 + 200)]
        assert segments[0].identity == first[0].identity  # not rewritten
        assert parquet_ids(export_dir) == ["a-1", "a-2"]
        assert await a.ids() == ["a-1", "a-2", "a-3"]
    finally:
        a.close()


async def test_a_crash_between_rename_and_watermark_exports_nothing_twice(
    tmp_path: Path, export_dir: Path, clock: FakeClock
) -> None:
    a = Replica(tmp_path, "a", export_dir, clock)
    a.write(1)
    clock.now = T0 + 100
    await a.exporter.run_once()
    a.store.db.execute("DELETE FROM log_export_state")  # as if the process died right after the rename
    a.close()
    # and a crash mid-write left a temporary file of ours; another replica's is left alone
    day = Path(list_segments(export_dir, "request_log")[0].path).parent
    (day / ".a-1700000100-1700000200.4242.tmp").write_bytes(b"half a segment")
    (day / ".b-1700000100-1700000200.4242.tmp").write_bytes(b"b is writing this")
    a = Replica(tmp_path, "a", export_dir, clock)
    try:
        await a.exporter.run_once()
        assert a.exporter.watermarks["request_log"] == T0 + 100  # from the segment in the directory
        assert parquet_ids(export_dir) == ["a-1"]
        assert sorted(p.name for p in day.glob(".*")) == [".b-1700000100-1700000200.4242.tmp"]
        assert await a.ids() == ["a-1"]
    finally:
        a.close()


async def test_rows_written_late_for_their_request_time_are_not_skipped(
    replicas: list[Replica], clock: FakeClock
) -> None:
    a, _ = replicas
    clock.now = T0 + 500
    await a.exporter.run_once()  # watermark: T0 + 500
    # a request that started long before the watermark and is written only now: exported with now's window
    a.store.write_requests([make_record(7, request_id="a-7", timestamp=T0 + 7)])
    clock.now = T0 + 600
    await a.exporter.run_once()
    segments = list_segments(a.exporter.root, "request_log")
    assert [(s.start, s.end) for s in segments] == [(T0 + 500, T0 + 600)]
    assert await a.ids() == ["a-7"]


async def test_a_clock_stepping_back_still_stamps_rows_after_the_watermark(
    replicas: list[Replica], clock: FakeClock
) -> None:
    a, _ = replicas
    a.write(1)
    clock.now = T0 + 200
    await a.exporter.run_once()
    clock.now = T0 + 50  # NTP stepped the clock back: the row is stamped at the watermark instead
    a.write(2)
    assert await a.ids() == ["a-1", "a-2"]
    clock.now = T0 + 300
    await a.exporter.run_once()
    assert parquet_ids(a.exporter.root) == ["a-1", "a-2"]


async def test_retention_deletes_whole_segments_past_the_horizon(
    replicas: list[Replica], export_dir: Path, clock: FakeClock
) -> None:
    a, b = replicas
    a.write(1)
    b.write(2)
    clock.now = T0 + 2 * DAY
    a.write(3)
    clock.now = T0 + 2 * DAY + 200
    await a.exporter.run_once()
    await b.exporter.run_once()
    await a.exporter.refresh()
    assert len(list_segments(export_dir, "request_log")) == 3
    old_day = Path(list_segments(export_dir, "request_log")[0].path).parent
    retention = Retention(a.store, tsdb_days=1, request_log_days=1, clock=clock)
    assert await retention.prune_request_log() == 1  # a's local row older than a day
    left = list_segments(export_dir, "request_log")
    assert [(s.replica, s.start) for s in left] == [("a", T0 + 2 * DAY)]  # b's old segment went too
    assert not old_day.exists()  # its day directory emptied
    assert await a.ids() == ["a-3"]
    await retention.prune_tsdb()
    assert [s.start for s in list_segments(export_dir, "tsdb_points")] == [T0 + 2 * DAY]


async def test_unreadable_and_temporary_files_do_not_break_queries(
    replicas: list[Replica], export_dir: Path, clock: FakeClock
) -> None:
    a, _ = replicas
    a.write(1)
    clock.now = T0 + 100
    await a.exporter.run_once()
    day = Path(list_segments(export_dir, "request_log")[0].path).parent
    (day / "c-1700000000-1700000100.parquet").write_bytes(b"PAR1 truncated by a failed copy")
    (day / ".c-1700000000-1700000100.99.tmp").write_bytes(b"being written")
    (day / "notes.txt").write_text("not a segment")
    result = await a.exporter.run_once()
    assert (result.listed, result.unreadable) == (3, 1)  # a's two tables' segments and the bad one
    assert await a.ids() == ["a-1"]
    # a segment that vanishes after it was checked (retention on another replica) is dropped on the spot
    mine = list_segments(export_dir, "request_log")[0]
    good = segment_path(export_dir, "request_log", "d", int(T0), int(T0 + 100))
    with open(mine.path, "rb") as src:
        good.write_bytes(src.read().replace(b"a-1", b"d-1"))
    await a.exporter.refresh()
    assert await a.ids() == ["a-1", "d-1"]
    os.unlink(good)
    assert await a.ids() == ["a-1"]
    assert str(good) not in a.store.cluster_files.files["request_log"]  # type: ignore[union-attr]


async def test_the_sandbox_reaches_segments_only_through_the_views(
    replicas: list[Replica], export_dir: Path, clock: FakeClock, tmp_path: Path
) -> None:
    a, _ = replicas
    a.write(1)
    clock.now = T0 + 100
    await a.exporter.run_once()
    segment = list_segments(export_dir, "request_log")[0].path

    def analyst(sql: str) -> Any:
        return a.store.read(
            lambda db: run_query(
                db,
                sql,
                max_rows=100,
                max_bytes=10**6,
                timeout=10,
                new_cursor=lambda: a.store.new_cursor(cluster=True),
                retry_on=a.store.drop_failed_segments,
            )
        )

    assert (await analyst("SELECT count(*) AS n FROM request_log"))["rows"] == [[1]]
    for sql in (
        f"SELECT * FROM read_parquet('{segment}')",
        f"SELECT * FROM '{segment}'",
        f"COPY request_log TO '{export_dir}/x.parquet'",
    ):
        with pytest.raises(QueryRefused):
            await analyst(sql)
    # below the parser's checks the database itself still refuses every path outside the export directory
    outside = tmp_path / "outside.csv"
    outside.write_text("a\n1\n")
    with pytest.raises(duckdb.PermissionException):
        await a.store.read(lambda db: db.execute(f"SELECT * FROM read_csv('{outside}')").fetchall())
    with pytest.raises(duckdb.PermissionException):
        await a.store.read(lambda db: db.execute(f"SELECT * FROM read_csv('{export_dir}/../outside.csv')").fetchall())
    with pytest.raises(QueryFailed):
        await analyst("SELECT no_such_column FROM request_log")


async def test_an_unwritable_export_directory_loses_nothing(
    replicas: list[Replica], export_dir: Path, clock: FakeClock
) -> None:
    a, _ = replicas
    a.write(1)
    clock.now = T0 + 100
    blocker = export_dir / "request_log" / "date=2023-11-14"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file where the day's directory belongs: the segment cannot be written")
    with pytest.raises(OSError):
        await a.exporter.run_once()
    assert a.exporter.watermarks["request_log"] == T0  # not moved past the rows it could not write
    assert await a.ids() == ["a-1"]  # still read locally
    blocker.unlink()
    clock.now = T0 + 250
    a.write(2)
    await a.exporter.run_once()
    assert parquet_ids(export_dir) == ["a-1"]  # the failed window, now written; a-2's window is still open
    assert await a.ids() == ["a-1", "a-2"]


def test_a_database_killed_mid_flight_reopens(tmp_path: Path) -> None:
    """Regression: a DEFAULT current_timestamp column made the WAL unreplayable (no extension autoload)."""
    import subprocess
    import sys

    path = tmp_path / "killed.duckdb"
    script = (
        "import os, sys; sys.path.insert(0, os.getcwd())\n"
        "from store.analytics import AnalyticsStore\n"
        "from tests.test_record_writer import make_record\n"
        f"s = AnalyticsStore({str(path)!r}, export_dir={str(tmp_path / 'export')!r}); s.open()\n"
        "s.write_requests([make_record(i) for i in range(50)])\n"
        "os._exit(0)  # no checkpoint, no close: the WAL holds everything\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).parent.parent, timeout=120)
    assert Path(f"{path}.wal").exists()
    store = AnalyticsStore(str(path), export_dir=str(tmp_path / "export"))
    store.open()
    try:
        assert store.count_requests() == 50
    finally:
        store.close()
