"""`tokenhub serve` as a subprocess: SIGHUP re-applies the config file and re-reads the live settings (log level,
rate limits, routing defaults) from TOKENHUB_ENV_FILE; a bad config file stops start-up naming its line."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from admin_ui.config_reload import sighup
from pipeline.settings import SettingsError, load_settings, unknown_variables
from pipeline.web import PIPELINES
from tests.conftest import Hub
from tests.test_cli import ADMIN, Server

CONFIG = """\
providers:
  - {id: up, type: openai, base_url: "http://127.0.0.1:9", api_key_env: SIGHUP_TEST_KEY}
models:
  - {id: first, provider_id: up}
"""


async def admin_get(server: Server, path: str) -> dict:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{server.url}/admin/v1{path}", headers={"Authorization": f"Bearer {ADMIN}"}) as resp,
    ):
        assert resp.status == 200
        return await resp.json()


async def test_sighup_reapplies_the_file_and_changes_the_log_level(tmp_path: Path) -> None:
    config, env_file = tmp_path / "tokenhub.yaml", tmp_path / "tokenhub.env"
    config.write_text(CONFIG)
    env_file.write_text("TOKENHUB_LOG_LEVEL=error\nTOKENHUB_DEFAULT_MODE=normal\n")
    server = Server(
        tmp_path / "data",
        TOKENHUB_ADMIN_TOKEN=ADMIN,
        TOKENHUB_CONFIG_FILE=str(config),
        TOKENHUB_ENV_FILE=str(env_file),
        TOKENHUB_CREDENTIALS_FILE=str(tmp_path / "none"),
        SIGHUP_TEST_KEY="sk-sighup-secret-1",
    )
    await server.start()
    try:
        assert [m["id"] for m in (await admin_get(server, "/models"))["items"]] == ["first"]
        config.write_text(CONFIG + "  - {id: second, provider_id: up}\n")
        env_file.write_text("export TOKENHUB_LOG_LEVEL=info\nTOKENHUB_DEFAULT_MODE='cheap'\n")
        assert server.proc is not None
        server.proc.send_signal(signal.SIGHUP)
        deadline = asyncio.get_running_loop().time() + 30  # bounded: a loaded machine is slow, not wrong
        while len((await admin_get(server, "/models"))["items"]) != 2:
            assert asyncio.get_running_loop().time() < deadline, "SIGHUP did not re-apply the file"
            await asyncio.sleep(0.05)
        routing = await admin_get(server, "/routing-config")
        assert routing["effective"]["mode"] == "cheap"  # the routing default from the env file, live
    finally:
        code, out, err = await server.stop()
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert "starting" not in names  # info lines were hidden at level error...
    reloaded = next(e for e in events if e["event"] == "settings_reloaded")  # ...and shown after SIGHUP
    assert reloaded["changed"] == {"log_level": ["error", "info"], "default_mode": ["normal", "cheap"]}
    applied = next(e for e in events if e["event"] == "config_applied")
    assert applied["trigger"] == "sighup" and applied["changes"] == "models created 1"
    assert "sk-sighup-secret-1" not in out + err


async def test_a_bad_sighup_keeps_serving_and_changes_nothing(tmp_path: Path) -> None:
    config, env_file = tmp_path / "tokenhub.yaml", tmp_path / "tokenhub.env"
    config.write_text(CONFIG)
    env_file.write_text("TOKENHUB_LOG_LEVEL=info\n")
    server = Server(
        tmp_path / "data",
        TOKENHUB_ADMIN_TOKEN=ADMIN,
        TOKENHUB_CONFIG_FILE=str(config),
        TOKENHUB_ENV_FILE=str(env_file),
        TOKENHUB_CREDENTIALS_FILE=str(tmp_path / "none"),
        SIGHUP_TEST_KEY="sk-sighup-secret-2",
    )
    await server.start()
    try:
        config.write_text(CONFIG + "  - {id: second, provider_id: nobody}\n")
        env_file.write_text("TOKENHUB_LOG_LEVEL=loud\n")
        assert server.proc is not None
        server.proc.send_signal(signal.SIGHUP)
        deadline = asyncio.get_running_loop().time() + 30  # bounded: a loaded machine is slow, not wrong
        while not (await admin_get(server, "/audit?action=config_apply&status=400"))["total"]:
            assert asyncio.get_running_loop().time() < deadline, "SIGHUP's refused apply was not audited"
            await asyncio.sleep(0.05)
        assert [m["id"] for m in (await admin_get(server, "/models"))["items"]] == ["first"]
    finally:
        code, out, err = await server.stop()
    assert code == 0, err
    assert '"event":"settings_reload_failed"' in out and "TOKENHUB_LOG_LEVEL=loud" in out
    assert '"event":"config_reload_failed"' in out and "line 5" in out and "'nobody' does not exist" in out


def test_a_bad_config_file_stops_startup_naming_the_line(tmp_path: Path) -> None:
    config = tmp_path / "tokenhub.yaml"
    config.write_text(CONFIG.replace("type: openai", "type: gopher"))
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "serve"],
        env={
            "PATH": "/usr/bin:/bin",
            "TOKENHUB_DATA_DIR": str(tmp_path / "data"),
            "TOKENHUB_CONFIG_FILE": str(config),
            "TOKENHUB_CREDENTIALS_FILE": str(tmp_path / "none"),
            "SIGHUP_TEST_KEY": "sk-x",
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "line 2, column 14: providers[0].type" in result.stderr and "nothing was changed" in result.stderr


async def test_sighup_rate_limits_reach_requests_and_the_admin_api(ready_hub: tuple[Hub, str]) -> None:
    hub, key = ready_hub
    services = hub.services
    await hub.chat_ok(key)
    await hub.chat_ok(key)
    strict = services.settings.model_copy(
        update={
            "rate_limit_rps": 0.01,
            "rate_limit_burst": 1,
            "admin_rate_limit_rps": 0.01,
            "admin_rate_limit_burst": 2,
        }
    )
    await sighup(services, hub.client.server.app[PIPELINES], lambda: strict)
    assert services.settings.rate_limit_burst == 1 and services.settings.listen_addr == strict.listen_addr
    await hub.chat_ok(key)
    await hub.chat_refused(key, 429, "rate_limited")
    await hub.admin("GET", "/models", expect=200)
    await hub.admin("GET", "/models", expect=200)
    await hub.admin("GET", "/models", expect=429)


def test_the_env_file_fills_what_the_environment_does_not_set(tmp_path: Path) -> None:
    env_file = tmp_path / "tokenhub.env"
    env_file.write_text('# comment\n\nexport TOKENHUB_LOG_LEVEL="debug"\nTOKENHUB_RATE_LIMIT_RPS=7\n')
    settings = load_settings({"TOKENHUB_ENV_FILE": str(env_file), "TOKENHUB_RATE_LIMIT_RPS": "9"})
    assert (settings.log_level, settings.rate_limit_rps) == ("debug", 9.0)
    env_file.write_text("TOKENHUB_LOG_LEVEL\n")
    with pytest.raises(SettingsError, match="line 1: expected NAME=VALUE"):
        load_settings({"TOKENHUB_ENV_FILE": str(env_file)})
    with pytest.raises(SettingsError, match="cannot read it"):
        load_settings({"TOKENHUB_ENV_FILE": str(tmp_path / "missing.env")})
    variables = {"TOKENHUB_PROVIDER_OPENAI_MAIN_KEY": "x", "TOKENHUB_LOG_LEVL": "x", "TOKENHUB_CONFIG_FILE": "x"}
    assert unknown_variables(variables) == ["TOKENHUB_LOG_LEVL"]  # export's key variables are not typos
