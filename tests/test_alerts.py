"""deploy/prometheus/alerts.yml and deploy/grafana/tokenhub.json: valid for promtool and Grafana, unit-tested,
and over metric names a running TokenHub exposes."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from pipeline.metrics import LATENCY_BUCKETS_MS
from tests.conftest import Hub
from tests.fakes.openai_fake import Fail

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "tokenhub.json"
RUNBOOK = ROOT / "docs" / "alerts.md"
METRIC_NAME = re.compile(r"\btokenhub_[a-z0-9_]+\b")
# Grafana's interval variables are not PromQL; promtool sees what Grafana would send.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60, check=False)


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_catch_a_broken_threshold(tmp_path: Path) -> None:
    """The unit tests can fail: the same tests against rules with a wrong threshold do."""
    (tmp_path / "alerts.yml").write_text(ALERTS.read_text().replace("> 0.05", "> 0.07"))
    (tmp_path / "alerts_test.yml").write_text(ALERTS_TEST.read_text())
    result = promtool("test", "rules", str(tmp_path / "alerts_test.yml"))
    assert result.returncode != 0 and "TokenHubHighErrorRate" in result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    cases = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    checks = [check for case in cases for check in case["alert_rule_test"]]
    names = [rule["alert"] for rule in alert_rules()]
    spec = {
        "TokenHubHighErrorRate",
        "TokenHubCriticalErrorRate",
        "TokenHubHighLatency",
        "TokenHubProviderDown",
        "TokenHubCostSpike",
        "TokenHubNoTraffic",
        "TokenHubHighRateLimiting",
    }
    assert spec <= set(names) and len(names) == len(set(names))
    for name in names:
        outcomes = {bool(check["exp_alerts"]) for check in checks if check["alertname"] == name}
        assert outcomes == {True, False}, f"{name}: needs a firing and a not-firing case"


def test_every_alert_has_severity_annotations_and_a_runbook_entry() -> None:
    runbook = RUNBOOK.read_text()
    headings = {line.removeprefix("## ").strip().lower() for line in runbook.splitlines() if line.startswith("## ")}
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        assert annotations["runbook"] == f"docs/alerts.md#{rule['alert'].lower()}"
        assert rule["alert"].lower() in headings, f"docs/alerts.md has no section for {rule['alert']}"


def test_dashboard_structure() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "tokenhub" and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = dashboard["panels"]
    assert len(panels) >= 10
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["title"] and panel["type"] in ("stat", "timeseries"), panel
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"], panel["title"]
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    # no two panels overlap
    cells = [(x, y) for p in panels for x, y in _cells(p["gridPos"])]
    assert len(cells) == len(set(cells))


def _cells(grid: dict[str, int]) -> list[tuple[int, int]]:
    return [(x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])]


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool cannot read a dashboard, but it parses a recording rule's expression: one rule per query."""
    rules = []
    for index, expr in enumerate(dashboard_exprs()):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr  # a Grafana variable this test does not know
        rules.append({"record": f"tokenhub:dashboard_query_{index}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr

    broken = tmp_path / "broken.yml"
    broken.write_text(
        yaml.safe_dump({"groups": [{"name": "d", "rules": [{"record": "x", "expr": "sum(rate(x[5m])"}]}]})
    )
    assert promtool("check", "rules", str(broken)).returncode != 0  # the check does parse


def exposed_names(metrics_text: str) -> set[str]:
    """Every series name /metrics has or may have: its samples, and each declared family's series names."""
    names = {line.split("{")[0].split(" ")[0] for line in metrics_text.splitlines() if line.startswith("tokenhub_")}
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE tokenhub_"):
            _, _, family, kind = line.split()
            names.add(family)
            names.update(family + suffix for suffix in suffixes.get(kind, ()))
    return names


async def test_alerts_and_dashboard_use_metrics_tokenhub_exposes(ready_hub: tuple[Hub, str]) -> None:
    hub, key = ready_hub
    await hub.chat_ok(key)
    hub.fake.script("gpt-test", *[Fail(500) for _ in range(3)])
    await hub.chat(key)  # a failed request: error series too
    text = await (await hub.client.get("/metrics")).text()
    exposed = exposed_names(text)
    assert {"tokenhub_requests_total", "tokenhub_request_latency_ms_bucket", "tokenhub_cost_usd_total"} <= exposed

    used = {name for rule in alert_rules() for name in METRIC_NAME.findall(rule["expr"])}
    assert len(used) >= 7
    used |= {name for expr in dashboard_exprs() for name in METRIC_NAME.findall(expr)}
    assert sorted(used - exposed) == []


async def test_latency_buckets_reach_80_seconds(ready_hub: tuple[Hub, str]) -> None:
    """A p95 above 10 s is measurable (the original's top bucket was 5120 ms); few buckets, each is a series."""
    hub, key = ready_hub
    await hub.chat_ok(key)
    text = await (await hub.client.get("/metrics")).text()
    bounds = [float(b) for b in re.findall(r'tokenhub_request_latency_ms_bucket\{[^}]*le="([0-9.]+)"', text)]
    assert max(bounds) >= 80_000 and 10_240 in bounds
    assert len(LATENCY_BUCKETS_MS) <= 16
