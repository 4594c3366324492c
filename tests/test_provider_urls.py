"""Provider base URLs: the optional DNS check on admin writes (TOKENHUB_PROVIDER_DNS_CHECK) and the localhost
rewrite inside containers (TOKENHUB_CONTAINER), its detection and its rewriting cases."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.container import in_container, localhost_rewrite, rewrite_local_url
from pipeline.settings import SettingsError, load_settings
from pipeline.types import ProviderInfo
from tests.conftest import Hub

MISSING = "nonexistent.invalid"  # RFC 2606: never resolves


async def test_dns_check_refuses_an_unresolvable_host_and_changes_nothing(make_hub: Callable[..., Any]) -> None:
    hub: Hub = await make_hub(provider_dns_check="true")
    body = {"id": "p", "base_url": f"https://{MISSING}/v1", "api_key": "sk-test-secret"}
    error = (await hub.admin("POST", "/providers", body, expect=400))["error"]
    assert MISSING in error["message"] and error["request_id"] and "sk-test-secret" not in error["message"]
    assert (await hub.admin("GET", "/providers"))["items"] == []
    await hub.add_provider("p", base_url="http://localhost:9/v1")  # a name that resolves
    await hub.add_provider("q", base_url="http://127.0.0.1:9,http://[::1]:9")  # IP literals are not looked up
    vllm = {"base_url": f"http://127.0.0.1:9,http://{MISSING}:8000"}  # every endpoint of a list is checked
    error = (await hub.admin("PATCH", "/providers/q", vllm, expect=400))["error"]
    assert MISSING in error["message"]
    stored = {p["id"]: p["base_url"] for p in (await hub.admin("GET", "/providers"))["items"]}
    assert stored == {"p": "http://localhost:9", "q": "http://127.0.0.1:9,http://[::1]:9"}


async def test_dns_check_is_off_by_default(hub: Hub) -> None:
    await hub.add_provider("p", base_url=f"https://{MISSING}")
    await hub.admin("PATCH", "/providers/p", {"base_url": f"https://api.{MISSING}"}, expect=200)


@pytest.mark.parametrize(
    ("url", "rewritten"),
    [
        ("http://localhost:11434", "http://host.docker.internal:11434"),
        ("http://127.0.0.1:8000/v1", "http://host.docker.internal:8000/v1"),
        ("https://user:pw@localhost/v1", "https://user:pw@host.docker.internal/v1"),
        ("http://[::1]:9", "http://host.docker.internal:9"),
        ("http://localhost:1,http://gpu-2:8000", "http://host.docker.internal:1,http://gpu-2:8000"),
        ("https://api.openai.com", "https://api.openai.com"),
        ("http://localhost.example.com:1", "http://localhost.example.com:1"),
        ("http://127.0.0.2:1", "http://127.0.0.2:1"),
    ],
)
def test_rewrite_cases(url: str, rewritten: str) -> None:
    assert rewrite_local_url(url) == rewritten


def test_container_detection_and_modes(tmp_path: Path) -> None:
    assert not in_container(tmp_path)
    (tmp_path / "proc" / "1").mkdir(parents=True)
    (tmp_path / "proc" / "1" / "cgroup").write_text("0::/init.scope\n")
    assert not in_container(tmp_path)
    (tmp_path / "proc" / "1" / "cgroup").write_text("0::/kubepods/besteffort/pod1/abc\n")
    assert in_container(tmp_path)
    docker = tmp_path / "docker"
    docker.mkdir()
    (docker / ".dockerenv").touch()
    assert in_container(docker)

    local = ProviderInfo("p", "openai", "http://localhost:1")
    assert localhost_rewrite("false", root=docker, resolves=lambda _: True) is None
    assert localhost_rewrite("auto", root=docker, resolves=lambda _: False) is None  # no host.docker.internal
    assert localhost_rewrite("auto", root=tmp_path / "none", resolves=lambda _: True) is None  # not a container
    rewrite = localhost_rewrite("auto", root=docker, resolves=lambda _: True)
    assert rewrite is not None and rewrite(local).base_url == "http://host.docker.internal:1"
    forced = localhost_rewrite("true", root=tmp_path / "none", resolves=lambda _: False)
    assert forced is not None and forced(local).base_url == "http://host.docker.internal:1"
    assert forced(ProviderInfo("o", "openai", "https://api.openai.com")).base_url == "https://api.openai.com"
    with pytest.raises(SettingsError, match="TOKENHUB_CONTAINER=maybe"):
        load_settings({"TOKENHUB_CONTAINER": "maybe"})


async def test_forced_container_mode_connects_to_host_docker_internal(make_hub: Callable[..., Any]) -> None:
    hub: Hub = await make_hub(container="true")
    await hub.add_provider()  # the fake, at http://127.0.0.1:<port>/v1
    await hub.add_model("gpt-test")
    provider = (await hub.admin("GET", "/providers"))["items"][0]
    port = hub.fake.port
    assert provider["base_url"] == f"http://127.0.0.1:{port}"  # stored as given
    assert provider["connects_to"] == f"http://host.docker.internal:{port}"
    assert hub.services.adapters["fake"].health_endpoint().startswith(f"http://host.docker.internal:{port}/")
    key = await hub.new_key()
    status, _, _ = await hub.chat(key)
    assert status == 502 and hub.fake.requests == []  # sent to the container's host, not to 127.0.0.1


async def test_outside_a_container_localhost_is_kept(hub: Hub) -> None:
    await hub.add_provider()
    await hub.add_model("gpt-test")
    assert "connects_to" not in (await hub.admin("GET", "/providers"))["items"][0]
    await hub.chat_ok(await hub.new_key())
