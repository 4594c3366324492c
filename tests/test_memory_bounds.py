"""What keeps the server's memory bounded and its start-up light: the recent-requests index holds what the
writer has not stored plus a few, DuckDB checkpoints its WAL early, and optional libraries load only when
the configuration uses them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.types import RequestRecord
from stages.bandit import token_bucket
from stages.learning import RecentRequests
from store.analytics import CHECKPOINT_WAL_MIB, AnalyticsStore
from store.record_writer import RecordWriter
from store.reward_queries import reward_evidence
from tests.conftest import Hub
from tests.support.backing import fresh_postgres
from tests.test_record_writer import BASE_TS, make_record

ROOT = Path(__file__).resolve().parent.parent
OPTIONAL = ("temporalio", "redis", "jsonschema", "psycopg")


class GatedAnalytics(AnalyticsStore):
    """Holds each batch write until `release` is set, so a test can look at a batch in flight."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.entered = threading.Event()
        self.release = threading.Event()

    def write_requests(self, records: Sequence[RequestRecord]) -> None:
        self.entered.set()
        assert self.release.wait(30)
        super().write_requests(records)


@pytest.fixture
def gated(tmp_path: Path) -> GatedAnalytics:
    store = GatedAnalytics(str(tmp_path / "a.duckdb"))
    store.open()
    yield store
    store.release.set()
    store.close()


async def test_the_index_keeps_every_unwritten_record_then_only_the_newest(gated: GatedAnalytics) -> None:
    gated.release.set()
    writer = RecordWriter(gated, capacity=1000, batch_size=1000, flush_interval=60)
    index = RecentRequests(capacity=5, unwritten=lambda: writer.unwritten)
    records = [make_record(i) for i in range(20)]
    for record in records:  # as the sinks do: the learning sink indexes, then the request-log sink queues
        index.add(record, "b0")
        writer.submit(record)
    assert writer.unwritten == 20 and len(index) == 20  # none stored yet: all must stay findable in memory
    assert all(index.get(r.api_key_id, r.request_id) is not None for r in records)

    await writer.flush()
    assert writer.unwritten == 0
    newest = make_record(20)
    index.add(newest, "b0")
    writer.submit(newest)
    # the backlog is gone at once: the newest five, the one just queued among them
    assert len(index) == 5
    assert [index.get(r.api_key_id, r.request_id) is not None for r in records] == [False] * 16 + [True] * 4
    assert index.get(newest.api_key_id, newest.request_id) is not None
    await writer.stop()


async def test_a_batch_being_written_counts_as_unwritten(gated: GatedAnalytics) -> None:
    writer = RecordWriter(gated, capacity=1000, batch_size=1000, flush_interval=60)
    for i in range(7):
        writer.submit(make_record(i))
    flushing = asyncio.create_task(writer.flush())
    assert await asyncio.to_thread(gated.entered.wait, 30)
    writer.submit(make_record(7))
    assert (writer.depth, writer.unwritten) == (1, 8)  # 7 in the transaction, 1 queued behind it
    gated.release.set()
    await flushing
    assert writer.unwritten == 1
    await writer.stop()
    assert writer.unwritten == 0 and writer.written == 8


