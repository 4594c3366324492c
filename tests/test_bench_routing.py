"""`scripts/bench_routing.py --quick`: the routing benchmark runs end to end and reports every column."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_routing_benchmark_reports_every_policy_and_the_evaluation() -> None:
    run = subprocess.run(
        [sys.executable, "scripts/bench_routing.py", "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode in (0, 1), run.stderr  # 1: a target missed on the short quick run, reported
    out = run.stdout
    for world in ("current", "w01", "w02", "w03"):
        assert f"\n{world} " in out
    for policy in ("normal", "thompson", "thompson+feedback", "default reward"):
        assert f"\n{policy:17}  ratio mean" in out
    assert "evaluation of thompson: actual average within the estimate's 95 % CI" in out
    assert "requests to shift (thompson+feedback" in out and "per-decision cost" in out
    assert "within its 95 % prediction interval" in out and "where the new best leads by >= 0.05" in out
    assert out.count("PASS  ") + out.count("FAIL  ") == 4
