"""scripts/bench_scale.py in a tiny mode, as real processes: it measures every row it promises, leaves no process,
temporary directory, Redis key or PostgreSQL database behind (Ctrl-C included), and fails clearly without Redis.

Each run is bounded (seconds of load per row, a subprocess timeout over the whole run).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from tests.support.backing import POSTGRES_ADMIN_URL, REDIS_URL
from tests.support.server import free_port

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "bench_scale.py"
RUN_TIMEOUT_SECS = 400  # a whole tiny run on a loaded two-core machine; the script bounds every step itself
TINY = ["--duration", "1", "--latency-duration", "0.5", "--warmup", "0", "--connections", "4"]


def _bench(*args: str, timeout: float = RUN_TIMEOUT_SECS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def _workdir(output: str) -> Path:
    found = re.search(r"^workdir: (\S+)$", output, re.MULTILINE)
    assert found, output
    return Path(found.group(1))


def _processes_using(workdir: Path) -> list[str]:
    """Processes whose command line, environment or working directory names the run's directory."""
    needle = str(workdir).encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        proc = Path("/proc", pid)
        try:
            named = needle in (proc / "cmdline").read_bytes() or needle in (proc / "environ").read_bytes()
            if named or os.readlink(proc / "cwd").startswith(str(workdir)):
                found.append(pid)
        except OSError:
            continue  # gone meanwhile, or not ours to read
    return found


def _assert_cleaned(workdir: Path) -> None:
    assert not workdir.exists()
    assert _processes_using(workdir) == []


def _rows(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["label"]: row for row in results["rows"]}


def test_workers_shape_with_the_python_load_generator(tmp_path: Path) -> None:
    out = _bench("--shape", "workers", "--max-n", "2", "--loadgen", "python", *TINY, "--json", str(tmp_path / "r.json"))
    assert out.returncode == 0, out.stdout + out.stderr
    results = json.loads((tmp_path / "r.json").read_text())
    rows = _rows(results)
    assert list(rows) == ["direct (fake provider)", "embedded", "workers N=1", "workers N=2"]
    assert results["loadgen"] == "python"
    for label in ("embedded", "workers N=1", "workers N=2"):
        row = rows[label]
        assert row["errors"] == 0, row
        assert row["rps"] > 0 and row["requests"] > 0, row
        assert row["c1_p50_ms"] > 0 and row["direct_c1_p50_ms"] > 0, row
        assert row["added_ms"] == pytest.approx(row["c1_p50_ms"] - row["direct_c1_p50_ms"])
    assert rows["embedded"]["redis"] is False and rows["embedded"]["scale"] is None
    assert rows["workers N=2"]["redis"] is True and rows["workers N=2"]["processes"] == 2
    assert rows["workers N=1"]["scale"] == pytest.approx(1.0)
    assert "workers N=2" in out.stdout and "load generator: python" in out.stdout
    _assert_cleaned(_workdir(out.stdout))


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (Debian package wrk)")
def test_replicas_shape_with_wrk_a_given_redis_and_postgres(tmp_path: Path) -> None:
    args = ["--shape", "replicas", "--max-n", "2", "--loadgen", "wrk", *TINY, "--json", str(tmp_path / "r.json")]
    out = _bench(*args, "--redis-url", REDIS_URL, "--postgres-url", POSTGRES_ADMIN_URL)
    assert out.returncode == 0, out.stdout + out.stderr
    results = json.loads((tmp_path / "r.json").read_text())
    rows = _rows(results)
    assert list(rows) == ["direct (fake provider)", "embedded", "replicas N=1", "replicas N=2"]
    for label in ("embedded", "replicas N=1", "replicas N=2"):
        assert rows[label]["errors"] == 0 and rows[label]["rps"] > 0, rows[label]
    assert rows["replicas N=2"]["processes"] == 2 and rows["replicas N=2"]["redis"] is True
    assert "PostgreSQL:" in results["postgres"]
    # Its own databases were created and dropped; its keys on the shared Redis deleted.
    assert results["postgres_databases"], results
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        left = conn.execute(
            "SELECT datname FROM pg_database WHERE datname = ANY(%s)", (results["postgres_databases"],)
        ).fetchall()
    assert left == []
    assert len(results["redis_prefixes"]) == 2  # one per run that used Redis
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for prefix in results["redis_prefixes"]:
            assert list(client.scan_iter(match=f"{prefix}:*", count=1000)) == []
    finally:
        client.close()
    _assert_cleaned(_workdir(out.stdout))


def test_an_unreachable_redis_fails_clearly_and_cleans_up() -> None:
    out = _bench("--redis-url", f"redis://127.0.0.1:{free_port()}/0", "--max-n", "1", *TINY, timeout=120)
    assert out.returncode == 1
    assert "does not answer PING" in out.stderr
    _assert_cleaned(_workdir(out.stdout))


def test_ctrl_c_stops_every_process_and_removes_the_directory() -> None:
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--shape", "replicas", "--max-n", "1", "--duration", "60", "--warmup", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        workdir = _workdir(first)
        # Wait (bounded) until TokenHub itself runs: its data directory is in the run's directory.
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not any(workdir.glob("*-embedded-1/data-0")):
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
        assert any(workdir.glob("*-embedded-1/data-0")), "TokenHub never started"
        assert _processes_using(workdir)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, rest
    assert "interrupted" in rest
    _assert_cleaned(workdir)
