"""kill -9 under load, then start again on the same data directory: nothing that was acknowledged is lost.

A real `tokenhub serve` process answers concurrent chat requests (plain and streamed, two API keys) from a
fake provider while admin changes are made, and is killed with SIGKILL mid-load: no drain, no final flush.
The next process must start at once on the same directory (the kernel dropped the data-dir flock) and:
- SQLite and DuckDB open cleanly (the server starts; integrity checks pass on the files afterwards);
- every request answered more than SAFE_MARGIN_SECS before the kill is in the request log, once;
- no key's month-to-date spend is lost: it covers every request answered more than that before the kill;
- every admin change that was acknowledged (200/201) is there.
docs/crash-safety.md explains why each holds.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import pytest

from tests.fakes.openai_fake import FakeOpenAI, Reply
from tests.support.server import Server

ADMIN = "crash-admin-token-0123456789abcdef"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
MODEL = "steady"
# Usage the fake reports (Reply's default: 10 in, 5 out) priced per 1k tokens: every answer costs UNIT_COST.
INPUT_PER_1K, OUTPUT_PER_1K = 0.1, 0.2
UNIT_COST = 10 / 1000 * INPUT_PER_1K + 5 / 1000 * OUTPUT_PER_1K
WORKERS = 16
MIN_ANSWERED = 300  # answered requests before the kill, so the check has something to prove
# The promise covers requests answered more than a second before the kill (the writer commits every 0.5 s);
# the test allows 3 s: a loaded machine's writer lags (0.7 s seen with both cores busy).
SAFE_MARGIN_SECS = 3.0


@dataclass(frozen=True)
class Answer:
    request_id: str
    key_id: str
    cost: float
    at: float  # client's monotonic clock when the last byte arrived (the server sent it earlier)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


def _server(data_dir: Path) -> Server:
    return Server(
        data_dir,
        TOKENHUB_ADMIN_TOKEN=ADMIN,
        TOKENHUB_RATE_LIMIT_RPS="100000",
        TOKENHUB_RATE_LIMIT_BURST="100000",
        TOKENHUB_ADMIN_RATE_LIMIT_RPS="100000",
        TOKENHUB_ADMIN_RATE_LIMIT_BURST="100000",
        TOKENHUB_HEALTH_PROBE_INTERVAL_SECS="0",
        TOKENHUB_LOG_LEVEL="warning",
    )


async def _admin(session: aiohttp.ClientSession, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with session.request(method, f"/admin/v1{path}", json=body, headers=ADMIN_HEADERS) as resp:
        return resp.status, await resp.json()


async def _chat(session: aiohttp.ClientSession, key: str, key_id: str, stream: bool) -> Answer:
    """One request; its Answer once the last byte has arrived (raises when cut off by the kill)."""
    body = {
        "request": {"messages": [{"role": "user", "content": "hello"}], "stream": stream},
        "policy": {"max_budget_usd": 1},
    }
    async with session.post("/v1/chat", json=body, headers={"Authorization": f"Bearer {key}"}) as resp:
        if stream:
            raw = await resp.read()
            complete = resp.status == 200 and raw.rstrip().endswith(b"data: [DONE]")
            cost = UNIT_COST
        else:
            data = await resp.json()
            complete = resp.status == 200
            cost = float(data.get("estimated_cost_usd", 0.0)) if complete else 0.0
        if not complete:
            raise AssertionError(f"request failed before the kill: {resp.status} {await resp.text()}")
        return Answer(resp.headers["X-Request-Id"], key_id, cost, time.monotonic())


async def test_kill_9_under_load_loses_nothing_that_was_acknowledged(tmp_path: Path, fake: FakeOpenAI) -> None:
    data_dir = tmp_path / "data"
    server = _server(data_dir)
    await server.start()
    # Streams take a little while, so some are always in flight when the kill comes.
    fake.script(MODEL, *[Reply(chunk_delay=0.005) for _ in range(20_000)])
    answers: list[Answer] = []
    sent: dict[str, int] = {}  # key id -> requests sent (an upper bound on what may be charged)
    acked_budgets: dict[str, float] = {}  # key id -> the last monthly budget a PATCH acknowledged
    acked_models: list[str] = []
    killing = asyncio.Event()
    async with aiohttp.ClientSession(base_url=server.url) as session:
        provider = {"id": "fake", "base_url": fake.base_url, "api_key": "sk-fake"}
        assert (await _admin(session, "POST", "/providers", provider))[0] == 201
        model = {"id": MODEL, "provider_id": "fake", "input_per_1k": INPUT_PER_1K, "output_per_1k": OUTPUT_PER_1K}
        assert (await _admin(session, "POST", "/models", model))[0] == 201
        keys: list[tuple[str, str]] = []
        for name in ("alpha", "beta"):
            status, created = await _admin(session, "POST", "/apikeys", {"name": name, "monthly_budget_usd": 1000})
            assert status == 201
            keys.append((created["key"], created["id"]))
            sent[created["id"]] = 0

        async def client(worker: int) -> None:
            for n in range(10**9):
                if killing.is_set():
                    return
                key, key_id = keys[(worker + n) % len(keys)]
                sent[key_id] += 1
                answers.append(await _chat(session, key, key_id, stream=(worker + n) % 4 == 0))

        async def admin_changes() -> None:
            for n in range(10**9):
                if killing.is_set():
                    return
                if n % 2:
                    key_id = keys[n % len(keys)][1]
                    status, _ = await _admin(session, "PATCH", f"/apikeys/{key_id}", {"monthly_budget_usd": 1000 + n})
                    if status == 200:
                        acked_budgets[key_id] = 1000 + n
                else:
                    extra = {"id": f"extra-{n}", "provider_id": "fake", "enabled": False}
                    if (await _admin(session, "POST", "/models", extra))[0] == 201:
                        acked_models.append(extra["id"])
                await asyncio.sleep(0.02)

        tasks = [asyncio.create_task(client(i)) for i in range(WORKERS)]
        tasks.append(asyncio.create_task(admin_changes()))
        deadline = time.monotonic() + 60
        # Kill once enough answers are old enough to be covered, with load still running.
        while sum(a.at < time.monotonic() - SAFE_MARGIN_SECS for a in answers) < MIN_ANSWERED:
            assert time.monotonic() < deadline, f"only {len(answers)} answers in 60 s"
            assert not any(t.done() for t in tasks), [t.exception() for t in tasks if t.done()]
            await asyncio.sleep(0.05)
        killed_at = time.monotonic()
        killing.set()
        await server.kill()
        # What was in flight dies with the connection; those requests were never answered.
        await asyncio.gather(*tasks, return_exceptions=True)

    safe = [a for a in answers if a.at < killed_at - SAFE_MARGIN_SECS]
    assert len(safe) >= MIN_ANSWERED, len(safe)
    assert acked_budgets and acked_models

    # Straight back up on the same directory: the flock went with the process.
    again = _server(data_dir)
    await again.start()
    async with aiohttp.ClientSession(base_url=again.url) as session:
        status, listed = await _admin(session, "GET", "/apikeys")
        assert status == 200
        by_id = {k["id"]: k for k in listed["keys"]}
        status, models = await _admin(session, "GET", "/models")
        stored_models = {m["id"] for m in models["items"]}
    code, out, err = await again.stop()
    assert code == 0, err[-3000:]
    assert '"level":"error"' not in out, out[-3000:]  # recovery was silent: nothing dropped or rejected

    assert set(acked_models) <= stored_models, sorted(set(acked_models) - stored_models)
    for key_id, budget in acked_budgets.items():
        # Budgets only grow: a later PATCH may have committed with its answer cut off by the kill.
        assert by_id[key_id]["monthly_budget_usd"] >= budget

    with sqlite3.connect(data_dir / "tokenhub.sqlite") as sql:
        assert sql.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    db = duckdb.connect(str(data_dir / "tokenhub.duckdb"), read_only=True)
    try:
        rows = db.execute("SELECT request_id, api_key_id, cost_usd FROM request_log").fetchall()
        # The time series is written in the same transaction as the log: it is whole too.
        points = db.execute("SELECT sum(samples) FROM tsdb_points WHERE metric = 'requests'").fetchall()[0][0]
    finally:
        db.close()
    logged = {request_id: (key_id, cost) for request_id, key_id, cost in rows}
    assert len(logged) == len(rows), "a request was logged twice"
    missing = [a.request_id for a in safe if a.request_id not in logged]
    assert not missing, (
        f"{len(missing)} of {len(safe)} requests answered >{SAFE_MARGIN_SECS} s before the kill are not in the log"
    )
    for a in safe:
        assert logged[a.request_id] == (a.key_id, pytest.approx(a.cost))
    if points is not None:
        assert points == len(rows)

    for key_id, count in sent.items():
        spend = by_id[key_id]["current_spend_usd"]
        answered_early = sum(a.cost for a in safe if a.key_id == key_id)
        assert spend >= answered_early - 1e-9, (key_id, spend, answered_early)
        assert spend == pytest.approx(sum(cost for k, cost in logged.values() if k == key_id))
        assert spend <= count * UNIT_COST + 1e-9  # nothing charged twice or out of thin air
