"""Routing evaluation (issue 5): how well each policy serves a world of four providers that differ in
latency, failure rate, price and answer quality, and how fast it leaves a provider that degrades.

Runs the real server (`python -m pipeline serve`, a fresh data directory) against four fake providers on
127.0.0.1, each a real aiohttp server. The harness is the world: it knows every provider's quality and
reports it through POST /v1/feedback after each answer, as a client with a quality rater would. Rewards
are TokenHub's own (stages/bandit.py), read back from its request log with an analyst query.

    make bench-routing                      # or: .venv/bin/python scripts/bench_routing.py --requests 2000

Policies: `normal` (scored routing), `thompson` (the bandit), `random` (a uniformly random model per
request, pinned by model_hint) and `oracle` (always the model with the best expected reward).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from scripts.demo_fakes import FakeModel, FakeProvider  # noqa: E402
from stages.bandit import base_reward, reward  # noqa: E402

LATENCY_BUDGET_MS = 2000  # every request's max_latency_ms: the reward's latency scale
OUTPUT_TOKENS = 500
INPUT_TOKENS = 20


@dataclass
class World:
    """One fake provider serving one model."""

    model: str
    latency_ms: float
    failure_rate: float
    price_per_1k: float
    quality: float

    def expected_reward(self) -> float:
        cost = (INPUT_TOKENS + OUTPUT_TOKENS) / 1000 * self.price_per_1k
        return (1 - self.failure_rate) * reward(
            True, base_reward(cost, self.latency_ms, LATENCY_BUDGET_MS), self.quality
        )


WORLDS = [
    World("swift-mini", latency_ms=60, failure_rate=0.02, price_per_1k=0.002, quality=0.45),
    World("sage-large", latency_ms=450, failure_rate=0.01, price_per_1k=0.06, quality=0.95),
    World("steady-pro", latency_ms=120, failure_rate=0.02, price_per_1k=0.004, quality=0.9),
    World("flaky-fast", latency_ms=90, failure_rate=0.3, price_per_1k=0.002, quality=0.75),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fake_for(world: World, seed: int) -> FakeProvider:
    """The world's model, served by the fakes `make demo` uses too (scripts/demo_fakes.py)."""
    model = FakeModel(
        world.model,
        world.latency_ms,
        world.failure_rate,
        world.quality,
        input_tokens=INPUT_TOKENS,
        output_tokens=OUTPUT_TOKENS,
    )
    return FakeProvider([model], seed=seed)


def model_of(provider: FakeProvider) -> FakeModel:
    """A fake's one model: mutable, so a run can degrade it while the server runs."""
    return next(iter(provider.models.values()))


class Hub:
    """The real server in a subprocess, configured through its admin API."""

    def __init__(self, half_life: float, **overrides: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.admin_token = os.urandom(16).hex()
        self._data = tempfile.TemporaryDirectory(prefix="tokenhub-bench-routing-")
        env = dict(
            os.environ,
            TOKENHUB_DATA_DIR=self._data.name,
            TOKENHUB_LISTEN_ADDR=f"127.0.0.1:{self.port}",
            TOKENHUB_ADMIN_TOKEN=self.admin_token,
            TOKENHUB_RATE_LIMIT_RPS="100000",
            TOKENHUB_RATE_LIMIT_BURST="100000",
            TOKENHUB_FEEDBACK_RATE_LIMIT_RPS="100000",
            TOKENHUB_FEEDBACK_RATE_LIMIT_BURST="100000",
            TOKENHUB_BANDIT_HALF_LIFE_SECS=str(half_life),
            TOKENHUB_BANDIT_SEED="1",
            TOKENHUB_LOG_LEVEL="warning",
            TOKENHUB_SHUTDOWN_DRAIN_SECS="5",
        )
        env.update(overrides)
        self._proc = subprocess.Popen([sys.executable, "-m", "pipeline", "serve"], cwd=ROOT, env=env)
        self.pid = self._proc.pid  # scripts/soak.py reads /proc/<pid>
        self.key = ""

    async def ready(self, session: aiohttp.ClientSession) -> None:
        for _ in range(300):
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(self.base + "/healthz"):
                    return
            await asyncio.sleep(0.1)
        raise RuntimeError("TokenHub did not start")

    async def admin(self, session: aiohttp.ClientSession, method: str, path: str, body: object = None) -> dict:
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        async with session.request(method, f"{self.base}/admin/v1{path}", json=body, headers=headers) as resp:
            data = await resp.json()
            if resp.status >= 300:
                raise RuntimeError(f"{method} {path}: {resp.status} {data}")
            return data

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=30)
        self._data.cleanup()


