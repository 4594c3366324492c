"""Configuration as code over HTTP: TOKENHUB_CONFIG_FILE applied at start and by POST /admin/v1/config/reload,
line-located errors that change nothing, API keys created once, the credentials file, export round trip."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.app import StartupRefused
from pipeline.cli import main
from tests.conftest import Hub

ENV_KEY = "sk-from-the-environment-0123"
PIPELINE = [{"stage": "auth"}, {"stage": "policy", "with": {"mode": "cheap"}}, {"stage": "dispatch"}]


def write_config(path: Path, fake_url: str, **changes: Any) -> Path:
    config: dict[str, Any] = {
        "providers": [{"id": "fake", "type": "openai", "base_url": fake_url, "api_key_env": "CFG_TEST_KEY"}],
        "models": [
            {"id": "cfg-small", "provider_id": "fake", "weight": 5, "input_per_1k": 0.001, "max_context_tokens": 8000}
        ],
        "aliases": [{"name": "cfg-alias", "variants": [{"model_id": "cfg-small", "weight": 1}]}],
        "routing": {"default_mode": "cheap"},
        "tenants": [{"id": "acme", "name": "Acme", "pipeline": PIPELINE}],
        "api_keys": [{"name": "cfg-app", "tenant_id": "acme", "scopes": ["chat"], "monthly_budget_usd": 5}],
    }
    config.update(changes)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def cfg_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CFG_TEST_KEY", ENV_KEY)


async def start(make_hub: Callable[..., Any], config: Path, **settings: Any) -> Hub:
    return await make_hub(config_file=str(config), **settings)


def keys_file(hub: Hub) -> Path:
    return hub.services.settings.config_keys_path


async def test_the_file_is_applied_at_start_and_its_key_serves(
    make_hub: Callable[..., Any], tmp_path: Path, cfg_env: None
) -> None:
    hub = await start(make_hub, write_config(tmp_path / "tokenhub.yaml", "http://x"))
    # the file named a URL nobody serves: point it at the fake through the admin API to chat
    await hub.admin("PATCH", "/providers/fake", {"base_url": hub.fake.base_url}, expect=200)
    path = keys_file(hub)
    assert path.stat().st_mode & 0o777 == 0o600
    key = json.loads(path.read_text())["cfg-app"]
    body = await hub.chat_ok(key, model="cfg-alias")
    assert body["negotiated_model"] == "cfg-small"
    assert hub.services.providers["fake"].api_key == ENV_KEY  # resolved from the environment, sealed
    providers = await hub.admin("GET", "/providers")
    assert providers["items"][0]["has_api_key"] and ENV_KEY not in json.dumps(providers)
    assert (await hub.admin("GET", "/routing-config"))["default_mode"] == "cheap"
    pipeline = await hub.admin("GET", "/tenants/acme/pipeline")
    assert pipeline["custom"] and [s["stage"] for s in pipeline["stages"]] == ["record", "auth", "policy", "dispatch"]
    audit = await hub.admin("GET", "/audit?action=config_apply")
    (row,) = audit["logs"]
    assert (row["actor"], row["method"], row["status"]) == ("config-file", "START", 200)
    assert row["detail"]["counts"]["models"]["created"] == 1 and key not in json.dumps(audit)


async def test_reload_reports_what_changed_and_never_reissues_a_key(
    make_hub: Callable[..., Any], tmp_path: Path, cfg_env: None
) -> None:
    config = write_config(tmp_path / "tokenhub.yaml", "http://127.0.0.1:9")
    hub = await start(make_hub, config)
    first_keys = keys_file(hub).read_text()

    again = await hub.admin("POST", "/config/reload", expect=200)
    assert again["changed"] is False
    assert {kind: c["unchanged"] for kind, c in again["counts"].items()} == {
        "providers": 1,
        "models": 1,
        "aliases": 1,
        "routing": 1,
        "tenants": 1,
        "api_keys": 1,
    }

    more = [
        {"id": "cfg-small", "provider_id": "fake", "weight": 7},
        {"id": "cfg-large", "provider_id": "fake", "weight": 9, "fallbacks": ["cfg-small"]},
    ]
    keys = [{"name": "cfg-app", "tenant_id": "acme", "scopes": ["chat", "plan"], "monthly_budget_usd": 9}]
    write_config(config, "http://127.0.0.1:9", models=more, api_keys=keys)
    changed = await hub.admin("POST", "/config/reload", expect=200)
    assert changed["changed"] is True and changed["api_keys_created"] == []
    assert changed["counts"]["models"] == {"created": 1, "updated": 1, "unchanged": 0, "deleted": 0}
    assert changed["counts"]["api_keys"]["updated"] == 1
    models = {m["id"]: m for m in (await hub.admin("GET", "/models"))["items"]}
    assert models["cfg-small"]["weight"] == 7 and models["cfg-large"]["fallbacks"] == ["cfg-small"]
    (listed,) = (await hub.admin("GET", "/apikeys"))["keys"]
    assert listed["scopes"] == ["chat", "plan"] and listed["monthly_budget_usd"] == 9
    assert keys_file(hub).read_text() == first_keys  # the key was updated, not issued again


async def test_a_bad_file_on_reload_says_which_line_and_changes_nothing(
    make_hub: Callable[..., Any], tmp_path: Path, cfg_env: None
) -> None:
    config = write_config(tmp_path / "tokenhub.yaml", "http://127.0.0.1:9")
    hub = await start(make_hub, config)
    before = await hub.admin("GET", "/models")
    # a valid new model first, then a model of a provider nobody declared: neither is written
    models = [
        {"id": "cfg-small", "provider_id": "fake"},
        {"id": "cfg-new", "provider_id": "fake"},
        {"id": "cfg-orphan", "provider_id": "nobody"},
    ]
    write_config(config, "http://127.0.0.1:9", models=models)
    error = (await hub.admin("POST", "/config/reload", expect=400))["error"]
    assert error["type"] == "invalid_request" and error["request_id"]
    (problem,) = error["problems"]
    assert problem["path"] == "models[2].provider_id" and "'nobody' does not exist" in problem["message"]
    lines = config.read_text().splitlines()
    assert "provider_id: nobody" in lines[problem["line"] - 1]
    assert await hub.admin("GET", "/models") == before

    config.write_text("providers:\n  - id: fake\n    base_url: [unclosed\n")
    error = (await hub.admin("POST", "/config/reload", expect=400))["error"]
    assert error["problems"][0]["line"] == 4 and "malformed YAML" in error["message"]
    assert await hub.admin("GET", "/models") == before
    failures = (await hub.admin("GET", "/audit?action=config_apply&status=400"))["logs"]
    assert len(failures) == 2 and {row["actor"] for row in failures} == {"config-file"}


async def test_a_failure_while_writing_rolls_everything_back(
    make_hub: Callable[..., Any], tmp_path: Path, cfg_env: None
) -> None:
    """The keys file is written inside the transaction, after every row: when it cannot be, no row stays."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    config = write_config(tmp_path / "tokenhub.yaml", "http://127.0.0.1:9")
    with pytest.raises(StartupRefused, match="cannot save the new API keys"):
        await start(make_hub, config, config_keys_file=str(blocker / "keys.json"))
    hub = await make_hub()  # the same data directory, without the file
    assert (await hub.admin("GET", "/providers"))["items"] == []
    assert (await hub.admin("GET", "/models"))["items"] == []
    assert [t["id"] for t in (await hub.admin("GET", "/tenants"))["items"]] == ["default"]


