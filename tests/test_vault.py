"""The credential vault: set-up and key migration, round trip, wrong password, tampering, rotation (with a
crash half-way), auto-lock on a controlled clock, and what a locked vault means for requests."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.types import ProviderInfo
from store import vault_store
from store.config_store import ConfigStore
from store.secret_box import SecretBox
from store.vault import PasswordRejected, Vault, VaultDamaged, VaultLockedError, WrongPassword
from store.vault_crypto import KdfParams
from tests.conftest import ADMIN_TOKEN, Hub
from tests.fakes.clock import FakeClock

CHEAP = KdfParams(time_cost=1, memory_kib=64, parallelism=1)
PASSWORD = "correct horse battery"
NEW_PASSWORD = "another long passphrase"
PROVIDER_KEY = "sk-test-secret"


def _store(path: Path) -> ConfigStore:
    store = ConfigStore(path / "tokenhub.sqlite", SecretBox.from_key_file(path / ".secret-key"))
    store.open()
    return store


def _vault(store: ConfigStore, clock: FakeClock | None = None, auto_lock: float = 1800.0) -> Vault:
    vault = Vault(enabled=True, params=CHEAP, auto_lock_secs=auto_lock, clock=clock or FakeClock())
    vault.load(store.db)
    store.vault = vault
    return vault


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ConfigStore]:
    store = _store(tmp_path)
    store.upsert_provider(ProviderInfo("p1", "openai", "http://127.0.0.1:1"), api_key=PROVIDER_KEY)
    store.upsert_provider(ProviderInfo("p2", "openai", "http://127.0.0.1:2"), api_key="sk-second-secret")
    yield store
    store.close()


def _raw(store: ConfigStore) -> bytes:
    return b"".join(p.read_bytes() for p in Path(store._path).parent.glob("tokenhub.sqlite*"))


# --- the store level -------------------------------------------------------------------------------
def test_first_unlock_sets_the_password_and_moves_sealed_keys_into_the_vault(store: ConfigStore) -> None:
    vault = _vault(store)
    assert not vault.initialized and not vault.unlocked
    outcome = vault.unlock_blocking(PASSWORD, store)
    assert outcome.initialized and outcome.migrated_keys == 2
    assert vault.initialized and vault.unlocked
    sealed = store.db.execute("SELECT id, api_key_sealed FROM providers ORDER BY id").fetchall()
    assert [tuple(row) for row in sealed] == [("p1", ""), ("p2", "")]  # no key-file copy is left
    assert vault_store.secret_names(store.db) == ["provider:p1:api_key", "provider:p2:api_key"]
    snapshot = store.load_snapshot()
    assert snapshot.providers["p1"].api_key == PROVIDER_KEY and snapshot.providers["p1"].key_in_vault
    assert PROVIDER_KEY.encode() not in _raw(store)
    listed = {p["id"]: p for p in store.list_providers()}
    assert listed["p1"]["cred_store"] == "vault" and listed["p1"]["has_api_key"]


def test_round_trip_lock_and_unlock_again(store: ConfigStore) -> None:
    vault = _vault(store)
    vault.unlock_blocking(PASSWORD, store)
    store.upsert_provider(ProviderInfo("p3", "openai", "http://127.0.0.1:3"), api_key="sk-third")
    assert vault.lock() and not vault.lock()  # idempotent
    locked = store.load_snapshot().providers
    assert all(p.api_key == "" and p.key_in_vault for p in locked.values())
    with pytest.raises(VaultLockedError):  # nothing is written while locked
        store.upsert_provider(ProviderInfo("p3", "openai", "http://127.0.0.1:3"), api_key="sk-other")
    fresh = _vault(store)  # as after a restart
    assert fresh.initialized and not fresh.unlocked
    assert not fresh.unlock_blocking(PASSWORD, store).initialized
    keys = {pid: p.api_key for pid, p in store.load_snapshot().providers.items()}
    assert keys == {"p1": PROVIDER_KEY, "p2": "sk-second-secret", "p3": "sk-third"}


def test_wrong_or_short_password_leaves_the_vault_locked(store: ConfigStore) -> None:
    _vault(store).unlock_blocking(PASSWORD, store)
    vault = _vault(store)
    with pytest.raises(WrongPassword):
        vault.unlock_blocking("not the password", store)
    with pytest.raises(PasswordRejected):
        vault.unlock_blocking("short", store)
    assert not vault.unlocked
    assert store.load_snapshot().providers["p1"].api_key == ""


@pytest.mark.parametrize(
    "damage",
    [
        "flip_a_byte",
        "truncate",
        "swap_blobs",  # each blob is bound to its name: p1's key cannot be passed off as p2's
        "not_bytes",
    ],
)
def test_tampered_ciphertext_is_a_clear_error_and_no_partial_unlock(store: ConfigStore, damage: str) -> None:
    _vault(store).unlock_blocking(PASSWORD, store)
    db = store.db
    blobs = vault_store.load_secrets(db)
    one, two = blobs["provider:p1:api_key"], blobs["provider:p2:api_key"]
    changed = {
        "flip_a_byte": one[:20] + bytes([one[20] ^ 1]) + one[21:],
        "truncate": one[:10],
        "swap_blobs": two,
        "not_bytes": "text, not a blob",
    }[damage]
    with db:
        db.execute("UPDATE vault_secrets SET ciphertext = ? WHERE name = 'provider:p1:api_key'", (changed,))
    vault = _vault(store)
    with pytest.raises(VaultDamaged) as caught:
        vault.unlock_blocking(PASSWORD, store)
    assert "provider:p1:api_key" in str(caught.value) and PASSWORD not in str(caught.value)
    assert not vault.unlocked  # not even p2, whose blob is intact
    assert store.load_snapshot().providers["p2"].api_key == ""


def test_damaged_header_is_a_clear_error(store: ConfigStore) -> None:
    _vault(store).unlock_blocking(PASSWORD, store)
    with store.db as db:
        db.execute('UPDATE vault SET kdf = \'{"alg": "scrypt"}\'')
    vault = _vault(store)
    with pytest.raises(VaultDamaged, match="parameters"):
        vault.unlock_blocking(PASSWORD, store)
    with store.db as db:  # a changed canary is indistinguishable from a wrong password
        db.execute(
            "UPDATE vault SET kdf = ?, canary = x'00112233445566778899aabbccddeeff0011223344556677'", (CHEAP.to_json(),)
        )
    with pytest.raises(WrongPassword):
        vault.unlock_blocking(PASSWORD, store)
    assert not vault.unlocked


@pytest.mark.parametrize(
    ("t", "m", "p"),
    [
        (1, 2**40, 1),  # a terabyte of memory: unlock would take the server down
        (10**7, 64, 1),  # ten million passes: unlock would never end
        (1, 64, 10**4),  # ten thousand lanes
        (1, 8, 4),  # less memory than Argon2id's 8 KiB per lane
        (True, 64, 1),  # not an integer
    ],
)
def test_unbounded_kdf_parameters_in_the_header_are_refused_before_any_derivation(
    store: ConfigStore, t: object, m: object, p: object
) -> None:
    _vault(store).unlock_blocking(PASSWORD, store)
    kdf = f'{{"alg": "argon2id", "v": 19, "t": {str(t).lower()}, "m": {m}, "p": {p}}}'
    with store.db as db:
        db.execute("UPDATE vault SET kdf = ?", (kdf,))
    vault = _vault(store)
    with pytest.raises(VaultDamaged, match=r"outside|integers"):
        vault.unlock_blocking(PASSWORD, store)
    assert not vault.unlocked


def test_weak_kdf_parameters_follow_owasp_minimums() -> None:
    assert KdfParams().weak is False  # the defaults: 3 passes, 64 MiB
    assert KdfParams(time_cost=2, memory_kib=19456, parallelism=1).weak is False
    assert KdfParams(time_cost=1, memory_kib=47104, parallelism=1).weak is False
    assert KdfParams(time_cost=1, memory_kib=19456, parallelism=1).weak is True
    assert CHEAP.weak is True


async def test_a_weak_production_kdf_stops_start_up_unless_allowed_for_tests(make_hub: Any, tmp_path: Path) -> None:
    # A start-up that fails leaves its stores to the process's exit: each attempt gets its own data dir.
    with pytest.raises(RuntimeError, match="OWASP") as caught:
        await make_hub(vault_kdf_allow_weak=False, data_dir=tmp_path / "weak")
    assert "TOKENHUB_VAULT_KDF_ALLOW_WEAK" in str(caught.value)
    with pytest.raises(RuntimeError, match="memory 64 KiB is outside 128"):  # 16 lanes need 128 KiB
        await make_hub(vault_kdf_parallelism=16, data_dir=tmp_path / "lanes")
    # no vault: no password to protect
    hub = await make_hub(vault_kdf_allow_weak=False, vault_enabled=False, data_dir=tmp_path / "off")
    assert hub.services.vault.enabled is False
    strong = await make_hub(
        vault_kdf_allow_weak=False,
        vault_kdf_time_cost=2,
        vault_kdf_memory_kib=19456,
        vault_kdf_parallelism=1,
        data_dir=tmp_path / "strong",
    )
    assert strong.services.vault.params == KdfParams(2, 19456, 1)


async def test_rotation_reseals_everything_under_the_new_password(store: ConfigStore) -> None:
    vault = _vault(store)
    await vault.unlock(PASSWORD, store)
    before = vault_store.load_secrets(store.db)
    salt_before = vault_store.load_header(store.db).salt
    with pytest.raises(WrongPassword):
        await vault.rotate("not the old one", NEW_PASSWORD, store)
    assert vault_store.load_secrets(store.db) == before  # a refused rotation changes nothing
    assert await vault.rotate(PASSWORD, NEW_PASSWORD, store) == 2
    after = vault_store.load_secrets(store.db)
    assert vault_store.load_header(store.db).salt != salt_before
    assert all(after[name] != before[name] for name in before)  # new key, new nonces
    assert store.load_snapshot().providers["p1"].api_key == PROVIDER_KEY  # the live vault uses the new key
    fresh = _vault(store)
    with pytest.raises(WrongPassword):
        fresh.unlock_blocking(PASSWORD, store)
    fresh.unlock_blocking(NEW_PASSWORD, store)
    assert store.load_snapshot().providers["p2"].api_key == "sk-second-secret"


async def test_a_crash_half_way_through_rotation_leaves_the_old_vault_usable(
    store: ConfigStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault = _vault(store)
    await vault.unlock(PASSWORD, store)
    before = vault_store.load_secrets(store.db)
    header_before = vault_store.load_header(store.db)
    written: list[str] = []
    real_write = vault_store.write_secret

    def crash_on_second(db: sqlite3.Connection, name: str, blob: bytes) -> None:
        if written:
            raise OSError("simulated crash: disk gone")
        written.append(name)
        real_write(db, name, blob)  # the header and one secret are already rewritten when it dies

    monkeypatch.setattr(vault_store, "write_secret", crash_on_second)
    with pytest.raises(OSError, match="simulated crash"):
        await vault.rotate(PASSWORD, NEW_PASSWORD, store)
    monkeypatch.undo()
    assert written  # it did get half-way
    assert vault_store.load_secrets(store.db) == before and vault_store.load_header(store.db) == header_before
    assert vault.unlocked and store.load_snapshot().providers["p1"].api_key == PROVIDER_KEY  # still the old key
    fresh = _vault(store)  # and after a restart the old password opens it
    with pytest.raises(WrongPassword):
        fresh.unlock_blocking(NEW_PASSWORD, store)
    fresh.unlock_blocking(PASSWORD, store)
    assert store.load_snapshot().providers["p2"].api_key == "sk-second-secret"


def test_auto_lock_after_idle_time_on_a_controlled_clock(store: ConfigStore) -> None:
    clock = FakeClock(100.0)
    vault = _vault(store, clock, auto_lock=1800)
    vault.unlock_blocking(PASSWORD, store)
    clock.advance(1799)
    assert not vault.idle_expired()
    vault.touch()  # use postpones it
    clock.advance(1799)
    assert not vault.idle_expired()
    clock.advance(1)
    assert vault.idle_expired() and vault.status()["auto_lock_in_secs"] == 0
    never = _vault(store, clock, auto_lock=0)
    never.unlock_blocking(PASSWORD, store)
    clock.advance(10**9)
    assert not never.idle_expired()


# --- over HTTP -------------------------------------------------------------------------------------
async def _unlock(hub: Hub, password: str = PASSWORD, *, expect: int = 200) -> Any:
    return await hub.admin("POST", "/vault/unlock", {"password": password}, expect=expect)


async def test_vault_setup_over_http_then_lock_gives_503_vault_locked_in_every_shape(
    ready_hub: tuple[Hub, str],
) -> None:
    hub, key = ready_hub
    status = await hub.admin("GET", "/vault", expect=200)
    assert status["initialized"] is False and status["locked"] is True
    body = await _unlock(hub)
    assert body["initialized"] is True and body["migrated_provider_keys"] == 1
    await hub.chat_ok(key)
    assert hub.fake.requests[-1]["headers"]["Authorization"] == f"Bearer {PROVIDER_KEY}"  # from the vault

    assert (await hub.admin("POST", "/vault/lock", expect=200))["already_locked"] is False
    assert (await hub.admin("POST", "/vault/lock", expect=200))["already_locked"] is True
    served = len(hub.fake.requests)
    status, body, _ = await hub.chat(key)
    assert status == 503 and body["error"]["type"] == "vault_locked"
    assert body["error"]["exclusions"] == {"gpt-test": "vault_locked"}
    headers = {"Authorization": f"Bearer {key}"}
    messages = [{"role": "user", "content": "hi"}]
    resp = await hub.client.post("/v1/chat/completions", json={"model": "auto", "messages": messages}, headers=headers)
    assert resp.status == 503 and (await resp.json())["error"]["code"] == "vault_locked"
    resp = await hub.client.post(
        "/v1/messages", json={"model": "auto", "max_tokens": 10, "messages": messages}, headers=headers
    )
    assert resp.status == 503 and "vault is locked" in (await resp.json())["error"]["message"]
    assert len(hub.fake.requests) == served  # nothing reached the provider
    health = await (await hub.client.get("/healthz")).json()
    assert "vault is locked" in health["reason"] and "/vault/unlock" in health["fix"]
    assert (await hub.admin("GET", "/vault"))["locked_providers"] == ["fake"]
    providers = (await hub.admin("GET", "/providers"))["items"]
    assert providers[0]["cred_store"] == "vault"

    # A provider key cannot be stored while locked (nothing is written); other changes still can.
    body = await hub.admin("PATCH", "/providers/fake", {"api_key": "sk-new"}, expect=503)
    assert body["error"]["type"] == "vault_locked"
    await hub.admin("PATCH", "/providers/fake", {"enabled": True}, expect=200)

    await _unlock(hub)  # unlocking rebuilds the adapters
    await hub.chat_ok(key)


async def test_environment_providers_keep_working_while_the_vault_is_locked(make_hub: Any, fake: Any) -> None:
    hub = await make_hub(openai_api_key="sk-env-secret", openai_base_url=fake.base_url)
    await hub.add_provider("vaulted")
    await hub.add_model("env-model", provider_id="openai", weight=1)
    await hub.add_model("vault-model", provider_id="vaulted", weight=9)
    key = await hub.new_key()
    await _unlock(hub)
    status, body, _ = await hub.chat(key, model_hint="vault-model")
    assert status == 200 and body["negotiated_model"] == "vault-model"
    await hub.admin("POST", "/vault/lock", expect=200)
    status, body, _ = await hub.chat(key, model_hint="vault-model")
    assert status == 200 and body["negotiated_model"] == "env-model"
    assert "vault-model (vault_locked)" in body["routing_reason"]
    assert hub.fake.requests[-1]["headers"]["Authorization"] == "Bearer sk-env-secret"


async def test_wrong_password_is_401_and_attempts_are_rate_limited(ready_hub: tuple[Hub, str]) -> None:
    hub, key = ready_hub
    await _unlock(hub)
    await hub.admin("POST", "/vault/lock", expect=200)
    body = await _unlock(hub, "wrong password!", expect=401)
    assert body["error"]["type"] == "unlock_failed"
    assert (await hub.chat(key))[0] == 503  # still locked
    assert (await hub.admin("POST", "/vault/unlock", {"password": "short"}, expect=400))["error"]["type"] == (
        "invalid_password"
    )
    for _ in range(2):  # 5 per minute per IP: the fourth and fifth attempt still pass
        await _unlock(hub, "wrong password!", expect=401)
    resp = await hub.client.post(
        "/admin/v1/vault/unlock",
        json={"password": PASSWORD},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
    assert (await resp.json())["error"]["type"] == "rate_limited"
    assert not hub.services.vault.unlocked


async def test_rotation_over_http(make_hub: Any) -> None:
    hub = await make_hub(vault_unlock_attempts_per_min=100)
    await hub.add_provider()
    await hub.add_model("gpt-test")
    key = await hub.new_key()
    body = await hub.admin(
        "POST", "/vault/rotate", {"old_password": PASSWORD, "new_password": NEW_PASSWORD}, expect=409
    )
    assert body["error"]["type"] == "vault_locked"  # nothing to rotate before set-up
    await _unlock(hub)
    body = await hub.admin(
        "POST", "/vault/rotate", {"old_password": "nope nope nope", "new_password": NEW_PASSWORD}, expect=401
    )
    assert body["error"]["type"] == "unlock_failed"
    body = await hub.admin(
        "POST", "/vault/rotate", {"old_password": PASSWORD, "new_password": NEW_PASSWORD}, expect=200
    )
    assert body["resealed_secrets"] == 1
    await hub.chat_ok(key)
    await hub.admin("POST", "/vault/lock", expect=200)
    await _unlock(hub, PASSWORD, expect=401)
    await _unlock(hub, NEW_PASSWORD)
    await hub.chat_ok(key)


async def test_auto_lock_drops_vault_keys_and_use_postpones_it(ready_hub: tuple[Hub, str]) -> None:
    hub, key = ready_hub
    clock = FakeClock(5000.0)
    hub.services.vault.clock = clock
    await _unlock(hub)
    clock.advance(1700)
    assert (await hub.chat(key))[0] == 200  # served with the vault's key: counts as use
    clock.advance(1700)
    await hub.services.housekeeping.tick()
    assert hub.services.vault.unlocked
    clock.advance(101)
    await hub.services.housekeeping.tick()
    assert not hub.services.vault.unlocked
    status, body, _ = await hub.chat(key)
    assert status == 503 and body["error"]["type"] == "vault_locked"


async def test_headless_password_unlocks_at_start_and_disables_auto_lock(make_hub: Any, tmp_path: Path) -> None:
    hub = await make_hub(vault_password=PASSWORD)
    vault = hub.services.vault
    assert vault.initialized and vault.unlocked and vault.auto_lock_secs == 0
    await hub.add_provider()
    assert (await hub.admin("GET", "/providers"))["items"][0]["cred_store"] == "vault"
    await hub.client.close()
    again = await make_hub(vault_password=PASSWORD)
    assert again.services.snapshot.providers["fake"].api_key == PROVIDER_KEY
    await again.client.close()
    with pytest.raises(RuntimeError) as caught:
        await make_hub(vault_password="a wrong password")
    assert "unlock_failed" in str(caught.value) and "wrong password" not in str(caught.value)


async def test_disabled_vault_keeps_the_key_file_seal(make_hub: Any) -> None:
    hub = await make_hub(vault_enabled=False)
    body = await hub.admin("POST", "/vault/unlock", {"password": PASSWORD}, expect=400)
    assert body["error"]["type"] == "vault_disabled"
    await hub.add_provider()
    assert (await hub.admin("GET", "/providers"))["items"][0]["cred_store"] == "sealed"
    assert (await hub.admin("GET", "/vault"))["enabled"] is False