async def run_policy(
    hub: Hub,
    session: aiohttp.ClientSession,
    policy: str,
    phase: str,
    count: int,
    oracle: str,
    providers: list[FakeProvider],
    *,
    degrade_at: int | None = None,
    concurrency: int = 4,
    seed: int = 0,
) -> list[str]:
    """Send `count` requests for `policy`, rate each answer; returns the model that served each request."""
    rng = random.Random(seed)
    quality = {model_of(p).name: model_of(p).quality for p in providers}
    served: list[str] = [""] * count
    next_index = iter(range(count))
    target = model_of(providers[[model_of(p).name for p in providers].index(oracle)])
    degraded = False

    async def one(i: int) -> None:
        nonlocal degraded
        if degrade_at is not None and i >= degrade_at and not degraded:
            degraded = True
            target.failure_rate, target.quality = 0.6, 0.2  # the best provider turns bad
        body: dict = {
            "request": {"messages": [{"role": "user", "content": "Summarise the quarterly report."}]},
            "policy": {
                "mode": "thompson" if policy == "thompson" else "normal",
                "max_latency_ms": LATENCY_BUDGET_MS,
                "max_budget_usd": 1,
            },
        }
        if policy == "random":
            body["request"]["model_hint"] = rng.choice(list(quality))
        elif policy == "oracle":
            body["request"]["model_hint"] = oracle
        headers = {"Authorization": f"Bearer {hub.key}", "X-Request-Id": f"bench-{phase}-{policy}-{i}"}
        async with session.post(hub.base + "/v1/chat", json=body, headers=headers) as resp:
            answer = await resp.json()
            request_id = resp.headers["X-Request-Id"]  # ours, for feedback; the bench id is kept as client_request_id
        if resp.status != 200:
            return
        model = answer["negotiated_model"]
        served[i] = model
        score = min(max(quality[model] + rng.uniform(-0.1, 0.1), 0.0), 1.0)
        async with session.post(
            hub.base + "/v1/feedback", json={"request_id": request_id, "score": score}, headers=headers
        ) as resp:
            await resp.read()

    async def worker() -> None:
        for i in next_index:
            await one(i)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return served


async def average_reward(hub: Hub, session: aiohttp.ClientSession, prefix: str) -> tuple[float, int]:
    await asyncio.sleep(1.5)  # the request log is written in batches every half second
    sql = f"SELECT avg(coalesce(reward, 0)), count(*) FROM request_log WHERE client_request_id LIKE '{prefix}%'"
    data = await hub.admin(session, "POST", "/analytics/query", {"sql": sql})
    value, count = data["rows"][0]
    return float(value or 0.0), int(count)


def requests_to_move_away(served: list[str], model: str, start: int, window: int = 50, share: float = 0.2) -> str:
    """Requests after `start` until the degraded model's share of the last `window` answers is <= `share`."""
    for end in range(start + window, len(served) + 1):
        recent = served[end - window : end]
        if recent.count(model) / window <= share:
            return str(end - start)
    return "never"


async def main(args: argparse.Namespace) -> int:
    providers = [fake_for(w, seed=i) for i, w in enumerate(WORLDS)]
    for p in providers:
        await p.start()
    oracle = max(WORLDS, key=World.expected_reward).model
    hub = Hub(half_life=args.half_life)
    results: dict[str, float] = {}
    moved: dict[str, str] = {}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            await hub.ready(session)
            for p, world in zip(providers, WORLDS, strict=True):
                pid = world.model.split("-")[0]
                await hub.admin(session, "POST", "/providers", {"id": pid, "base_url": f"http://127.0.0.1:{p.port}"})
                await hub.admin(
                    session,
                    "POST",
                    "/models",
                    {
                        "id": world.model,
                        "provider_id": pid,
                        "weight": 5,
                        "input_per_1k": world.price_per_1k,
                        "output_per_1k": world.price_per_1k,
                    },
                )
            hub.key = (await hub.admin(session, "POST", "/apikeys", {"name": "bench"}))["key"]
            print(
                "world (expected reward per model): "
                + ", ".join(f"{w.model} {w.expected_reward():.3f}" for w in WORLDS)
            )
            print(f"oracle: {oracle}; {args.requests} requests per policy, then a degradation run\n")
            for policy in ("normal", "thompson", "random", "oracle"):
                started = time.monotonic()
                await run_policy(hub, session, policy, "steady", args.requests, oracle, providers, seed=7)
                results[policy], count = await average_reward(hub, session, f"bench-steady-{policy}-")
                print(
                    f"  {policy:9s} avg reward {results[policy]:.4f} over {count} requests"
                    f" ({time.monotonic() - started:.0f} s)"
                )
            for policy in ("normal", "thompson"):
                for p, w in zip(providers, WORLDS, strict=True):  # everyone healthy again
                    model_of(p).failure_rate, model_of(p).quality = w.failure_rate, w.quality
                half = args.degrade_requests // 2
                served = await run_policy(
                    hub, session, policy, "degrade", args.degrade_requests, oracle, providers, degrade_at=half, seed=9
                )
                before = served[:half].count(oracle) / max(half, 1)
                moved[policy] = requests_to_move_away(served, oracle, half)
                print(
                    f"  {policy:9s} degradation: {oracle} had {before:.0%} of traffic;"
                    f" 80% moved away after {moved[policy]} requests"
                )
    finally:
        hub.stop()
        for p in providers:
            await p.stop()
    ratio = results["thompson"] / results["oracle"]
    print(
        f"\nthompson / oracle = {ratio:.3f} (target >= 0.90);"
        f" thompson moved away in {moved['thompson']} requests (target <= 300)"
    )
    ok = ratio >= 0.9 and moved["thompson"] != "never" and int(moved["thompson"]) <= 300
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests per policy in the steady run")
    parser.add_argument("--degrade-requests", type=int, default=1000, help="requests in each degradation run")
    # The bench sends ~30 requests/s, so 5 s is ~150 requests of memory; scale it to your traffic in production.
    parser.add_argument("--half-life", type=float, default=5.0, help="TOKENHUB_BANDIT_HALF_LIFE_SECS (seconds)")
    sys.exit(asyncio.run(main(parser.parse_args())))
