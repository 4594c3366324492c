"""`tokenhub admin <resource> <verb>` against the real server: each resource's happy path and a refusal (exit 1
with the server's message), usage errors (exit 2), `--json` as the server sent it, and `tokenhub completion`."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline.admin_cli.resources import RESOURCES
from pipeline.cli import main
from tests.conftest import Hub


async def ok(cli: Any, *argv: str) -> str:
    code, out, err = await cli("admin", *argv)
    assert code == 0, err
    return out


async def refused(cli: Any, *argv: str, message: str) -> str:
    code, out, err = await cli("admin", *argv)
    assert code == 1 and out == "", (code, out, err)
    assert message in err and "request id" in err, err
    return err


async def test_providers_models_and_aliases(hub: Hub, cli: Any) -> None:
    provider = {"id": "fake", "base_url": hub.fake.base_url, "api_key": "sk-cli-secret"}
    await ok(cli, "providers", "add", json.dumps(provider))
    table = await ok(cli, "providers", "list")
    assert table.splitlines()[0].split()[:3] == ["ID", "TYPE", "BASE_URL"]
    assert "fake" in table and "sk-cli-secret" not in table
    await refused(cli, "providers", "add", json.dumps({**provider, "id": "bad id!"}), message="id")
    await ok(cli, "providers", "edit", "fake", '{"enabled": true}')
    await refused(cli, "providers", "edit", "nope", '{"enabled": true}', message="nope")

    await ok(cli, "models", "add", '{"id": "m1", "provider_id": "fake", "weight": 4}')
    await ok(cli, "models", "disable", "m1")
    assert (await hub.admin("GET", "/models"))["items"][0]["enabled"] is False
    await ok(cli, "models", "enable", "m1")
    assert "m1" in await ok(cli, "models", "list")
    await refused(cli, "models", "add", '{"id": "m2", "provider_id": "missing"}', message="missing")
    await refused(cli, "models", "edit", "m1", '{"weight": "heavy"}', message="weight")

    await ok(cli, "aliases", "add", '{"name": "fast", "variants": [{"model_id": "m1", "weight": 1}]}')
    assert "fast" in await ok(cli, "aliases", "list")
    assert "m1" in await ok(cli, "aliases", "get", "fast")
    await refused(cli, "aliases", "get", "slow", message="not found")
    await ok(cli, "aliases", "delete", "fast")
    await ok(cli, "models", "delete", "m1")
    await ok(cli, "providers", "delete", "fake")
    assert (await hub.admin("GET", "/providers"))["items"] == []


async def test_keys_tenants_and_pipelines(hub: Hub, cli: Any) -> None:
    await ok(cli, "tenants", "create", '{"id": "acme", "name": "Acme"}')
    assert "acme" in await ok(cli, "tenants", "list")
    await refused(cli, "tenants", "create", '{"id": "acme", "name": "Again"}', message="acme")
    stages = '{"stages": [{"stage": "auth"}, {"stage": "policy", "with": {"mode": "cheap"}}, {"stage": "dispatch"}]}'
    await ok(cli, "pipelines", "set", "acme", stages)
    assert "cheap" in await ok(cli, "pipelines", "get", "acme")
    await refused(cli, "pipelines", "set", "acme", '{"stages": [{"stage": "nope"}]}', message="nope")
    assert "rate_limit" in await ok(cli, "pipelines", "stages")
    await ok(cli, "pipelines", "delete", "acme")

    created = json.loads(await ok(cli, "keys", "create", '{"name": "app", "tenant_id": "acme"}', "--json"))
    assert created["key"].startswith("tokenhub_")
    table = await ok(cli, "keys", "list")
    assert "app" in table and created["key"] not in table
    await ok(cli, "keys", "edit", created["id"], '{"monthly_budget_usd": 5}')
    await ok(cli, "keys", "paid", created["id"])
    rotated = json.loads(await ok(cli, "keys", "rotate", created["id"], "--json"))
    assert rotated["key"] != created["key"]
    await ok(cli, "keys", "revoke", created["id"])
    await refused(cli, "keys", "rotate", "no-such-key", message="not found")


async def test_routing_simulate_and_observability(ready_hub: tuple[Hub, str], cli: Any) -> None:
    hub, key = ready_hub
    await hub.chat_ok(key)
    await hub.services.records.flush()
    await ok(cli, "routing", "set", '{"default_mode": "cheap"}')
    assert "cheap" in await ok(cli, "routing", "get")
    await refused(cli, "routing", "set", '{"default_mode": "fastest"}', message="default_mode")
    simulated = await ok(cli, "routing", "simulate", '{"request": {"messages": [{"role": "user", "content": "hi"}]}}')
    assert "gpt-test" in simulated
    assert "gpt-test" in await ok(cli, "routing", "models")
    await ok(cli, "routing", "health")

    assert "gpt-test" in await ok(cli, "logs", "list", "--limit", "5")
    await refused(cli, "logs", "list", "--limit", "0", message="limit")
    assert "REQUEST_COUNT" in await ok(cli, "stats", "show")
    answer = await ok(cli, "analytics", "query", "SELECT count(*) AS n FROM request_log")
    assert "1" in answer
    await refused(cli, "analytics", "query", "DROP TABLE request_log", message="only SELECT")
    await refused(cli, "tsdb", "query", message="metric")
    await ok(cli, "tsdb", "metrics")
    assert "put_routing" in await ok(cli, "audit", "list", "--limit", "50")
    await ok(cli, "info", "show")


async def test_vault_passwords_come_from_stdin_never_the_command_line(
    hub: Hub, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    password = "correct horse battery staple"
    monkeypatch.setattr(sys, "stdin", io.StringIO(password + "\n"))
    out = await ok(cli, "vault", "unlock")  # the first unlock sets the vault up
    assert password not in out
    await ok(cli, "vault", "lock")
    assert json.loads(await ok(cli, "vault", "status", "--json"))["locked"] is True
    monkeypatch.setattr(sys, "stdin", io.StringIO("not the password at all\n"))
    await refused(cli, "vault", "unlock", message="unlock failed")
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code, _, err = await cli("admin", "vault", "rotate")
    assert code == 2 and "no old password on stdin" in err


async def test_json_output_is_the_servers_body_unchanged(ready_hub: tuple[Hub, str], cli: Any) -> None:
    hub, _ = ready_hub
    out = await ok(cli, "models", "list", "--json")
    resp = await hub.client.get(
        "/admin/v1/models", headers={"Authorization": f"Bearer {hub.services.settings.admin_token}"}
    )
    assert out == (await resp.text()) + "\n"
    assert json.loads(out)["items"][0]["id"] == "gpt-test"


async def test_usage_errors_exit_2(cli: Any) -> None:
    code, _, err = await cli("admin", "models", "add", "{not json")
    assert code == 2 and "BODY is not JSON" in err
    code, _, err = await cli("admin", "models", "add", "@/no/such/file.json")
    assert code == 2 and "cannot read" in err
    code, _, err = await cli("admin", "models", "explode")
    assert code == 2 and "invalid choice" in err
    code, _, err = await cli("admin")
    assert code == 2


async def test_unreachable_server_and_wrong_token_exit_1(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = await cli("admin", "models", "list", "--url", "http://127.0.0.1:9")
    assert code == 1 and "cannot reach TokenHub at http://127.0.0.1:9" in err
    monkeypatch.setenv("TOKENHUB_ADMIN_TOKEN", "y" * 40)
    code, _, err = await cli("admin", "models", "list")
    assert code == 1 and "invalid admin token" in err


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for resource, spec in RESOURCES.items():
        for command in spec.commands:
            with pytest.raises(SystemExit) as done:
                main(["admin", resource, command.verb, "--help"])
            assert done.value.code == 0
            assert command.help.split(":")[0][:20] in capsys.readouterr().out
    for top in ("serve", "admin-token", "backup", "restore", "admin", "completion"):
        with pytest.raises(SystemExit):
            main([top, "--help"])
        assert "usage: tokenhub" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["tokenhub", "ad"], {"admin", "admin-token"}),
        (["tokenhub", "admin", "prov"], {"providers"}),
        (["tokenhub", "admin", "models", "dis"], {"disable"}),
        (["tokenhub", "admin", "logs", "list", "--li"], {"--limit"}),
        (["tokenhub", "serve", "--log-level", "w"], {"warn"}),
        (["tokenhub", "backup", "--inc"], {"--include-secrets"}),
        (["tokenhub", "completion", ""], {"bash", "zsh", "-h", "--help"}),
    ],
)
def test_bash_completion_from_the_parser(words: list[str], expected: set[str], tmp_path: Path) -> None:
    script = tmp_path / "tokenhub.bash"
    script.write_text(
        subprocess.run(
            [sys.executable, "-m", "pipeline", "completion", "bash"], capture_output=True, text=True, check=True
        ).stdout
    )
    quoted = " ".join(f"'{w}'" for w in words)
    probe = f'source {script}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; _tokenhub; echo "${{COMPREPLY[@]}}"'
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
    assert set(out.stdout.split()) == expected, out.stderr


def test_zsh_completion_uses_bashcompinit(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "zsh"]) == 0
    script = capsys.readouterr().out
    assert script.startswith("# tokenhub shell completion (zsh)") and "bashcompinit" in script
    assert "complete -o default -F _tokenhub tokenhub" in script
    if shutil.which("zsh"):
        check = subprocess.run(["zsh", "-n"], input=script, capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
