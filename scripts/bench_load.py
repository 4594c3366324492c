"""The scale-out benchmark's load generator (scripts/bench_scale.py runs it in its own process, pinned).

It sends the same POST to one or more targets for a fixed time with a fixed number of connections spread over
the targets (a closed loop: each connection sends its next request when the answer came), and prints one JSON
line: requests, errors, seconds, requests per second, p50 and p99 in milliseconds.

Two engines: `wrk` (Debian package `wrk`; one wrk process per target, POST through a Lua script written next to
the spec) and a bounded Python aiohttp loop for machines without wrk (slower: it is one Python process, so its
own ceiling is a few thousand requests per second).

The spec is a JSON file (it holds the API keys, so it is not passed on the command line):

    {"engine": "wrk" | "python", "seconds": 10, "connections": 32, "threads": 1,
     "body": {...}, "targets": [{"url": "http://127.0.0.1:8080/v1/chat/completions", "headers": {...}}]}

    python scripts/bench_load.py --spec spec.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["LoadResult", "have_wrk", "run_spec", "split"]

RESULT_TAG = "BENCH_RESULT "
WRK_TAG = "BENCH_WRK "
REQUEST_TIMEOUT_SECS = 10.0
# wrk reports its summary from Lua: requests, the run's duration and the latency percentiles, in microseconds.
WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_WRK {\\"requests\\": %d, \\"duration_us\\": %d, \\"status_errors\\": %d, \\"socket_errors\\": %d,"
    .. " \\"p50_us\\": %d, \\"p99_us\\": %d}\\n",
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class LoadResult:
    requests: int  # answers received, errors included
    errors: int  # non-2xx answers and socket errors/timeouts
    seconds: float
    rps: float  # successful answers per second
    p50_ms: float
    p99_ms: float  # of the worst target when there are several


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def split(total: int, parts: int) -> list[int]:
    """`total` connections over `parts` targets, as evenly as possible, at least one each."""
    total = max(total, parts)
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _lua_string(text: str) -> str:
    return "[==[" + text + "]==]"  # a long bracket: no escaping needed for JSON or a bearer token


def _wrk_script(path: Path, body: dict[str, Any], headers: dict[str, str]) -> None:
    lines = ['wrk.method = "POST"', f"wrk.body = {_lua_string(json.dumps(body))}"]
    lines.append('wrk.headers["Content-Type"] = "application/json"')
    lines += [f"wrk.headers[ {_lua_string(name)} ] = {_lua_string(value)}" for name, value in headers.items()]
    path.write_text("\n".join(lines) + "\n" + WRK_DONE)
    path.chmod(0o600)


def run_wrk(spec: dict[str, Any], workdir: Path) -> LoadResult:
    """One wrk per target, all at once; their counts summed."""
    targets = spec["targets"]
    connections = split(int(spec["connections"]), len(targets))
    threads = max(1, int(spec.get("threads", 1)) // len(targets))
    seconds = max(1, round(float(spec["seconds"])))  # wrk takes whole seconds
    procs: list[subprocess.Popen[str]] = []
    try:
        for index, (target, conns) in enumerate(zip(targets, connections, strict=True)):
            script = workdir / f"wrk-{index}.lua"
            _wrk_script(script, spec["body"], target.get("headers", {}))
            command = ["wrk", "-t", str(min(threads, conns)), "-c", str(conns), "-d", f"{seconds}s"]
            command += ["--timeout", f"{REQUEST_TIMEOUT_SECS:g}s", "-s", str(script), target["url"]]
            procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        outputs = [proc.communicate(timeout=seconds + 60)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    parts = []
    for proc, output in zip(procs, outputs, strict=True):
        found = [line for line in output.splitlines() if line.startswith(WRK_TAG)]
        if proc.returncode != 0 or not found:
            raise RuntimeError(f"wrk failed (exit {proc.returncode}): {output.strip()[-500:]}")
        parts.append(json.loads(found[-1][len(WRK_TAG) :]))
    requests = sum(p["requests"] for p in parts)
    errors = sum(p["status_errors"] + p["socket_errors"] for p in parts)
    secs = max(p["duration_us"] for p in parts) / 1e6
    return LoadResult(
        requests=requests,
        errors=errors,
        seconds=secs,
        rps=(requests - errors) / secs if secs > 0 else 0.0,
        # several targets: the p50 weighted by requests (an approximation), the worst target's p99
        p50_ms=sum(p["p50_us"] * p["requests"] for p in parts) / max(requests, 1) / 1000,
        p99_ms=max(p["p99_us"] for p in parts) / 1000,
    )


async def _python_load(spec: dict[str, Any]) -> LoadResult:
    """A closed loop in this process: each connection posts, waits for the whole answer, posts again."""
    import aiohttp  # only this engine needs it

    seconds = float(spec["seconds"])
    payload = json.dumps(spec["body"]).encode()
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECS)

    async def connection(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:  # bounded by time; each request by its timeout
            started = time.perf_counter()
            try:
                async with session.post(url, data=payload, headers=headers) as resp:
                    await resp.read()
                    if resp.status >= 300:
                        errors += 1
            except (aiohttp.ClientError, TimeoutError):
                errors += 1
            latencies.append((time.perf_counter() - started) * 1000)

    sessions = []
    tasks = []
    started = time.perf_counter()
    try:
        for target, conns in zip(spec["targets"], split(int(spec["connections"]), len(spec["targets"])), strict=True):
            connector = aiohttp.TCPConnector(limit=conns)
            session = aiohttp.ClientSession(connector=connector, timeout=timeout)
            sessions.append(session)
            headers = {"Content-Type": "application/json", **target.get("headers", {})}
            tasks += [asyncio.create_task(connection(session, target["url"], headers)) for _ in range(conns)]
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        for session in sessions:
            await session.close()
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies) or [0.0]
    return LoadResult(
        requests=len(latencies),
        errors=errors,
        seconds=elapsed,
        rps=(len(latencies) - errors) / elapsed if elapsed > 0 else 0.0,
        p50_ms=statistics.median(ordered),
        p99_ms=ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
    )


def run_spec(spec: dict[str, Any], workdir: Path) -> LoadResult:
    if spec["engine"] == "wrk":
        return run_wrk(spec, workdir)
    return asyncio.run(_python_load(spec))


def _stop_on_term() -> None:
    """SIGTERM ends the run like Ctrl-C, so `finally` blocks stop the wrk processes this one started."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", required=True, type=Path, help="the JSON spec (see above)")
    options = parser.parse_args()
    _stop_on_term()
    with contextlib.suppress(KeyboardInterrupt):
        result = run_spec(json.loads(options.spec.read_text()), options.spec.parent)
        print(RESULT_TAG + json.dumps(asdict(result)), flush=True)
        sys.exit(0)
    sys.exit(130)
