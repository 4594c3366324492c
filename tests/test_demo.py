"""`make demo`: the fake providers, the configuration file and the traffic generator, against a real TokenHub.

The in-process tests apply deploy/demo/tokenhub.yaml through the admin API (the same objects the
TOKENHUB_CONFIG_FILE loader applies). `test_demo_run_end_to_end` runs `scripts/demo.py run` as the user
does, so it needs a TokenHub that reads TOKENHUB_CONFIG_FILE (issue 14's config-as-code part).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from scripts.demo import CONFIG_FILE, KEY_NAME, metrics_summary, relocated_config, start_fakes, stop_fakes
from scripts.demo_fakes import DEFAULT_PORT_BASE, FakeModel, FakeProvider, demo_lineup, grade, question
from scripts.demo_traffic import Traffic
from tests.conftest import Hub
from tests.support.server import free_port

ROOT = Path(__file__).resolve().parent.parent


async def apply_config(hub: Hub, config: dict[str, Any]) -> dict[str, str]:
    """The configuration file's objects, POSTed in the loader's order; returns the created keys by name."""
    for provider in config.get("providers", []):
        body = {k: v for k, v in provider.items() if k != "api_key_env"}
        body["api_key"] = os.environ.get(provider["api_key_env"], "demo-key")
        await hub.admin("POST", "/providers", body, expect=201)
    for model in config.get("models", []):
        await hub.admin("POST", "/models", model, expect=201)
    for alias in config.get("aliases", []):
        await hub.admin("POST", "/aliases", alias, expect=201)
    if "routing" in config:
        await hub.admin("PUT", "/routing-config", config["routing"], expect=200)
    keys = {}
    for key in config.get("api_keys", []):
        keys[key["name"]] = (await hub.admin("POST", "/apikeys", key, expect=201))["key"]
    return keys


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [(s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


@pytest.fixture
async def demo_fakes() -> AsyncIterator[list[tuple[str, FakeProvider]]]:
    fakes = await start_fakes("127.0.0.1", 0, degrade_after=1.0)
    # Degraded, every call fails (the demo's 90 % left, by chance, a success between errors often enough that
    # the breaker's five consecutive errors never came within the test's few seconds on a loaded machine).
    for _, fake in fakes:
        for model in fake.models.values():
            model.degraded_failure_rate = 1.0
    yield fakes
    await stop_fakes(fakes)


def test_config_file_names_the_lineup() -> None:
    """deploy/demo/tokenhub.yaml and the fakes agree: one provider per fake, on its documented port."""
    config = yaml.safe_load(CONFIG_FILE.read_text())
    lineup = demo_lineup(60)
    urls = {p["id"]: p["base_url"] for p in config["providers"]}
    assert urls == {e.provider_id: f"http://127.0.0.1:{DEFAULT_PORT_BASE + e.offset}" for e in lineup}
    models = {m["id"]: m["provider_id"] for m in config["models"]}
    assert models == {e.model.name: e.provider_id for e in lineup}
    assert all("api_key" not in p and p["api_key_env"] for p in config["providers"])  # never a key inline
    assert [k["name"] for k in config["api_keys"]] == [KEY_NAME]


async def test_fake_answers_carry_quality_and_failures() -> None:
    perfect = FakeModel("right", latency_ms=0, failure_rate=0.0, quality=1.0)
    hopeless = FakeModel("wrong", latency_ms=0, failure_rate=0.0, quality=0.0)
    broken = FakeModel("broken", latency_ms=0, failure_rate=1.0, quality=1.0)
    fake = FakeProvider([perfect, hopeless, broken])
    await fake.start()
    rng = random.Random(3)
    try:
        async with aiohttp.ClientSession() as session:

            async def ask(model: str, **extra: Any) -> tuple[int, Any]:
                prompt, expected = question(rng)
                body = {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}
                async with session.post(fake.base_url + "/v1/chat/completions", json=body) as resp:
                    if extra.get("stream"):
                        text = await resp.text()
                        content = "".join(re.findall(r'"content": "([^"]*)"', text))
                        return resp.status, grade(content, expected)
                    data = await resp.json()
                    if resp.status != 200:
                        return resp.status, data
                    return resp.status, grade(data["choices"][0]["message"]["content"], expected)

            assert await ask("right") == (200, 1.0)
            assert await ask("wrong") == (200, 0.0)
            assert await ask("right", stream=True) == (200, 1.0)
            status, body = await ask("broken")
            assert status == 503 and body["error"]["type"] == "server_error"
            status, body = await ask("nobody")
            assert status == 404
            async with session.post(fake.base_url + "/v1/chat/completions", data=b"{nope") as resp:
                assert resp.status == 400
    finally:
        await fake.stop()


async def test_degradation_after_its_time() -> None:
    model = FakeModel("fader", latency_ms=10, failure_rate=0.0, quality=1.0, degrade_after_secs=5)
    assert not model.tick(100.0)  # the first call starts the clock
    assert not model.tick(104.9)
    assert model.tick(105.0) and (model.failure_rate, model.quality, model.latency_ms) == (0.9, 0.3, 30)
    assert not model.tick(200.0)  # degrades once


async def test_fake_health_endpoint_reports_degradation() -> None:
    model = FakeModel("fader", latency_ms=0, failure_rate=0.0, quality=1.0)
    fake = FakeProvider([model])
    await fake.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(fake.base_url + "/v1/models") as resp:
                assert resp.status == 200 and (await resp.json())["data"][0]["id"] == "fader"
            model.degraded = True
            async with session.get(fake.base_url + "/v1/models") as resp:
                assert resp.status == 503
    finally:
        await fake.stop()


async def test_demo_traffic_shows_routing_failover_breaker_and_feedback(
    make_hub: Callable[..., Any], demo_fakes: list[tuple[str, FakeProvider]]
) -> None:
    hub: Hub = await make_hub(
        provider_max_retries=0,
        feedback_rate_limit_rps=1000,
        feedback_rate_limit_burst=1000,
        exploration_temp=0.3,
    )
    keys = await apply_config(hub, relocated_config(demo_fakes))
    traffic = Traffic(str(hub.client.make_url("")), keys[KEY_NAME], rate=40, stream_share=0.3, seed=5)
    stats = await traffic.run(4.0, asyncio.Event(), report_every=0)

    assert stats.sent >= 60 and stats.ok >= stats.sent * 0.9, stats
    assert len(stats.by_model) >= 3, stats.by_model  # several models took traffic
    assert stats.failovers > 0 and stats.streams > 0, stats
    assert stats.feedback == stats.ok, stats.errors  # every answer was graded and accepted

    text = await (await hub.client.get("/metrics")).text()
    failed = {labels["provider"] for labels, value in samples(text, "tokenhub_provider_attempts_total")}
    assert {"flaky", "fader"} <= failed
    fader_failures = sum(
        v
        for labels, v in samples(text, "tokenhub_provider_attempts_total")
        if labels["provider"] == "fader" and labels["outcome"] != "ok"
    )
    assert fader_failures >= 5  # degraded after 1 s: enough consecutive errors to open its breaker
    health = await hub.admin("GET", "/health")
    assert "fader" in str(health)
    skipped = [v for labels, v in samples(text, "tokenhub_provider_skips_total") if labels["provider"] == "fader"]
    down = [v for labels, v in samples(text, "tokenhub_provider_health_state") if labels["provider"] == "fader"]
    assert (skipped and max(skipped) > 0) or down == [0.0], (skipped, down)
    summary = metrics_summary(text)
    assert summary[0].startswith("served by model: ") and any("fader" in line for line in summary)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        return resp.read().decode()


def test_demo_run_end_to_end(tmp_path: Path) -> None:
    """`demo.py run` as a user runs it (TOKENHUB_CONFIG_FILE; needs config-as-code): several models serve,
    calls fail over, and SIGINT stops fakes and TokenHub cleanly. The traffic outlasts the test (a slow start must
    not end it first); fader degrades after 3 s, as it would in an 8 s run."""
    port = free_port()
    command = [sys.executable, "scripts/demo.py", "run", "--duration", "600", "--degrade-after", "3", "--rate", "15"]
    command += ["--port", str(port), "--fake-port-base", "0", "--data-dir", str(tmp_path / "data")]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        served: set[str] = set()
        failed_calls = 0.0
        deadline = time.monotonic() + 90  # TokenHub's start-up (up to 30 s), then the traffic
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            try:
                text = _metrics(port)
            except OSError:
                continue
            served = {
                labels["model"]
                for labels, v in samples(text, "tokenhub_requests_total")
                if labels["status"] == "ok" and v > 0
            }
            failed_calls = sum(
                v for labels, v in samples(text, "tokenhub_provider_attempts_total") if labels["outcome"] != "ok"
            )
            if len(served) >= 3 and failed_calls > 0:
                break
        assert proc.poll() is None, proc.communicate()[0]
        assert len(served) >= 3 and failed_calls > 0, (served, failed_calls)
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=30)[0]
    finally:
        if proc.poll() is None:  # a failed assertion: still stop the demo the clean way, so TokenHub goes too
            proc.send_signal(signal.SIGINT)
            try:
                proc.communicate(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, output
    assert "admin token:" in output and "TokenHub stopped" in output, output
    fake_ports = {int(p) for p in re.findall(r"  \w+ +http://127\.0\.0\.1:(\d+) ", output)}
    assert len(fake_ports) == 5, output
    assert not any(_listening(p) for p in {port, *fake_ports})  # no orphaned TokenHub, fakes closed
