"""The container's commands, run from a fresh install instead of a checkout (no Docker engine here).

The Dockerfile's build stage copies a list of paths and runs `pip wheel`; its runtime stage installs that wheel
and runs `tokenhub serve`, probed by `tokenhub healthcheck`, stopped by SIGTERM. This module does the same from
the same list: the COPY lines are read from the Dockerfile, the wheel is built from a copy of just those paths
(`--no-deps`: the dependencies come from the test virtualenv through a .pth file instead of a download), installed
into a new virtualenv, and its console script is the server under test.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.fakes.openai_fake import FakeOpenAI, Hang
from tests.support.server import Server, free_port
from tests.test_dockerfile import build_stage_copies

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "image-admin-token-0123456789abcdef"


@dataclass(frozen=True)
class Install:
    venv: Path

    @property
    def tokenhub(self) -> str:
        return str(self.venv / "bin" / "tokenhub")

    def server(self, tmp_path: Path, *, bind: str = "127.0.0.1") -> Server:
        server = Server(tmp_path / "data", command=[self.tokenhub, "serve"], bind=bind, TOKENHUB_ADMIN_TOKEN=ADMIN)
        server.env.pop("PYTHONPATH", None)  # nothing but the installed wheel
        return server

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("TOKENHUB_") and k != "PYTHONPATH"}
        return subprocess.run(
            [self.tokenhub, *args], env={**clean, **env}, capture_output=True, text=True, timeout=30, cwd=self.venv
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Install:
    base = tmp_path_factory.mktemp("image")
    context = base / "src"
    context.mkdir()
    for source, target in build_stage_copies():
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, context / target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / source, context / target)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run([*pip, "wheel", "--no-deps", "--wheel-dir", str(base / "wheels"), "."], cwd=context, check=True)
    (wheel,) = (base / "wheels").glob("tokenhub-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # --ignore-installed: never touch another environment's tokenhub (the test virtualenv's editable one).
    subprocess.run(
        [*pip, "--python", str(python), "install", "--no-deps", "--no-index", "--ignore-installed", str(wheel)],
        check=True,
    )
    # The dependencies, after the install so pip never saw them: the test virtualenv's site-packages.
    target = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(target, "_tokenhub_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return Install(venv)


@pytest.fixture
async def fake_upstream() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


def test_the_installed_package_is_the_wheel_not_the_checkout(installed: Install) -> None:
    script = (
        "import json, pipeline, admin_ui.static as s; d = s.STATIC_DIR;"
        "print(json.dumps([pipeline.__file__, sorted(str(p.relative_to(d)) for p in d.rglob('*'))]))"
    )
    out = subprocess.run(
        [str(installed.venv / "bin" / "python"), "-c", script],
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        cwd=installed.venv,
        capture_output=True,
        text=True,
        check=True,
    )
    module, static = json.loads(out.stdout)
    assert module.startswith(str(installed.venv)), module
    # The web UI's files ship (package data, not code: a wheel would drop them silently). Hidden files such as
    # .gitkeep are never served, and need not ship.
    checkout = ROOT / "admin_ui" / "static"
    expected = [str(p.relative_to(checkout)) for p in checkout.rglob("[!.]*") if "__pycache__" not in p.parts]
    assert static == sorted(expected)


async def test_installed_server_on_all_interfaces_and_the_healthcheck(
    installed: Install, tmp_path: Path, fake_upstream: FakeOpenAI
) -> None:
    # As in the image: 0.0.0.0, a data directory of its own; the healthcheck finds the port from the same env.
    server = installed.server(tmp_path, bind="0.0.0.0")
    started = time.monotonic()
    await server.start()
    print(f"\nstart-up, exec to /healthz answering: {time.monotonic() - started:.2f} s")
    env = {"TOKENHUB_LISTEN_ADDR": server.env["TOKENHUB_LISTEN_ADDR"]}
    try:
        ready = await asyncio.to_thread(installed.run, "healthcheck", **env)
        assert ready.returncode == 1, ready
        assert "unhealthy: HTTP 503: no provider is configured" in ready.stdout, ready
        assert "/admin/v1/providers" in ready.stdout  # the fix, in the health log
        live = await asyncio.to_thread(installed.run, "healthcheck", "--live", **env)
        assert (live.returncode, live.stdout.startswith("alive, not ready")) == (0, True), live

        await _route_to(server, fake_upstream, "m")
        healthy = await asyncio.to_thread(installed.run, "healthcheck", **env)
        assert (healthy.returncode, healthy.stdout.strip()) == (0, "healthy: providers=1 models=1 routable=1")

        # The override, as the variable and as the flag (the flag wins); and an answer that is not TokenHub's.
        moved = await asyncio.to_thread(
            installed.run, "healthcheck", TOKENHUB_HEALTHCHECK_URL=f"http://127.0.0.1:{free_port()}/healthz"
        )
        assert moved.returncode == 1 and "no answer from" in moved.stdout, moved
        flag = await asyncio.to_thread(
            installed.run, "healthcheck", "--url", f"{server.url}/healthz", TOKENHUB_HEALTHCHECK_URL="http://x:1/"
        )
        assert flag.returncode == 0, flag
        other = await asyncio.to_thread(installed.run, "healthcheck", "--url", f"{fake_upstream.base_url}/v1/models")
        assert other.returncode == 1 and "without TokenHub's readiness document" in other.stdout, other
        bad = await asyncio.to_thread(installed.run, "healthcheck", TOKENHUB_HEALTHCHECK_URL="file:///etc/passwd")
        assert bad.returncode == 1 and "TOKENHUB_HEALTHCHECK_URL" in bad.stdout, bad  # 0 or 1 only, never 2
    finally:
        code, _, err = await server.stop()
    assert code == 0, err[-2000:]
    gone = await asyncio.to_thread(installed.run, "healthcheck", **env)
    assert gone.returncode == 1 and "no answer from" in gone.stdout


async def test_sigterm_drains_an_in_flight_request_of_the_installed_server(
    installed: Install, tmp_path: Path, fake_upstream: FakeOpenAI
) -> None:
    server = installed.server(tmp_path)
    await server.start()
    key = await _route_to(server, fake_upstream, "slow")
    async with aiohttp.ClientSession(base_url=server.url) as session:
        fake_upstream.script("slow", Hang(1.0))
        body = {"request": {"messages": [{"role": "user", "content": "slow one"}]}}
        in_flight = asyncio.create_task(session.post("/v1/chat", json=body, headers={"Authorization": f"Bearer {key}"}))
        await fake_upstream.wait_until(lambda: fake_upstream.in_flight == 1)
        server.terminate()
        resp = await in_flight
        assert resp.status == 200 and (await resp.json())["negotiated_model"] == "slow"
    code, out, err = await server.stop()
    assert code == 0, err[-2000:]
    assert '"records_written":1' in out and '"event":"shutdown_complete"' in out


async def _route_to(server: Server, fake: FakeOpenAI, model: str) -> str:
    """Register the fake provider and one model on the server; returns a new API key."""
    async with aiohttp.ClientSession(base_url=server.url, headers={"Authorization": f"Bearer {ADMIN}"}) as session:
        provider = {"id": "fake", "base_url": fake.base_url, "api_key": "sk-x"}
        assert (await session.post("/admin/v1/providers", json=provider)).status == 201
        assert (await session.post("/admin/v1/models", json={"id": model, "provider_id": "fake"})).status == 201
        return (await (await session.post("/admin/v1/apikeys", json={"name": "k"})).json())["key"]
