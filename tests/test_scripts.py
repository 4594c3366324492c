"""The scripts the docs tell people to run start and explain themselves (an import broken by a refactor of
what they share fails here, not in the hands of whoever runs a 30-minute soak)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.support.polling import until

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "script",
    [
        "soak.py",
        "demo.py",
        "bench_routing.py",
        "bench_writer.py",
        "bench_shared_limits.py",
        "bench_scale.py",
        "bench_load.py",
        "bench_fake_provider.py",
        "first_token_probe.py",
        "bench_passthrough.py",
        "duckdb_heap.py",
    ],
)
def test_the_script_prints_its_help(script: str) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout


def test_the_soak_reports_each_windows_floor_of_a_gauge_that_swings_with_the_load() -> None:
    from scripts.soak import Floor

    floor = Floor()
    assert floor.take() == -1.0  # no reading in the window
    for value in (150, 118, 170, 131):
        floor.add(value)
    assert floor.take() == 118
    floor.add(160)
    assert floor.take() == 160  # each window starts afresh


def test_the_duckdb_heap_benchmark_reopens_and_samples() -> None:
    arguments = ["--rows", "8000", "--reopen-rows", "4000", "--every", "4000"]
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "duckdb_heap.py"), *arguments],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    samples = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [(s["rows"], s["reopens"]) for s in samples] == [(4000, 1), (8000, 2)]
    assert all(s["heap_mib"] > 0 and s["rss_mib"] > 0 for s in samples)
    assert "8,000 rows, 2 reopens" in out.stdout


async def test_the_soaks_memory_probe_samples_the_server(tmp_path: Path) -> None:
    from scripts.server_process import ServerProcess
    from scripts.soak import memory_probe_env

    out = tmp_path / "memory.jsonl"
    hub = ServerProcess(**memory_probe_env(str(out), 0.5))
    try:
        async with aiohttp.ClientSession() as session:
            await hub.ready(session)
            await until(lambda: out.exists() and len(out.read_text().splitlines()) >= 2, 30)  # two records
    finally:
        hub.stop()
    first, second = (json.loads(line) for line in out.read_text().splitlines()[:2])
    assert {"heap", "pymalloc", "anonymous", "files"} <= set(first["resident_mib"])
    assert sum(first["resident_mib"].values()) > 50  # a server's RSS, told by kind
    glibc = first["glibc_mib"]
    assert glibc["in_use_mib"] > 1 and glibc["arenas"][0]["arena"] == 0
    assert first["objects"] > 1000 and first["grown"] == [] and isinstance(second["grown"], list)
    assert second["minute"] > first["minute"]
