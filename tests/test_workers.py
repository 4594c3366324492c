"""`tokenhub serve --workers N` as real processes: one port, every worker serving, one DuckDB owner.

A supervisor with two workers on one port (SO_REUSEPORT), a fake provider, Redis with a fresh prefix. Each
check reaches a given worker by keeping one connection open to it (the kernel picks the worker per
connection; /healthz says which one answered).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.openai_fake import FakeOpenAI
from tests.support.backing import REDIS_URL, fresh_redis_prefix
from tests.support.polling import until_equal
from tests.support.server import Server

ADMIN = "workers-admin-token-0123456789abcdef"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
DEADLINE_SECS = 90.0  # a worker's start on a loaded two-core machine; every wait below is bounded by it


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


def _server(tmp_path: Path, fake: FakeOpenAI, prefix: str, workers: int = 2) -> Server:
    config = {
        "providers": [{"id": "fake", "type": "openai", "base_url": fake.base_url, "api_key_env": "WORKERS_FAKE_KEY"}],
        "models": [{"id": "m1", "provider_id": "fake", "weight": 5, "input_per_1k": 0.0001, "output_per_1k": 0.0002}],
        "api_keys": [{"name": "app"}],
    }
    (tmp_path / "tokenhub.json").write_text(json.dumps(config))
    return Server(
        tmp_path / "data",
        command=[sys.executable, "-m", "pipeline", "serve", "--workers", str(workers)],
        WORKERS_FAKE_KEY="sk-fake",
        TOKENHUB_CONFIG_FILE=str(tmp_path / "tokenhub.json"),
        TOKENHUB_REDIS_URL=REDIS_URL,
        TOKENHUB_REDIS_PREFIX=prefix,
        TOKENHUB_ADMIN_TOKEN=ADMIN,
        TOKENHUB_RATE_LIMIT_RPS="100000",
        TOKENHUB_RATE_LIMIT_BURST="100000",
        TOKENHUB_ADMIN_RATE_LIMIT_RPS="100000",
        TOKENHUB_ADMIN_RATE_LIMIT_BURST="100000",
        TOKENHUB_HEALTH_PROBE_INTERVAL_SECS="0",
        TOKENHUB_LOG_LEVEL="warning",
    )


class Pinned:
    """One kept-alive connection, hence one worker."""

    def __init__(self, session: aiohttp.ClientSession, worker: dict[str, Any]) -> None:
        self.session = session
        self.worker = worker

    async def chat(self, key: str) -> str:
        body = {"request": {"messages": [{"role": "user", "content": "hello"}]}}
        async with self.session.post("/v1/chat", json=body, headers={"Authorization": f"Bearer {key}"}) as resp:
            assert resp.status == 200, await resp.text()
            return resp.headers["X-Request-ID"]

    async def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(method, f"/admin/v1{path}", json=body, headers=ADMIN_HEADERS) as resp:
            return resp.status, await resp.json()

    async def requests_by_worker(self) -> dict[str, float]:
        """/metrics through this worker: tokenhub_requests_total summed by the worker that served them."""
        async with self.session.get("/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "tokenhub_requests_total":
                    totals[sample.labels["worker"]] = totals.get(sample.labels["worker"], 0.0) + sample.value
        return totals

    async def logged_ids(self) -> set[str]:
        status, page = await self.admin("GET", "/logs?limit=1000")
        assert status == 200, page
        return {row["request_id"] for row in page["logs"]}


async def _pinned(url: str, index: int, *, not_pid: int = 0) -> Pinned:
    """A connection that worker ``index`` accepted (and whose pid is not ``not_pid``: a restarted one)."""
    deadline = time.monotonic() + DEADLINE_SECS
    while time.monotonic() < deadline:
        session = aiohttp.ClientSession(base_url=url, connector=aiohttp.TCPConnector(limit=1))
        try:
            async with session.get("/healthz") as resp:
                worker = (await resp.json())["worker"]
            if worker["index"] == index and worker["pid"] != not_pid:
                return Pinned(session, worker)
        except aiohttp.ClientConnectionError:
            pass
        await session.close()
        await asyncio.sleep(0.05)
    raise AssertionError(f"worker {index} never answered")


async def _wait_logged(pinned: Pinned, wanted: set[str]) -> None:
    deadline = time.monotonic() + DEADLINE_SECS
    while not wanted <= (found := await pinned.logged_ids()):
        assert time.monotonic() < deadline, f"never logged: {sorted(wanted - found)}"
        await asyncio.sleep(0.2)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


class Cluster:
    """A running `serve --workers 2` and the connections pinned to its workers (closed when it stops)."""

    def __init__(self, server: Server, tmp_path: Path) -> None:
        self.server = server
        self.keys_file = tmp_path / "data" / "config-keys.json"
        self.sessions: list[Pinned] = []

    @property
    def key(self) -> str:
        return str(json.loads(self.keys_file.read_text())["app"])

    async def pin(self, index: int, *, not_pid: int = 0) -> Pinned:
        pinned = await _pinned(self.server.url, index, not_pid=not_pid)
        self.sessions.append(pinned)
        return pinned


@asynccontextmanager
async def two_workers(tmp_path: Path, fake: FakeOpenAI) -> AsyncIterator[Cluster]:
    """Two workers on a fresh Redis prefix; stopped at the end, which must exit 0."""
    async with fresh_redis_prefix() as prefix:
        server = _server(tmp_path, fake, prefix)
        await server.start()
        cluster = Cluster(server, tmp_path)
        try:
            yield cluster
        finally:
            for pinned in cluster.sessions:
                await pinned.session.close()
            code, _out, err = await server.stop()
        assert code == 0, err[-3000:]


async def test_two_workers_share_the_port_one_request_log_and_survive_kills(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with two_workers(tmp_path, fake) as cluster:
        w0, w1 = await cluster.pin(0), await cluster.pin(1)
        assert w0.worker["pid"] != w1.worker["pid"]
        assert w0.worker["analytics_owner"] and not w1.worker["analytics_owner"]
        key = cluster.key

        # the owner's internal routes do not exist on the shared port
        async with w0.session.post("/internal/v1/analytics/read", data=b"x") as resp:
            assert resp.status == 404

        # a bounded burst through both workers: every answer is in the request log, read through either
        served: dict[str, int] = {}
        for batch in range(5):
            ids = await asyncio.gather(*(w.chat(key) for w in (w0, w1) for _ in range(4)))
            served.update({rid: (0 if n < 4 else 1) for n, rid in enumerate(ids)})
            assert len(served) == 8 * (batch + 1)
        assert set(served) <= await w1.logged_ids()
        assert set(served) <= await w0.logged_ids()

        # feedback on a request the other worker served
        by_w1 = next(rid for rid, w in served.items() if w == 1)
        by_w0 = next(rid for rid, w in served.items() if w == 0)
        for pinned, rid, score in ((w0, by_w1, 0.25), (w1, by_w0, 0.75)):
            async with pinned.session.post(
                "/v1/feedback", json={"request_id": rid, "score": score}, headers={"Authorization": f"Bearer {key}"}
            ) as resp:
                assert resp.status == 200, await resp.text()
            status, row = await pinned.admin("GET", f"/logs/{rid}")
            assert status == 200 and row["request"]["feedback_score"] == score

        # analyst SQL and the retention setting, asked of worker 1, are answered by the owner
        status, result = await w1.admin("POST", "/analytics/query", {"sql": "SELECT count(*) FROM request_log"})
        assert status == 200 and result["rows"] == [[len(served)]]
        assert (await w1.admin("PUT", "/tsdb/retention", {"days": 9}))[0] == 200
        assert (await w0.admin("GET", "/tsdb/retention"))[1]["retention_days"] == 9

        # SIGKILL a worker that does not own DuckDB: the other keeps serving, the supervisor restarts it
        os.kill(w1.worker["pid"], signal.SIGKILL)
        during = await asyncio.gather(*(w0.chat(key) for _ in range(10)))
        w1 = await cluster.pin(1, not_pid=w1.worker["pid"])
        await _wait_logged(w1, set(during))

        # SIGKILL the owner: worker 1 keeps answering and buffers its records until the new owner takes them
        os.kill(w0.worker["pid"], signal.SIGKILL)
        while_owner_down = await asyncio.gather(*(w1.chat(key) for _ in range(10)))
        w0 = await cluster.pin(0, not_pid=w0.worker["pid"])
        await _wait_logged(w1, set(while_owner_down))

        # answers given right before SIGTERM are written by the time the supervisor exits
        last = await asyncio.gather(*(w.chat(key) for w in (w0, w1) for _ in range(5)))
        pids = [w0.worker["pid"], w1.worker["pid"]]
    assert all(_gone(pid) for pid in pids)
    wanted = set(served) | set(during) | set(while_owner_down) | set(last)
    with duckdb.connect(str(tmp_path / "data" / "tokenhub.duckdb"), read_only=True) as db:
        logged = [row[0] for row in db.execute("SELECT request_id FROM request_log").fetchall()]
    assert wanted <= set(logged)


async def test_a_scrape_through_either_worker_counts_both_workers_requests(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with two_workers(tmp_path, fake) as cluster:
        w0, w1 = await cluster.pin(0), await cluster.pin(1)
        for pinned, count in ((w0, 3), (w1, 5)):
            for _ in range(count):
                await pinned.chat(cluster.key)

        # through worker 1: its counters travel with the scrape, and the owner adds its own
        assert await w1.requests_by_worker() == {"0": 3, "1": 5}
        # through the owner: worker 1's counters as its last push left them (every PUSH_SECS)
        await until_equal(w0.requests_by_worker, {"0": 3, "1": 5}, DEADLINE_SECS, every=0.2)

        # the owner gone: worker 1 answers with its own series rather than fail the scrape
        os.kill(w0.worker["pid"], signal.SIGKILL)
        assert await w1.requests_by_worker() == {"1": 5}
        # and once the supervisor has started it again, the new owner counts from zero beside worker 1's 5
        w0 = await cluster.pin(0, not_pid=w0.worker["pid"])
        await w0.chat(cluster.key)
        assert await w1.requests_by_worker() == {"0": 1, "1": 5}


async def test_a_live_event_stream_on_one_worker_shows_the_requests_the_other_served(
    tmp_path: Path, fake: FakeOpenAI
) -> None:
    async with two_workers(tmp_path, fake) as cluster:
        w0, w1 = await cluster.pin(0), await cluster.pin(1)
        key = cluster.key
        async with w1.session.get("/admin/v1/events", headers=ADMIN_HEADERS) as stream:
            assert stream.status == 200
            assert await stream.content.readuntil(b"\n\n") == b'event: connected\ndata: {"status":"ok"}\n\n'
            # worker 0 learns within a check that worker 1 has a subscriber; until then its events stay home
            deadline = time.monotonic() + DEADLINE_SECS
            seen: set[str] = set()
            served: set[str] = set()
            while not served & seen:
                assert time.monotonic() < deadline, "worker 0's requests never reached worker 1's stream"
                served.add(await w0.chat(key))
                seen.update(await _request_ids(stream, quiet_secs=0.5))
            # the stream carries worker 0's events from then on, each once (heartbeats are worker 1's own)
            later = await w0.chat(key)
            assert await _request_ids(stream, quiet_secs=2.0) == [later]


async def _request_ids(stream: aiohttp.ClientResponse, *, quiet_secs: float) -> list[str]:
    """The request ids of the events read from an event stream until it has been quiet for `quiet_secs`."""
    ids: list[str] = []
    while True:
        try:
            frame = await asyncio.wait_for(stream.content.readuntil(b"\n\n"), quiet_secs)
        except TimeoutError:
            return ids
        if not frame.startswith(b"event: heartbeat"):
            ids.append(json.loads(frame.split(b"\ndata: ", 1)[1]).get("request_id", ""))


async def test_more_than_one_worker_without_redis_is_refused(tmp_path: Path) -> None:
    data = str(tmp_path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pipeline",
        "serve",
        "--workers",
        "3",
        env={**{k: v for k, v in os.environ.items() if not k.startswith("TOKENHUB_")}, "TOKENHUB_DATA_DIR": data},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert "TOKENHUB_WORKERS=3 needs TOKENHUB_REDIS_URL" in err.decode()
    assert not (tmp_path / "tokenhub.duckdb").exists()  # refused before anything was opened
