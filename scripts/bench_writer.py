"""Benchmark (not a test): sustained ingest of request records into DuckDB through the real RecordWriter.

    .venv/bin/python scripts/bench_writer.py [--seconds 10] [--memory]   (or: make bench-writer)

A producer on the event loop submits records as fast as the writer accepts them (it waits only when the
queue is nearly full, so nothing is dropped), stamping each with the current time like a live request
would. The writer batches them into ``request_log`` and derives the per-second ``tsdb_points`` roll-ups,
exactly as in the server. The result is rows per second over the whole run, drain included, checked
against the rows DuckDB actually holds at the end. Target: >= 50,000 rows/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from pipeline.types import RequestRecord
from store.analytics import AnalyticsStore
from store.record_writer import RecordWriter

TARGET_ROWS_PER_SEC = 50_000
MODELS = [("gpt-4o-mini", "openai"), ("gpt-4o", "openai"), ("claude-haiku", "anthropic"), ("llama-3-70b", "vllm")]


def record_pool(size: int) -> list[RequestRecord]:
    """Realistic rows: several models and tenants, 5 % failures, varied latency, cost and tokens."""
    pool = []
    for i in range(size):
        model_id, provider_id = MODELS[i % len(MODELS)]
        failed = i % 20 == 0
        pool.append(
            RequestRecord(
                timestamp=0.0,
                request_id=f"th-bench-{i:08d}",
                tenant_id=f"tenant-{i % 7}",
                api_key_id=f"{i % 13:016x}",
                endpoint="chat",
                mode=("cheap", "normal", "high_confidence")[i % 3],
                model_id="" if failed else model_id,
                provider_id="" if failed else provider_id,
                status=502 if failed else 200,
                error_class="transient" if failed else "",
                error_message="all providers failed (1 attempt(s))" if failed else "",
                input_tokens=0 if failed else 50 + i % 400,
                output_tokens=0 if failed else 20 + i % 300,
                cost_usd=0.0 if failed else round(0.00001 * (1 + i % 50), 10),
                latency_ms=12.5 + (i * 7919) % 3000 / 3,
                escalations=i % 2 if failed else 0,
                routing_reason="routed-weight-5: ranked first of 4 eligible in normal mode",
                ttft_ms=(i % 90) + 0.5 if i % 4 == 0 else 0.0,
            )
        )
    return pool


async def run(seconds: float, path: str, capacity: int, batch_size: int) -> dict[str, float | int | str]:
    store = AnalyticsStore(path)
    store.open()
    dropped = 0

    def on_drop() -> None:
        nonlocal dropped
        dropped += 1

    writer = RecordWriter(store, capacity=capacity, batch_size=batch_size, on_drop=on_drop)
    pool = record_pool(50_000)
    chunk = 500
    submitted = 0
    writer.start()
    started = time.perf_counter()
    try:
        while time.perf_counter() - started < seconds:
            if writer.depth + chunk > capacity:
                await asyncio.sleep(0.001)  # back-pressure instead of drops: measure the writer, not the queue
                continue
            now = time.time()
            for i in range(submitted, submitted + chunk):
                record = pool[i % len(pool)]
                record.timestamp = now
                writer.submit(record)
            submitted += chunk
            await asyncio.sleep(0)
    finally:
        await writer.stop()
    elapsed = time.perf_counter() - started
    rows = await store.call(store.count_requests)
    points = await store.call(lambda: store.db.execute("SELECT count(*) FROM tsdb_points").fetchall()[0][0])
    store.close()
    return {
        "rows_per_sec": round(rows / elapsed),
        "rows": rows,
        "submitted": submitted,
        "dropped": dropped,
        "tsdb_points": int(points),
        "seconds": round(elapsed, 2),
        "batch_size": batch_size,
        "database": path,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to keep submitting (default 10)")
    parser.add_argument("--memory", action="store_true", help="in-memory DuckDB instead of a file on disk")
    parser.add_argument("--capacity", type=int, default=10_000, help="record queue size (server default 10000)")
    parser.add_argument("--batch-size", type=int, default=2000, help="rows per DuckDB batch (server default 2000)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tokenhub-bench-writer-") as tmp:
        path = ":memory:" if args.memory else str(Path(tmp) / "bench.duckdb")
        result = asyncio.run(run(args.seconds, path, args.capacity, args.batch_size))
    ok = result["rows"] == result["submitted"] and result["dropped"] == 0
    meets = int(result["rows_per_sec"]) >= TARGET_ROWS_PER_SEC
    print(json.dumps(result))
    print(
        f"writer: {result['rows_per_sec']:,} rows/s sustained over {result['seconds']} s "
        f"({result['rows']:,} rows, {result['dropped']} dropped; target >= {TARGET_ROWS_PER_SEC:,}: "
        f"{'met' if meets else 'NOT met'})"
    )
    return 0 if ok and meets else 1


if __name__ == "__main__":
    raise SystemExit(main())
