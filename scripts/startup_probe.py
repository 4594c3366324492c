"""Start-up time and idle memory of `tokenhub serve`: the time from exec to the first HTTP answer on /healthz
(any status: the server is listening) and the CPU the process used until then (which a busy machine inflates
less than the wall time), then the RSS after it has settled, over a few starts.

    python scripts/startup_probe.py [--runs 5] [--settle-secs 5]

Each start is a fresh process (scripts/server_process.py) on a fresh data directory, so the time includes
creating the SQLite and DuckDB files; `--restart` starts every run on one data directory made by a first,
unmeasured start (a restart: the files exist, nothing to migrate). Prints one line per run and the medians.

The sources are compiled to bytecode first (`__pycache__`, as `pip install` does for the image): with
PYTHONDONTWRITEBYTECODE set and no bytecode, each start would compile every module again (~0.5 s of CPU),
which no installed server pays.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server_process import ServerProcess, cpu_secs


def memory(pid: int) -> tuple[float, float]:
    """(RSS, peak RSS) of a process in MiB, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "stages", "adapters", "store", "admin_ui")


async def one_start(settle_secs: float, data_dir: str | None = None) -> tuple[float, float, float, float]:
    started = time.perf_counter()
    hub = ServerProcess(TOKENHUB_LOG_LEVEL="warning", **({"TOKENHUB_DATA_DIR": data_dir} if data_dir else {}))
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(3000):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(hub.base + "/healthz"):
                        break
                await asyncio.sleep(0.01)
            else:
                raise RuntimeError("TokenHub did not start")
            ready = time.perf_counter() - started
            cpu = cpu_secs(hub.pid)
            await asyncio.sleep(settle_secs)
            rss, peak = memory(hub.pid)
    finally:
        hub.stop()
    return ready, cpu, rss, peak


async def main(args: argparse.Namespace) -> None:
    for package in PACKAGES:
        compileall.compile_dir(ROOT / package, quiet=1)
    data = tempfile.TemporaryDirectory(prefix="tokenhub-startup-") if args.restart else None
    if data is not None:
        await one_start(0.0, data.name)
    results = []
    for i in range(args.runs):
        result = await one_start(args.settle_secs, data.name if data is not None else None)
        results.append(result)
        print(f"run {i + 1}: {line(*result)}", flush=True)
    print(f"median: {line(*(statistics.median(column) for column in zip(*results, strict=True)))}")
    if data is not None:
        data.cleanup()


def line(ready: float, cpu: float, rss: float, peak: float) -> str:
    return f"ready {ready * 1000:6.0f} ms (CPU {cpu * 1000:5.0f} ms)  idle RSS {rss:6.1f} MiB  peak {peak:6.1f} MiB"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--restart", action="store_true", help="start on existing files, not a fresh directory")
    parser.add_argument("--settle-secs", type=float, default=5.0, help="wait this long after ready before the RSS")
    asyncio.run(main(parser.parse_args()))
