"""Provider records carry ``cred_store`` (where the key is kept: vault, sealed with the key file, or none) on
create, patch and read; a ``cred_store`` sent on a write is honoured, or refused with a 400 that changes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.types import ProviderInfo
from store import vault_store
from store.config_store import ConfigStore
from store.secret_box import SecretBox
from store.vault import Vault
from store.vault_crypto import KdfParams
from tests.conftest import Hub

PASSWORD = "correct horse battery"
KEY = "sk-test-secret"


async def _unlock(hub: Hub) -> None:
    await hub.admin("POST", "/vault/unlock", {"password": PASSWORD}, expect=200)


async def _record(hub: Hub, provider_id: str = "fake") -> dict[str, Any]:
    items = (await hub.admin("GET", "/providers"))["items"]
    return next(p for p in items if p["id"] == provider_id)


async def _secrets(hub: Hub) -> list[str]:
    return (await hub.admin("GET", "/vault"))["secrets"]


async def _refused(hub: Hub, method: str, path: str, body: dict[str, Any], reason: str) -> None:
    got = await hub.admin(method, path, body, expect=400)
    assert got["error"]["type"] == "invalid_request" and got["error"]["field"] == "cred_store", got
    assert reason in got["error"]["message"], got
    assert KEY not in str(got) and "sk-other" not in str(got)  # a refused key is never echoed


async def test_cred_store_on_create_patch_and_read_follows_the_key(hub: Hub) -> None:
    created = await hub.admin("POST", "/providers", {"id": "bare", "base_url": hub.fake.base_url}, expect=201)
    assert created["cred_store"] == "none" and created["provider"]["cred_store"] == "none"
    assert created["provider"]["has_api_key"] is False and created["provider"]["source"] == "store"

    body = {"id": "fake", "base_url": hub.fake.base_url, "api_key": KEY}
    created = await hub.admin("POST", "/providers", body, expect=201)
    assert created["cred_store"] == "sealed"  # no vault yet: sealed with the data directory's key file
    assert created["provider"] == {**await _record(hub), "cred_store": "sealed", "has_api_key": True}
    assert KEY not in str(created)

    await _unlock(hub)  # setting the vault up moves the sealed key into it
    assert (await _record(hub))["cred_store"] == "vault"
    patched = await hub.admin("PATCH", "/providers/fake", {"enabled": False}, expect=200)
    assert patched["provider"]["cred_store"] == "vault" and patched["provider"]["enabled"] is False
    patched = await hub.admin("PATCH", "/providers/bare", {"api_key": "sk-other"}, expect=200)
    assert patched["provider"]["cred_store"] == "vault"
    assert await _secrets(hub) == ["provider:bare:api_key", "provider:fake:api_key"]


async def test_cred_store_vault_stores_the_key_in_the_vault_and_the_next_request_uses_it(
    ready_hub: tuple[Hub, str],
) -> None:
    hub, key = ready_hub
    await _unlock(hub)
    patched = await hub.admin("PATCH", "/providers/fake", {"cred_store": "vault", "api_key": "sk-rotated"}, expect=200)
    assert patched["provider"]["cred_store"] == "vault"
    assert (await hub.chat(key))[0] == 200
    assert hub.fake.requests[-1]["headers"]["Authorization"] == "Bearer sk-rotated"
    # Asking for where the key already is changes nothing, even while the vault is locked.
    await hub.admin("POST", "/vault/lock", expect=200)
    patched = await hub.admin("PATCH", "/providers/fake", {"cred_store": "vault", "enabled": True}, expect=200)
    assert patched["provider"]["cred_store"] == "vault"


async def test_cred_store_none_removes_the_key_wherever_it_is_kept(ready_hub: tuple[Hub, str]) -> None:
    hub, key = ready_hub
    await _unlock(hub)
    await hub.admin("POST", "/vault/lock", expect=200)  # removing a key needs no password
    patched = await hub.admin("PATCH", "/providers/fake", {"cred_store": "none"}, expect=200)
    assert patched["provider"]["cred_store"] == "none" and patched["provider"]["has_api_key"] is False
    await _unlock(hub)
    assert await _secrets(hub) == []
    assert (await hub.chat(key))[0] == 200  # no key is not a locked key: the provider is routable again
    assert "Authorization" not in hub.fake.requests[-1]["headers"]

    body = {"id": "other", "base_url": hub.fake.base_url, "cred_store": "none"}
    assert (await hub.admin("POST", "/providers", body, expect=201))["cred_store"] == "none"


async def test_cred_store_the_vault_cannot_honour_is_a_400_and_changes_nothing(ready_hub: tuple[Hub, str]) -> None:
    hub, key = ready_hub
    new = {"id": "new", "base_url": hub.fake.base_url, "api_key": "sk-other"}
    await _refused(hub, "POST", "/providers", {**new, "cred_store": "vault"}, "not set up")
    await _refused(hub, "PATCH", "/providers/fake", {"cred_store": "vault", "api_key": "sk-other"}, "not set up")
    await _refused(hub, "PATCH", "/providers/fake", {"cred_store": "none", "api_key": "sk-other"}, "keeps no key")
    await _refused(hub, "PATCH", "/providers/fake", {"cred_store": "sealed", "api_key": ""}, "must not be empty")
    assert [p["id"] for p in (await hub.admin("GET", "/providers"))["items"]] == ["fake"]  # "new" was not made
    assert (await _record(hub))["cred_store"] == "sealed" and (await _record(hub))["enabled"] is True

    await _unlock(hub)
    await _refused(hub, "PATCH", "/providers/fake", {"cred_store": "sealed", "api_key": "sk-other"}, "is set up")
    await _refused(hub, "POST", "/providers", {**new, "api_key": None, "cred_store": "vault"}, "send its api_key")
    await hub.admin("POST", "/vault/lock", expect=200)
    await _refused(hub, "PATCH", "/providers/fake", {"cred_store": "vault", "api_key": "sk-other"}, "is locked")
    await _unlock(hub)
    assert (await hub.chat(key))[0] == 200
    assert hub.fake.requests[-1]["headers"]["Authorization"] == f"Bearer {KEY}"  # the refused key never landed
    audit = (await hub.admin("GET", "/audit?action=patch_provider&status=400"))["logs"]
    assert audit and all("sk-other" not in str(entry) for entry in audit)


async def test_a_disabled_vault_refuses_cred_store_vault(make_hub: Any) -> None:
    hub = await make_hub(vault_enabled=False)
    body = {"id": "fake", "base_url": hub.fake.base_url, "api_key": KEY, "cred_store": "vault"}
    await _refused(hub, "POST", "/providers", body, "TOKENHUB_VAULT_ENABLED=false")
    created = await hub.admin("POST", "/providers", {**body, "cred_store": "sealed"}, expect=201)
    assert created["cred_store"] == "sealed"


def test_removing_a_key_also_clears_a_vault_left_behind_by_disabling_it(tmp_path: Path) -> None:
    """A vault that was used and then disabled (TOKENHUB_VAULT_ENABLED=false) leaves its rows: removing the
    provider's key must remove that copy too, not only the key-file seal."""
    store = ConfigStore(tmp_path / "tokenhub.sqlite", SecretBox.from_key_file(tmp_path / ".secret-key"))
    store.open()
    try:
        vault = Vault(enabled=True, params=KdfParams(time_cost=1, memory_kib=64, parallelism=1), auto_lock_secs=0)
        vault.load(store.db)
        store.vault = vault
        provider = ProviderInfo("p1", "openai", "http://127.0.0.1:1")
        store.upsert_provider(provider, api_key=KEY)
        vault.unlock_blocking(PASSWORD, store)
        assert store.provider_record("p1")["cred_store"] == "vault"  # type: ignore[index]
        store.vault = None  # restarted with the vault disabled
        store.upsert_provider(provider, api_key="")
        assert store.provider_record("p1")["cred_store"] == "none"  # type: ignore[index]
        assert "provider:p1:api_key" not in vault_store.secret_names(store.db)
    finally:
        store.close()


def test_the_admin_accepts_exactly_the_registered_provider_types() -> None:
    from typing import get_args

    from adapters.registry import provider_type_names
    from admin_ui.providers import ProviderType

    assert get_args(ProviderType) == provider_type_names() == ("openai", "anthropic", "vllm")
