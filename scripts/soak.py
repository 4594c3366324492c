"""Soak test (issue 16): TokenHub at half its measured capacity for a long time, watched for leaks.

Starts fake providers (scripts/demo_fakes.py: a fast model, a flaky one that fails 30 % of calls, a slow
one, one whose streams die half-way) and the real server (`python -m pipeline serve`, a fresh data
directory), measures capacity briefly with a closed loop of the same mix (or takes --rps), then sends an
open-loop (Poisson) mix at half of it: plain answers, streams, calls that fail over, slow calls, streams cut
by the upstream, and clients that hang up mid-request. Every window (a minute by default) it reports the
server's RSS, its open file descriptors (/proc/<pid>) and asyncio tasks (the `tokenhub_asyncio_tasks` gauge),
each of those two the lowest of readings every 5 s (the work in flight comes and goes; a leak lifts the
floor), the writer's queue depth and the window's p99 latency; at the end the least-squares slope of each
per minute, over the windows after the first (warm-up: connection pools, caches and the bandit fill), and
PASS/FAIL against the thresholds.

    .venv/bin/python scripts/soak.py                       # 30 minutes
    .venv/bin/python scripts/soak.py --minutes 4 --window-secs 30 --json soak.json
    .venv/bin/python scripts/soak.py --minutes 20 --memory-probe memory.jsonl   # what the RSS is made of

`--memory-probe` (scripts/memory_probe/sitecustomize.py) has the server append its memory by kind every window:
the RSS by mapping kind, glibc's arenas, the objects the collector tracks.

The harness runs in one process beside the server: on a small machine the measured capacity is the pair's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from scripts.demo_fakes import FakeModel, FakeProvider  # noqa: E402
from scripts.server_process import ServerProcess  # noqa: E402

# name -> (model, request kind weight); a kind names the model it hints and how the client behaves.
MODELS = {
    "fast": FakeModel("soak-fast", latency_ms=20, failure_rate=0.0, quality=0.9),
    "flaky": FakeModel("soak-flaky", latency_ms=30, failure_rate=0.3, quality=0.8),
    "slow": FakeModel("soak-slow", latency_ms=1500, failure_rate=0.0, quality=0.9),
    "cutter": FakeModel("soak-cutter", latency_ms=30, failure_rate=0.0, quality=0.9, stream_cut_rate=0.5),
}


@dataclass(frozen=True)
class Kind:
    name: str
    model: str  # a MODELS key, sent as model_hint
    stream: bool
    weight: int
    hang_up_after: float = 0.0  # > 0: the client disconnects this many seconds in


KINDS = (
    Kind("plain", "fast", False, 40),
    Kind("stream", "fast", True, 20),
    Kind("failover", "flaky", False, 10),
    Kind("slow", "slow", False, 10),
    Kind("cut-stream", "cutter", True, 10),
    Kind("hang-up", "slow", True, 10, hang_up_after=0.2),
)
CAPACITY_WORKERS = 128
MAX_IN_FLIGHT = 5000  # the client sheds (and counts) beyond this rather than grow without bound itself


@dataclass
class Window:
    minute: float  # end of the window, minutes since the soak started
    rss_mib: float
    fds: int
    tasks: int
    queue_depth: int
    p99_ms: float
    sent: int
    ok: int
    errors: int
    hung_up: int
    shed: int


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)  # seconds, requests that ran to their end
    sent: int = 0
    ok: int = 0
    errors: int = 0
    hung_up: int = 0
    shed: int = 0

    def take(self) -> Tally:
        """The window so far; counting starts again (requests still in flight count in the next one)."""
        window = Tally(self.latencies, self.sent, self.ok, self.errors, self.hung_up, self.shed)
        self.latencies, self.sent, self.ok, self.errors, self.hung_up, self.shed = [], 0, 0, 0, 0, 0
        return window


def body_for(kind: Kind) -> dict:
    return {
        "request": {
            "messages": [{"role": "user", "content": "What is 12 + 30? Answer in one sentence."}],
            "model_hint": MODELS[kind.model].name,
            "stream": kind.stream,
        },
        "policy": {"max_latency_ms": 10_000, "max_budget_usd": 1},
    }


async def one_request(session: aiohttp.ClientSession, url: str, headers: dict, kind: Kind, tally: Tally) -> None:
    started = time.monotonic()
    try:
        # A hang-up leaves mid-request (before or after the headers): the connection closes under TokenHub.
        async with (
            asyncio.timeout(kind.hang_up_after or None),
            session.post(url, json=body_for(kind), headers=headers) as resp,
        ):
            await resp.read()
    except TimeoutError:
        tally.hung_up += 1
        return
    except aiohttp.ClientError:
        tally.errors += 1
        return
    tally.latencies.append(time.monotonic() - started)
    if resp.status == 200:
        tally.ok += 1
    else:
        tally.errors += 1


async def measure_capacity(session: aiohttp.ClientSession, url: str, headers: dict, seconds: float) -> float:
    """Closed loop of the soak's own mix: requests finished per second. Enough workers that the slow and
    hung-up ones do not leave the server idle, so the server (not the loop) is what saturates."""
    tally = Tally()
    deadline = time.monotonic() + seconds
    rng = random.Random(0)
    weights = [k.weight for k in KINDS]

    async def worker() -> None:
        while time.monotonic() < deadline:
            await one_request(session, url, headers, rng.choices(KINDS, weights)[0], tally)

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(CAPACITY_WORKERS)))
    return (len(tally.latencies) + tally.hung_up) / (time.monotonic() - started)


SAMPLE_SECS = 5.0  # how often the fds and tasks are read within a window


@dataclass
class Floor:
    """The lowest reading of a gauge within a window. Open fds and live tasks count the work in flight at
    the instant of a reading (one reading a window swings by dozens with the load), while anything leaked
    stays through every reading and lifts the floor: the floor's slope shows a leak, not the traffic."""

    lowest: float | None = None

    def add(self, value: float) -> None:
        self.lowest = value if self.lowest is None else min(self.lowest, value)

    def take(self) -> float:
        """The window's floor; the next window starts afresh."""
        value, self.lowest = self.lowest, None
        return -1.0 if value is None else value