async def test_feedback_on_a_request_the_index_let_go_is_read_from_the_log(hub: Hub) -> None:
    await hub.add_provider()
    await hub.add_model("gpt-test", weight=5, input_per_1k=0.001, output_per_1k=0.001)
    key = await hub.new_key()
    index = hub.services.recent_requests
    index._capacity = 3  # the server's is 1,000; the behaviour is the same at 3
    ids = []
    for _ in range(8):
        _, _, resp = await hub.chat(key)
        assert resp.status == 200
        ids.append(resp.headers["X-Request-Id"])
        await hub.services.records.flush()  # stored: the index may let it go
    held = {request_id for _, request_id in index._records}
    assert len(held) == 3 and held == set(ids[-3:])
    resp = await hub.client.post(
        "/v1/feedback", json={"request_id": ids[0], "score": 0.25}, headers={"Authorization": f"Bearer {key}"}
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["score"] == 0.25
    rows = (await hub.admin("GET", f"/logs?request_id={ids[0]}", expect=200))["logs"]
    assert [r["feedback_score"] for r in rows] == [0.25]


def test_duckdb_checkpoints_before_its_wal_grows_past_the_threshold(tmp_path: Path) -> None:
    path = tmp_path / "a.duckdb"
    wal = Path(f"{path}.wal")
    store = AnalyticsStore(str(path))
    store.open()
    try:
        assert store.db.execute("SELECT current_setting('checkpoint_threshold')").fetchall()[0][0] == "4.0 MiB"
        template = make_record(0, routing_reason="routed-weight-5: ranked first of 4 eligible in normal mode")
        largest_wal = 0
        for batch in range(40):  # 40,000 rows: about 12 MiB of WAL without a checkpoint
            rows = [replace(template, request_id=f"r-{batch}-{i}", timestamp=1.7e9 + batch) for i in range(1000)]
            store.write_requests(rows)
            largest_wal = max(largest_wal, wal.stat().st_size if wal.exists() else 0)
        assert store.count_requests() == 40_000
    finally:
        store.close()
    assert 0 < largest_wal <= 1.5 * CHECKPOINT_WAL_MIB * 2**20
    assert path.stat().st_size > 2**20  # the rows went into the database file at the checkpoints


def _loaded_after_start(tmp_path: Path, **env: str) -> list[str]:
    """Which optional libraries a server process has imported once its app is built."""
    script = (
        "import json, sys\n"
        "from pipeline.app import create_app\n"
        "from pipeline.settings import load_settings\n"
        "app = create_app(load_settings())\n"
        f"print(json.dumps(sorted(m for m in {OPTIONAL!r} if m in sys.modules)))\n"
    )
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TOKENHUB_")},
        "TOKENHUB_DATA_DIR": str(tmp_path / "data"),
        "TOKENHUB_ADMIN_TOKEN": "t" * 32,
        "TOKENHUB_LOG_LEVEL": "error",
        **env,
    }
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_optional_libraries_load_only_when_the_configuration_uses_them(tmp_path: Path) -> None:
    assert _loaded_after_start(tmp_path / "plain") == []
    # Redis configured: its client is built (it connects in the background, so no Redis needs to answer)
    assert _loaded_after_start(tmp_path / "redis", TOKENHUB_REDIS_URL="redis://127.0.0.1:1/0") == ["redis"]
    # the PostgreSQL driver (~9 MiB) only with a PostgreSQL store
    with fresh_postgres() as url:
        assert _loaded_after_start(tmp_path / "pg", TOKENHUB_DATABASE_URL=url) == ["psycopg"]


def test_reward_evidence_is_the_newest_of_each_token_bucket_oldest_first(tmp_path: Path) -> None:
    store = AnalyticsStore(str(tmp_path / "a.duckdb"))
    store.open()
    try:
        assert store.db.execute("SELECT current_setting('allocator_background_threads')").fetchall()[0][0] is True
        tokens = [5, 999, 1000, 5000, 10_000, 10_001, 50_000]
        rows = [
            make_record(i, input_tokens=tokens[i % len(tokens)], quality_prior=None if i % 5 == 0 else 0.5)
            for i in range(70)
        ]
        store.write_requests(rows)
        evidence = reward_evidence(store.db, BASE_TS + 3, 4, BASE_TS + 60)
    finally:
        store.close()
    rewarded = [r for r in rows if r.quality_prior is not None and BASE_TS + 3 <= r.timestamp < BASE_TS + 60]
    expected = []
    for bucket in ("small", "medium", "large"):
        expected += [r for r in rewarded if token_bucket(r.input_tokens) == bucket][-4:]
    expected.sort(key=lambda r: r.timestamp)
    assert [e.request_id for e in evidence] == [r.request_id for r in expected] and len(expected) == 12


async def test_the_workflow_status_filter_is_checked_without_temporal(hub: Hub) -> None:
    # The filter's values come from the Temporal SDK, imported on first use: still a 400 for a wrong one.
    refused = await hub.admin("GET", "/workflows?status=DONE", expect=400)
    assert "invalid status filter" in refused["error"]["message"] and "RUNNING" in refused["error"]["message"]
    assert await hub.admin("GET", "/workflows?status=RUNNING", expect=200) == {
        "workflows": [],
        "temporal_enabled": False,
    }
