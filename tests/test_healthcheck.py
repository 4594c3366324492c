"""`tokenhub healthcheck` beyond the install test (tests/test_image_install.py runs it against a real server):
where it probes, a server that never answers, a proxy in the environment, and what it loads."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.healthcheck import healthz_url
from pipeline.settings import load_settings
from tests.conftest import Hub

ROOT = Path(__file__).resolve().parent.parent


def _healthcheck(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TOKENHUB_")}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "healthcheck", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("listen", "url"),
    [
        (":8080", "http://127.0.0.1:8080/healthz"),
        ("0.0.0.0:9000", "http://127.0.0.1:9000/healthz"),
        ("[::]:9000", "http://[::1]:9000/healthz"),
        ("10.1.2.3:8080", "http://10.1.2.3:8080/healthz"),
    ],
)
def test_the_default_url_is_healthz_on_the_listen_address_wildcards_on_loopback(listen: str, url: str) -> None:
    assert healthz_url(load_settings({"TOKENHUB_LISTEN_ADDR": listen})) == url
    override = {"TOKENHUB_LISTEN_ADDR": listen, "TOKENHUB_HEALTHCHECK_URL": "https://hub.internal/healthz"}
    assert healthz_url(load_settings(override)) == "https://hub.internal/healthz"


def test_a_server_that_never_answers_is_unhealthy_within_the_timeout() -> None:
    with socket.socket() as silent:  # accepts connections (the backlog), never reads or answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        started = time.monotonic()
        out = _healthcheck("--timeout", "0.5", "--url", f"http://127.0.0.1:{silent.getsockname()[1]}/healthz")
    assert out.returncode == 1 and out.stdout.startswith("unhealthy: no answer from"), out
    assert time.monotonic() - started < 15  # the 0.5 s timeout, not a hang; Python's start-up is in it too


async def test_proxy_variables_are_ignored_and_readiness_decides(hub: Hub) -> None:
    url = str(hub.client.make_url("/healthz"))
    proxy = {"HTTP_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9", "NO_PROXY": ""}
    not_ready = await asyncio.to_thread(_healthcheck, "--url", url, **proxy)
    assert not_ready.returncode == 1 and "HTTP 503: no provider is configured" in not_ready.stdout, not_ready
    await hub.add_provider()
    await hub.add_model("gpt-test")
    ready = await asyncio.to_thread(_healthcheck, "--url", url, **proxy)
    assert (ready.returncode, ready.stdout.strip()) == (0, "healthy: providers=1 models=1 routable=1"), ready


def test_the_command_line_loads_no_server_module_until_it_serves(tmp_path: Path) -> None:
    # A probe runs every few seconds in a container: importing the CLI must not import the server.
    code = (
        "import sys, pipeline.cli; print(sorted(m for m in ('aiohttp', 'duckdb', 'pipeline.app') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path.cwd())
    assert out.stdout.strip() == "[]"
