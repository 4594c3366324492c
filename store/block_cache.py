"""A bound on DuckDB's cache of table blocks, which DuckDB itself bounds only by ``memory_limit``.

DuckDB keeps every block a checkpoint writes, and every block a query reads, in memory until an allocation
needs the room under ``memory_limit``. A gateway writes all the time, so that cache grew with the request
log (measured: ~120 bytes a request, +1.7 MiB a minute at 247 req/s) until it reached the limit, 256 MiB
by default: the server's memory was not flat for hours. DuckDB has no setting for the cache alone, so the
writer trims it: when the cached blocks exceed the budget, it lowers ``memory_limit`` by the excess for a
moment, which makes DuckDB drop that many cached blocks (they are in the file; the ones a query needs
again are read back), then restores the limit. Rows not checkpointed yet and query memory are not table
blocks: DuckDB evicts cached blocks first, and nothing spills. A query allocating on a reader thread during
that millisecond finds the budget's blocks still evictable; past them, it would spill like any query
under pressure.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import duckdb
import structlog

log = structlog.get_logger(__name__)

# How often the writer looks (one duckdb_memory() scan, ~0.1 ms): at ~3,000 req/s the cache grows ~2 MiB in 5 s.
TRIM_INTERVAL_SECS = 5.0
_MIB = 1024 * 1024


class BlockCacheTrim:
    def __init__(
        self,
        memory_limit: str,
        budget_mib: int,
        *,
        interval_secs: float = TRIM_INTERVAL_SECS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = memory_limit  # the connection's memory_limit setting, restored after each trim
        self._budget = budget_mib * _MIB
        self._interval = interval_secs
        self._clock = clock
        self._due = clock() + interval_secs
        self.trims = 0  # how many times blocks were dropped (tests, diagnostics)

    def maybe_trim(self, conn: duckdb.DuckDBPyConnection) -> None:
        """On the writer thread, between its own statements: trim if the interval has passed. Never raises:
        a trim that fails (blocks pinned by a running scan) leaves the cache for the next one."""
        now = self._clock()
        if now < self._due:
            return
        self._due = now + self._interval
        try:
            self._trim(conn)
        except duckdb.Error as exc:
            log.debug("duckdb_cache_trim_failed", error=str(exc).splitlines()[0][:200])

    def _trim(self, conn: duckdb.DuckDBPyConnection) -> None:
        usage = conn.execute("SELECT tag, memory_usage_bytes FROM duckdb_memory()").fetchall()
        cached = sum(used for tag, used in usage if tag == "BASE_TABLE")
        excess = cached - self._budget
        if excess <= 0:
            return
        target_kib = max(sum(used for _, used in usage) - excess, 0) // 1024
        try:
            conn.execute(f"SET memory_limit = '{target_kib}KiB'")
            self.trims += 1
        finally:
            conn.execute(f"SET memory_limit = '{self._limit}'")
