"""Benchmark (not a test): the memory DuckDB keeps for the request log the process writes, with and without the
store's periodic reopen (store/analytics.py, REOPEN_ROWS).

    .venv/bin/python scripts/duckdb_heap.py [--rows 1200000] [--reopen-rows 200000] [--every 200000]

Writes the rows of scripts/bench_writer.py into a fresh DuckDB file through the store's writer thread, in
batches of 2,000 (the record writer's), and every `--every` rows prints glibc's heap in use (`mallinfo2`, after
`malloc_trim`: DuckDB's C++ objects live there; its table blocks are in its own allocator) and the RSS.
`--reopen-rows 0` never reopens, as before the reopen.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from scripts.bench_writer import record_pool
from scripts.memory_probe.sitecustomize import mallinfo
from store.analytics import REOPEN_ROWS, AnalyticsStore
from store.startup_pages import trim_malloc_heap

BATCH = 2000


def heap_mib() -> float:
    trim_malloc_heap()
    return float(mallinfo().uordblks) / 2**20


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def run(rows: int, reopen_rows: int, every: int, path: str) -> list[dict[str, float | int]]:
    store = AnalyticsStore(path, reopen_rows=reopen_rows)
    store.open()
    pool = record_pool(BATCH)
    started = time.time()
    samples = [{"rows": 0, "reopens": 0, "heap_mib": round(heap_mib(), 2), "rss_mib": round(rss_mib(), 1)}]
    try:
        for first in range(0, rows, BATCH):
            batch = [
                dataclasses.replace(r, request_id=f"heap-{first + i}", timestamp=started + (first + i) * 0.004)
                for i, r in enumerate(pool)
            ]
            await store.call(store.write_requests, batch)
            if (first + BATCH) % every == 0:
                heap = await store.call(heap_mib)  # on the writer thread, between two writes
                sample = {"rows": first + BATCH, "reopens": store.reopens, "heap_mib": round(heap, 2)}
                samples.append({**sample, "rss_mib": round(rss_mib(), 1)})
                print(json.dumps(samples[-1]), flush=True)
    finally:
        store.close()
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_200_000, help="request-log rows to write")
    parser.add_argument("--reopen-rows", type=int, default=REOPEN_ROWS, help="0: never reopen")
    parser.add_argument("--every", type=int, default=200_000, help="a sample every this many rows")
    args = parser.parse_args()
    if args.every % BATCH or args.rows < args.every:
        parser.error(f"--every must be a multiple of {BATCH} and at most --rows")
    with tempfile.TemporaryDirectory(prefix="tokenhub-duckdb-heap-") as tmp:
        samples = asyncio.run(run(args.rows, args.reopen_rows, args.every, str(Path(tmp) / "heap.duckdb")))
    first, last = samples[0], samples[-1]
    print(
        f"{last['rows']:,} rows, {last['reopens']} reopens: glibc heap {first['heap_mib']} -> {last['heap_mib']} MiB,"
        f" RSS {first['rss_mib']} -> {last['rss_mib']} MiB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
