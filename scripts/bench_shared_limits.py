"""What sharing limits and budgets through Redis adds to a request's latency (issue 17, docs/scaling.md).

Each mode is `python -m pipeline serve` in its own process, in front of a local fake provider that answers at
once (in this process), driven by one client, one request at a time, so the numbers are the server's own time
and not queueing. On a machine whose cores are busy with other work every extra wait for I/O can cost a
scheduler time slice: measure on an otherwise idle machine. Two modes,
alternated in rounds so machine noise hits both alike:

  embedded   limits, spend and holds in this process (no TOKENHUB_REDIS_URL)
  redis      TOKENHUB_REDIS_URL: the per-IP bucket, the key's per-minute buckets and its budget hold (at an
             upper bound) in one script round trip sent after auth, overlapping routing; settle, spend and
             release batched after

The API key has a monthly budget and requests/tokens-per-minute limits (every shared check on the path), or with
--plain-key none of them (only the per-IP limit is shared).
Prints p50 / p90 / p99 and the server's CPU per request for each mode, and the p50 difference (what Redis adds).

    python scripts/bench_shared_limits.py                     # Redis at redis://127.0.0.1:6379/0
    python scripts/bench_shared_limits.py --requests 3000 --rounds 4 --redis redis://host:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402
from aiohttp.test_utils import BaseTestServer, TestClient, TestServer  # noqa: E402
from yarl import URL  # noqa: E402

from scripts.server_process import cpu_secs, free_port  # noqa: E402

ADMIN = "bench-admin-token-0123456789abcdef"
PROCS: list[subprocess.Popen[bytes]] = []


async def fake_provider() -> TestServer:
    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "m"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
            }
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def start_hub(
    data_dir: Path, provider_url: str, redis_url: str, *, plain_key: bool
) -> tuple[TestClient, str, int]:
    """`python -m pipeline serve` in its own process (its event loop is not the client's), configured over HTTP."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TOKENHUB_")},
        "TOKENHUB_DATA_DIR": str(data_dir),
        "TOKENHUB_LISTEN_ADDR": f"127.0.0.1:{port}",
        "TOKENHUB_ADMIN_TOKEN": ADMIN,
        "TOKENHUB_RATE_LIMIT_RPS": "100000",
        "TOKENHUB_RATE_LIMIT_BURST": "100000",
        "TOKENHUB_HEALTH_PROBE_INTERVAL_SECS": "0",
        "TOKENHUB_CREDENTIALS_FILE": str(data_dir / "none"),
        "TOKENHUB_HOST_API_KEY_ENABLED": "false",
        "TOKENHUB_CONTAINER": "false",
        "TOKENHUB_LOG_LEVEL": "error",
    }
    if redis_url:
        prefix = f"bench-{uuid.uuid4().hex[:10]}"
        env |= {"TOKENHUB_REDIS_URL": redis_url, "TOKENHUB_REDIS_PREFIX": prefix, "TOKENHUB_REDIS_TIMEOUT_MS": "1000"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "serve"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    PROCS.append(proc)
    client = TestClient(BaseTestServer_at(port))
    await client.start_server()
    for _ in range(600):  # bounded: start-up, and (scaled out) the Redis link up
        with contextlib.suppress(aiohttp.ClientError):
            resp = await client.get("/healthz")
            health = await resp.json()
            if resp.status in (200, 503) and health.get("shared_state", {"up": True}).get("up"):
                break
        await asyncio.sleep(0.1)
    headers = {"Authorization": f"Bearer {ADMIN}"}
    provider = {"id": "fake", "base_url": provider_url, "api_key": "sk-bench"}
    await client.post("/admin/v1/providers", json=provider, headers=headers)
    model = {"id": "m", "provider_id": "fake", "input_per_1k": 0.001, "output_per_1k": 0.002}
    await client.post("/admin/v1/models", json=model, headers=headers)
    key: dict[str, Any] = {"name": "bench"}
    if not plain_key:
        key |= {"monthly_budget_usd": 1_000_000, "rate_limit_rpm": 10_000_000, "rate_limit_tpm": 10**9}
    resp = await client.post("/admin/v1/apikeys", json=key, headers=headers)
    return client, (await resp.json())["key"], proc.pid


class BaseTestServer_at(BaseTestServer):
    """A TestClient's server that is already running elsewhere (the subprocess) on `port`."""

    def __init__(self, port: int) -> None:
        super().__init__(host="127.0.0.1", port=port)

    async def start_server(self, **kwargs: Any) -> None:
        self._root = URL(f"http://127.0.0.1:{self.port}")

    async def _make_runner(self, **kwargs: Any) -> Any:
        raise NotImplementedError

    async def close(self) -> None:
        return None


async def run(client: TestClient, key: str, count: int) -> list[float]:
    body = {"model": "m", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4}
    headers = {"Authorization": f"Bearer {key}"}
    times: list[float] = []
    for _ in range(count):
        started = time.perf_counter()
        resp = await client.post("/v1/chat/completions", json=body, headers=headers)
        await resp.read()
        times.append((time.perf_counter() - started) * 1000)
        if resp.status != 200:
            raise SystemExit(f"request failed: {resp.status} {await resp.text()}")
    return times


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": statistics.median(ordered), "p90": pick(0.9), "p99": pick(0.99)}


async def main(args: argparse.Namespace) -> None:
    provider = await fake_provider()
    provider_url = str(provider.make_url("/v1")).rstrip("/")
    results: dict[str, list[float]] = {"embedded": [], "redis": []}
    cpu = {"embedded": 0.0, "redis": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        hubs: dict[str, tuple[TestClient, str, int]] = {
            "embedded": await start_hub(Path(tmp) / "embedded", provider_url, "", plain_key=args.plain_key),
            "redis": await start_hub(Path(tmp) / "redis", provider_url, args.redis, plain_key=args.plain_key),
        }
        try:
            for client, key, _ in hubs.values():
                await run(client, key, args.warmup)
            for _ in range(args.rounds):
                for mode, (client, key, pid) in hubs.items():
                    before = cpu_secs(pid)
                    results[mode] += await run(client, key, args.requests // args.rounds)
                    cpu[mode] += cpu_secs(pid) - before
        finally:
            for client, _, _ in hubs.values():
                await client.close()
            for proc in PROCS:
                proc.terminate()
                proc.wait(timeout=30)
            await provider.close()
    stats: dict[str, Any] = {mode: summary(times) for mode, times in results.items()}
    for mode, row in stats.items():
        n = len(results[mode])
        print(
            f"{mode:9} n={n}  p50 {row['p50']:.3f} ms  p90 {row['p90']:.3f} ms  p99 {row['p99']:.3f} ms"
            f"  server CPU {cpu[mode] / n * 1e6:.0f} us/request"
        )
    print(f"added by Redis at p50: {stats['redis']['p50'] - stats['embedded']['p50']:+.3f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="the Redis to share state through")
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per mode")
    parser.add_argument("--rounds", type=int, default=4, help="alternations between the modes")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured requests per mode first")
    parser.add_argument(
        "--plain-key", action="store_true", help="a key with no budget and no per-minute limits (only the per-IP limit)"
    )
    asyncio.run(main(parser.parse_args()))