async def test_a_bad_file_at_start_refuses_to_start_with_its_line(make_hub: Callable[..., Any], tmp_path: Path) -> None:
    config = tmp_path / "tokenhub.json"
    config.write_text(
        '{\n  "providers": [\n    {"id": "p", "base_url": "http://h", "api_key": "sk-inline-secret-123"}\n  ]\n}\n'
    )
    with pytest.raises(StartupRefused) as refused:
        await start(make_hub, config)
    message = str(refused.value)
    assert "line 3" in message and "api_key_env" in message and "sk-inline-secret-123" not in message


async def test_a_missing_key_reference_names_the_provider_and_the_reference_only(
    make_hub: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CFG_TEST_KEY", raising=False)
    secret_file = tmp_path / "key.txt"
    secret_file.write_text("sk-in-a-file-456\n")
    providers = [
        {"id": "from-file", "base_url": "http://127.0.0.1:9", "api_key_file": "key.txt"},  # relative to the file
        {"id": "from-env", "base_url": "http://127.0.0.1:9", "api_key_env": "CFG_TEST_KEY"},
        {"id": "unreadable", "base_url": "http://127.0.0.1:9", "api_key_file": str(tmp_path / "missing.txt")},
    ]
    config = write_config(tmp_path / "tokenhub.yaml", "", providers=providers, models=[], aliases=[], api_keys=[])
    with pytest.raises(StartupRefused) as refused:
        await start(make_hub, config)
    message = str(refused.value)
    assert "providers[1].api_key_env: provider 'from-env': environment variable CFG_TEST_KEY is not set" in message
    assert "providers[2].api_key_file: provider 'unreadable': cannot read api_key_file" in message
    assert "sk-in-a-file-456" not in message

    monkeypatch.setenv("CFG_TEST_KEY", ENV_KEY)
    del providers[2]
    write_config(config, "", providers=providers, models=[], aliases=[], api_keys=[])
    hub = await start(make_hub, config)
    assert hub.services.providers["from-file"].api_key == "sk-in-a-file-456"


async def test_reload_without_a_config_file_is_a_conflict(hub: Hub) -> None:
    error = (await hub.admin("POST", "/config/reload", expect=409))["error"]
    assert "TOKENHUB_CONFIG_FILE" in error["message"]


async def test_prune_removes_what_the_file_does_not_name(
    make_hub: Callable[..., Any], tmp_path: Path, cfg_env: None
) -> None:
    config = write_config(tmp_path / "tokenhub.yaml", "http://127.0.0.1:9")
    hub = await start(make_hub, config)
    await hub.add_provider("by-hand")
    await hub.add_model("hand-model", "by-hand")
    unpruned = await hub.admin("POST", "/config/reload", expect=200)
    assert unpruned["counts"]["providers"]["deleted"] == 0  # left alone without prune

    write_config(config, "http://127.0.0.1:9", aliases=[], prune=True)
    pruned = await hub.admin("POST", "/config/reload", expect=200)
    assert pruned["counts"]["providers"]["deleted"] == 1 and pruned["counts"]["models"]["deleted"] == 1
    assert pruned["counts"]["aliases"]["deleted"] == 1
    assert [p["id"] for p in (await hub.admin("GET", "/providers"))["items"]] == ["fake"]
    assert [m["id"] for m in (await hub.admin("GET", "/models"))["items"]] == ["cfg-small"]
    assert len((await hub.admin("GET", "/apikeys"))["keys"]) == 1  # keys are never pruned


async def test_a_locked_vault_keeps_its_keys_and_refuses_a_new_one(
    make_hub: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cfg_env: None
) -> None:
    config = write_config(tmp_path / "tokenhub.yaml", "http://127.0.0.1:9")
    hub = await start(make_hub, config)
    await hub.admin("POST", "/vault/unlock", {"password": "a long vault password"}, expect=200)
    await hub.admin("POST", "/vault/lock", expect=200)
    # the stored key is sealed under the locked vault: left alone (a restart must not fail for it), said so
    kept = await hub.admin("POST", "/config/reload", expect=200)
    assert kept["changed"] is False and "the vault is locked" in kept["warnings"][0]
    # a provider whose key has nowhere to go is refused, as the admin API refuses it; nothing is written
    monkeypatch.setenv("CFG_OTHER_KEY", "sk-a-new-key-789")
    other = {"id": "other", "base_url": "http://127.0.0.1:9", "api_key_env": "CFG_OTHER_KEY"}
    write_config(config, "http://127.0.0.1:9", providers=[*yaml.safe_load(config.read_text())["providers"], other])
    error = (await hub.admin("POST", "/config/reload", expect=400))["error"]
    assert error["field"] == "providers[1].api_key_env" and "vault" in error["message"]
    assert "sk-a-new-key-789" not in json.dumps(error)
    assert [p["id"] for p in (await hub.admin("GET", "/providers"))["items"]] == ["fake"]


async def test_the_credentials_file_must_be_private(make_hub: Callable[..., Any], tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.write_text(
        json.dumps(
            {
                "providers": [{"id": "boot", "type": "openai", "base_url": "http://127.0.0.1:9", "api_key": "sk-boot"}],
                "models": [{"id": "boot-1", "provider_id": "boot", "weight": 8, "enabled": True, "tool_name_map": {}}],
            }
        )
    )
    credentials.chmod(0o644)
    with pytest.raises(StartupRefused, match=f"chmod 600 {credentials}"):
        await make_hub(credentials_file=str(credentials))
    credentials.chmod(0o600)
    hub = await make_hub(credentials_file=str(credentials))
    assert hub.services.providers["boot"].api_key == "sk-boot"
    assert [m["id"] for m in (await hub.admin("GET", "/models"))["items"]] == ["boot-1"]
    (row,) = (await hub.admin("GET", "/audit?action=config_apply"))["logs"]
    assert row["actor"] == "credentials-file" and "sk-boot" not in json.dumps(row)


async def test_export_check_apply_export_round_trips(
    make_hub: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    hub = await make_hub()  # configured through the admin API, the way a running server is
    await hub.add_provider()
    await hub.add_model("m-1", weight=3, max_context_tokens=4000, input_per_1k=0.5)
    await hub.add_model("m-2", kind="embedding", upstream_model="text-embed")
    await hub.admin("POST", "/aliases", {"name": "a-1", "variants": [{"model_id": "m-1", "weight": 2}]}, expect=201)
    await hub.admin("POST", "/tenants", {"id": "t-1", "name": "T one"}, expect=201)
    await hub.admin("PUT", "/tenants/t-1/pipeline", {"stages": PIPELINE}, expect=200)
    await hub.new_key(tenant_id="t-1", scopes=["embeddings"], rate_limit_rpm=30)
    reward = {"quality": 2, "cost": 1, "latency": 1, "latency_scale_ms": 2000}
    await hub.admin("PUT", "/routing-config", {"default_mode": "thompson", "reward": reward}, expect=200)

    exported = tmp_path / "export.yaml"
    assert main(["config", "export", "--data-dir", str(tmp_path / "data"), "--out", str(exported)]) == 0
    text = exported.read_text()
    assert "sk-test-secret" not in text and "api_key_env: TOKENHUB_PROVIDER_FAKE_KEY" in text
    assert exported.stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("TOKENHUB_PROVIDER_FAKE_KEY", "sk-test-secret")
    assert main(["config", "check", str(exported)]) == 0
    assert "OK" in capsys.readouterr().out

    again = await make_hub(data_dir=str(tmp_path / "fresh"), config_file=str(exported))
    assert again.services.providers["fake"].api_key == "sk-test-secret"
    assert (await again.admin("GET", "/routing-config"))["reward"]["latency_scale_ms"] == 2000  # the objective too
    second = tmp_path / "again.yaml"
    assert main(["config", "export", "--data-dir", str(tmp_path / "fresh"), "--out", str(second)]) == 0
    assert second.read_text() == text
    assert main(["config", "export", "--data-dir", str(tmp_path / "fresh"), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == yaml.safe_load(text)


def test_check_reports_every_problem_with_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "providers:\n"
        "  - id: p\n"
        "    base_url: ftp://nope\n"
        "    api_key_env: SOME_KEY\n"
        "models:\n"
        "  - {id: m, provider_id: p, weight: 50}\n"
        "  - {id: m, provider_id: p}\n"
        "colour: blue\n"
    )
    assert main(["config", "check", "--no-secrets", str(config)]) == 1
    err = capsys.readouterr().err
    assert "line 3, column 5: providers[0].base_url" in err
    assert "line 6, column 29: models[0].weight" in err
    assert "line 8, column 1: colour: Extra inputs are not permitted" in err
    config.write_text("models:\n  - {id: m, provider_id: p}\n  - {id: m, provider_id: p}\n")
    assert main(["config", "check", str(config)]) == 1
    err = capsys.readouterr().err
    assert "line 3, column 6: models[1].id: 'm' appears twice in models" in err
