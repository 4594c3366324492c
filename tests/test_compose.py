"""docker-compose.yml against the Compose Specification's schema, the files it mounts, and the Prometheus and
Grafana configuration it mounts (no Docker engine here: read as data, and promtool for Prometheus)."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft201909Validator

ROOT = Path(__file__).resolve().parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SCHEMA = json.loads((Path(__file__).parent / "schemas" / "compose-spec.json").read_text())
PROFILES = {"temporal", "observability", "demo"}
# The rules Prometheus loads and the dashboard Grafana shows (docs/alerts.md).
ALERTING_FILES = {"deploy/prometheus/alerts.yml", "deploy/grafana/tokenhub.json"}


def _errors(doc: dict[str, Any]) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in Draft201909Validator(SCHEMA).iter_errors(doc)]


def _bind_mounts() -> dict[str, str]:
    """Host path (relative to the repository) → container path, for every bind mount of every service."""
    mounts = {}
    for service in COMPOSE["services"].values():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                mounts[str(Path(source))] = target
    return mounts


def test_the_compose_file_follows_the_compose_specification() -> None:
    Draft201909Validator.check_schema(SCHEMA)
    assert _errors(COMPOSE) == []


def test_the_schema_catches_a_mistake() -> None:
    broken = copy.deepcopy(COMPOSE)
    broken["services"]["tokenhub"]["healthcheck"]["intervall"] = "15s"
    broken["services"]["tokenhub"]["ports"] = "8080:8080"
    assert len(_errors(broken)) == 2


def test_every_mounted_file_is_in_the_repository() -> None:
    missing = [source for source in _bind_mounts() if not (ROOT / source).exists()]
    assert missing == []
    assert set(_bind_mounts()) >= ALERTING_FILES


def test_the_alert_rules_and_dashboard_are_in_the_repository() -> None:
    assert all((ROOT / source).is_file() for source in ALERTING_FILES)


def test_tokenhub_service_listens_everywhere_keeps_data_in_a_volume_and_is_health_checked() -> None:
    hub = COMPOSE["services"]["tokenhub"]
    assert "profiles" not in hub  # `docker compose up` starts it alone
    assert hub["env_file"] == ".env" and (ROOT / ".env.example").is_file()
    env = hub["environment"]
    assert env["TOKENHUB_LISTEN_ADDR"] == "0.0.0.0:8080" and env["TOKENHUB_DATA_DIR"] == "/data"
    assert "tokenhub_data:/data" in hub["volumes"] and "tokenhub_data" in COMPOSE["volumes"]
    assert hub["ports"] == ["8080:8080"]
    assert hub["healthcheck"]["test"] == ["CMD", "tokenhub", "healthcheck"]
    assert hub["restart"] == "unless-stopped"
    limits = hub["deploy"]["resources"]["limits"]
    assert float(limits["cpus"]) > 0 and limits["memory"].endswith(("M", "G"))
    # Docker's SIGKILL must come after the server's own drain (TOKENHUB_SHUTDOWN_DRAIN_SECS, 30 s by default).
    assert int(hub["stop_grace_period"].removesuffix("s")) > 30


def test_every_other_service_is_behind_a_profile_and_limited() -> None:
    others = {name: s for name, s in COMPOSE["services"].items() if name != "tokenhub"}
    assert {p for s in others.values() for p in s["profiles"]} == PROFILES
    for name, service in others.items():
        assert set(service["profiles"]) <= PROFILES, name
        assert service["deploy"]["resources"]["limits"]["memory"], name
    demo = COMPOSE["services"]["demo"]
    assert demo["command"] == ["scripts/demo.py", "run", "--host", "0.0.0.0", "--port", "8080"]
    assert demo["ports"] == ["8081:8080"]  # beside the tokenhub service's 8080


def test_prometheus_scrapes_tokenhub_and_loads_the_mounted_rules(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    mounts = _bind_mounts()
    assert config["rule_files"] == [mounts["deploy/prometheus/alerts.yml"]]
    assert mounts["deploy/prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "tokenhub"]
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"] == ["tokenhub:8080"]
    # promtool checks the whole file here; the rules themselves are checked in tests/test_alerts.py.
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: `make system-deps` installs it"
    (tmp_path / "rules.yml").write_text("groups: []\n")
    config["rule_files"] = [str(tmp_path / "rules.yml")]
    checked = tmp_path / "prometheus.yml"
    checked.write_text(yaml.safe_dump(config))
    out = subprocess.run([promtool, "check", "config", str(checked)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_grafana_provisions_the_datasource_and_the_mounted_dashboard() -> None:
    provisioning = ROOT / "deploy/grafana/provisioning"
    assert _bind_mounts()["deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"]
    assert (source["type"], source["url"], source["uid"]) == ("prometheus", "http://prometheus:9090", "prometheus")
    (provider,) = yaml.safe_load((provisioning / "dashboards/tokenhub.yml").read_text())["providers"]
    dashboard_in_container = Path(_bind_mounts()["deploy/grafana/tokenhub.json"])
    assert Path(provider["options"]["path"]) == dashboard_in_container.parent