def process_stats(pid: int) -> tuple[float, int]:
    """(RSS in MiB, open file descriptors) of a process, from /proc."""
    rss_kib = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kib = int(line.split()[1])
    return rss_kib / 1024, len(os.listdir(f"/proc/{pid}/fd"))


async def gauges(session: aiohttp.ClientSession, base: str) -> dict[str, float]:
    async with session.get(f"{base}/metrics") as resp:
        text = await resp.text()
    wanted = ("tokenhub_asyncio_tasks", "tokenhub_record_queue_depth", 'tokenhub_store_dropped_total{op="log_request"}')
    found = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in wanted:
            found[name] = float(value)
    return found


def p99(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (per minute, x in minutes); 0 for fewer than two points."""
    if len(points) < 2:
        return 0.0
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0


async def soak(args: argparse.Namespace, hub: ServerProcess, session: aiohttp.ClientSession) -> dict:
    url = f"{hub.base}/v1/chat"
    headers = {"Authorization": f"Bearer {hub.key}"}
    capacity = 0.0
    if args.rps:
        rate = args.rps
    else:
        capacity = await measure_capacity(session, url, headers, args.capacity_secs)
        rate = capacity / 2
    if capacity:
        print(f"capacity {capacity:.0f} req/s (measured for {args.capacity_secs:g} s)")
    print(f"soak: {rate:.0f} req/s for {args.minutes:g} min, a report every {args.window_secs:g} s", flush=True)
    rng = random.Random(args.seed)
    weights = [k.weight for k in KINDS]
    tally = Tally()
    windows: list[Window] = []
    in_flight: set[asyncio.Task[None]] = set()
    fds_floor, tasks_floor = Floor(), Floor()
    started = next_at = next_report = next_sample = time.monotonic()
    next_report += args.window_secs
    reports = max(1, round(args.minutes * 60 / args.window_secs))
    print(
        f"{'min':>5} {'rss MiB':>8} {'fds':>5} {'tasks':>6} {'queue':>6} {'p99 ms':>8}"
        f" {'sent':>6} {'ok':>6} {'err':>5} {'hungup':>6} {'shed':>5}"
    )
    while len(windows) < reports:
        now = time.monotonic()
        if now >= next_sample or now >= next_report:
            rss, fds = process_stats(hub.pid)
            live = await gauges(session, hub.base)
            fds_floor.add(fds)
            tasks_floor.add(live.get("tokenhub_asyncio_tasks", -1))
            next_sample = now + SAMPLE_SECS
        if now >= next_report:
            done = tally.take()
            window = Window(
                minute=(now - started) / 60,
                rss_mib=rss,
                fds=int(fds_floor.take()),
                tasks=int(tasks_floor.take()),
                queue_depth=int(live.get("tokenhub_record_queue_depth", -1)),
                p99_ms=p99(done.latencies),
                sent=done.sent,
                ok=done.ok,
                errors=done.errors,
                hung_up=done.hung_up,
                shed=done.shed,
            )
            windows.append(window)
            print(
                f"{window.minute:5.1f} {rss:8.1f} {window.fds:5d} {window.tasks:6d} {window.queue_depth:6d}"
                f" {window.p99_ms:8.0f} {done.sent:6d} {done.ok:6d} {done.errors:5d} {done.hung_up:6d}"
                f" {done.shed:5d}",
                flush=True,
            )
            next_report += args.window_secs
            continue
        if now < next_at:
            await asyncio.sleep(min(next_at, next_report, next_sample) - now)
            continue
        next_at += rng.expovariate(rate)
        tally.sent += 1
        if len(in_flight) >= MAX_IN_FLIGHT:
            tally.shed += 1
            continue
        kind = rng.choices(KINDS, weights)[0]
        task = asyncio.create_task(one_request(session, url, headers, kind, tally))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    await asyncio.gather(*in_flight)
    dropped = (await gauges(session, hub.base)).get('tokenhub_store_dropped_total{op="log_request"}', 0.0)
    return summarize(args, capacity, rate, windows, dropped)


def summarize(args: argparse.Namespace, capacity: float, rate: float, windows: list[Window], dropped: float) -> dict:
    steady = windows[1:] if len(windows) >= 3 else windows  # the first window is warm-up
    slopes = {
        "rss_mib_per_min": slope([(w.minute, w.rss_mib) for w in steady]),
        "fds_per_min": slope([(w.minute, w.fds) for w in steady]),
        "tasks_per_min": slope([(w.minute, w.tasks) for w in steady]),
        "p99_ms_per_min": slope([(w.minute, w.p99_ms) for w in steady]),
    }
    limits = {
        "rss_mib_per_min": args.max_rss_slope_mib,
        "fds_per_min": args.max_fd_slope,
        "tasks_per_min": args.max_task_slope,
        "p99_ms_per_min": args.max_p99_slope_ms,
    }
    failures = [f"{name} {slopes[name]:+.3f} > {limit:g}" for name, limit in limits.items() if slopes[name] > limit]
    if dropped:
        failures.append(f"{dropped:g} request-log records dropped")
    if any(w.shed for w in windows):
        failures.append("the client shed requests: the server fell behind the offered rate")
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "minutes": args.minutes,
        "capacity_rps": round(capacity, 1),
        "rate_rps": round(rate, 1),
        "windows": [asdict(w) for w in windows],
        "slopes": {k: round(v, 4) for k, v in slopes.items()},
        "limits": limits,
        "records_dropped": dropped,
        "passed": not failures,
        "failures": failures,
    }


def memory_probe_env(out: str, every_secs: float) -> dict[str, str]:
    """The server's environment for scripts/memory_probe: its `sitecustomize` on the server's path only."""
    paths = (str(ROOT / "scripts" / "memory_probe"), os.environ.get("PYTHONPATH", ""))
    return {
        "PYTHONPATH": os.pathsep.join(path for path in paths if path),
        "MEMPROBE_OUT": os.path.abspath(out),
        "MEMPROBE_SECS": str(every_secs),
    }


async def main(args: argparse.Namespace) -> int:
    fakes = {name: FakeProvider([model], seed=i) for i, (name, model) in enumerate(MODELS.items())}
    for fake in fakes.values():
        await fake.start()
    probe = memory_probe_env(args.memory_probe, args.window_secs) if args.memory_probe else {}
    hub = ServerProcess(TOKENHUB_HEALTH_PROBE_INTERVAL_SECS="10", **probe)
    connector = aiohttp.TCPConnector(limit=0)  # no client-side queueing in the latencies
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
            await hub.ready(session)
            for name, fake in fakes.items():
                await hub.admin(session, "POST", "/providers", {"id": name, "base_url": f"{fake.base_url}/v1"})
                model = {"id": MODELS[name].name, "provider_id": name, "input_per_1k": 0.001, "output_per_1k": 0.002}
                await hub.admin(session, "POST", "/models", model)
            hub.key = (await hub.admin(session, "POST", "/apikeys", {"name": "soak"}))["key"]
            result = await soak(args, hub, session)
    finally:
        hub.stop()
        for fake in fakes.values():
            await fake.stop()
    slopes = ", ".join(f"{name} {value:+.3f}" for name, value in result["slopes"].items())
    print(f"\nslopes per minute (after the warm-up window): {slopes}")
    print("PASS" if result["passed"] else "FAIL: " + "; ".join(result["failures"]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="how long to soak")
    parser.add_argument("--rps", type=float, default=0.0, help="offered load; 0 = half the measured capacity")
    parser.add_argument("--capacity-secs", type=float, default=5.0, help="how long to measure capacity")
    parser.add_argument("--window-secs", type=float, default=60.0, help="one report per window")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", default="", help="also write the results here")
    parser.add_argument(
        "--memory-probe", default="", help="append the server's memory by kind here every window (JSON lines)"
    )
    parser.add_argument("--max-rss-slope-mib", type=float, default=1.0, help="RSS growth allowed, MiB per minute")
    parser.add_argument("--max-fd-slope", type=float, default=0.5, help="fd growth allowed per minute")
    parser.add_argument("--max-task-slope", type=float, default=1.0, help="asyncio task growth allowed per minute")
    parser.add_argument("--max-p99-slope-ms", type=float, default=20.0, help="p99 growth allowed, ms per minute")
    sys.exit(asyncio.run(main(parser.parse_args())))
