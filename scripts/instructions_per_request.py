"""CPU instructions TokenHub spends per request, counted by callgrind: repeatable to a fraction of a percent on a
shared or noisy machine, where timings move by tens of percent between runs (docs/benchmark.md).

Starts TokenHub with scripts/bench-tokenhub.sh under `valgrind --tool=callgrind` (instrumentation off), sends
warm-up requests, then counts the instructions of exactly N requests (4 at a time) and prints them per request
and per thread (thread 1 is the event loop; the others' work is mostly timed, the DuckDB writer's batches and
allocator purges, so valgrind's ~50x slow-down inflates it: compare thread 1). Needs valgrind (Debian's
`valgrind` package) and an OpenAI-compatible upstream, e.g. the benchmark harness's fake provider (one that
streams, for `--stream`):

    python scripts/instructions_per_request.py --upstream http://127.0.0.1:18081 [--stream] [--requests 400]

Compare two commits by running it from each checkout; a run takes about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
BODY = {"model": "fake-gpt", "messages": [{"role": "user", "content": "Say hello in one short sentence."}]}


async def drive(url: str, key: str, count: int, stream: bool, concurrency: int = 4) -> int:
    """Send `count` requests, `concurrency` at a time; return how many failed."""
    body = {**BODY, "max_tokens": 16, "stream": stream}
    headers = {"Authorization": f"Bearer {key}"}
    left, failed = count, 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def worker() -> None:
            nonlocal left, failed
            while left > 0:
                left -= 1
                async with session.post(url, json=body, headers=headers) as response:
                    raw = await response.read()
                    failed += response.status != 200 or (stream and b"[DONE]" not in raw)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failed


def per_thread(folder: Path) -> dict[int, int]:
    """Instructions per thread from callgrind's output files (one per thread with --separate-threads)."""
    totals: dict[int, int] = {}
    for path in folder.glob("cg.*"):
        thread = total = 0
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("thread:"):
                thread = int(line.split()[1])
            elif line.startswith(("summary:", "totals:")):
                total = int(line.split()[1])
        totals[thread] = totals.get(thread, 0) + total
    return totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True, help="the provider's base URL (the script adds /v1)")
    parser.add_argument("--port", type=int, default=18195)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--stream", action="store_true", help="streamed requests instead of whole answers")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tokenhub-callgrind-") as tmp:
        folder, key_file = Path(tmp), Path(tmp) / "key"
        wrapper = (
            f"valgrind --tool=callgrind --instr-atstart=no --separate-threads=yes --callgrind-out-file={tmp}/cg.%p"
        )
        env = dict(os.environ, TOKENHUB_WRAPPER=wrapper, TOKENHUB_LOG_LEVEL="warning")
        script = ROOT / "scripts" / "bench-tokenhub.sh"
        starter = subprocess.Popen(
            ["bash", str(script), str(args.port), args.upstream, str(key_file)],
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 300
            while not (key_file.exists() and key_file.read_text().strip()):
                if starter.poll() is not None or time.monotonic() > deadline:
                    print("TokenHub did not start under valgrind", file=sys.stderr)
                    return 1
                time.sleep(0.5)
            key = key_file.read_text().strip()
            pid = str(starter.pid)  # the start script execs the server (under valgrind)
            url = f"http://127.0.0.1:{args.port}/v1/chat/completions"
            failed = asyncio.run(drive(url, key, 100, args.stream))  # warm-up: caches, pools, first imports
            time.sleep(2)
            subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
            failed += asyncio.run(drive(url, key, args.requests, args.stream))
            subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)
            subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
        finally:
            os.killpg(starter.pid, signal.SIGTERM)
            starter.wait(60)
        if failed:
            print(f"{failed} requests failed: the count is not comparable", file=sys.stderr)
            return 1
        kind = "stream" if args.stream else "request"
        for thread, total in sorted(per_thread(folder).items()):
            if total:
                print(f"thread {thread}: {total / args.requests:,.0f} instructions per {kind}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
