"""The SQLite config store: migrations, WAL, sealed provider keys, FK cascades, tenants, pipelines, API keys."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pipeline.types import ApiKeyInfo, ModelInfo, ProviderInfo
from store import api_keys
from store.config_store import DEFAULT_TENANT, KEY_PREFIX, ConfigStore, RoutingDefaults, key_digest
from store.migrations import MIGRATIONS
from store.secret_box import SecretBox, SecretBoxError

PROVIDER_KEY = "sk-provider-plaintext-SECRET-7d3f9a"


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(b"k" * 32)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "cfg" / "tokenhub.sqlite"


@pytest.fixture
def store(db_path: Path, box: SecretBox) -> Iterator[ConfigStore]:
    s = ConfigStore(db_path, box)
    s.open()
    yield s
    s.close()


def raw_bytes(db_path: Path) -> bytes:
    """Everything SQLite wrote to disk: the main file plus the WAL (not yet checkpointed)."""
    parts = [db_path, db_path.with_name(db_path.name + "-wal")]
    return b"".join(p.read_bytes() for p in parts if p.exists())


def add_provider(store: ConfigStore, provider_id: str = "p1", api_key: str | None = PROVIDER_KEY) -> None:
    store.upsert_provider(ProviderInfo(provider_id, "openai", "https://api.example.test"), api_key=api_key)


# --- lifecycle and migrations --------------------------------------------------------------------


def test_migrations_applied_once_and_idempotent_on_reopen(db_path: Path, box: SecretBox) -> None:
    first = ConfigStore(db_path, box)
    assert first.open() == [version for version, _name, _sql in MIGRATIONS]
    first.close()
    second = ConfigStore(db_path, box)
    try:
        assert second.open() == []
        versions = [row[0] for row in second.db.execute("SELECT version FROM schema_migrations ORDER BY version")]
        assert versions == [version for version, _name, _sql in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
        tenants = [row["id"] for row in second.db.execute("SELECT id FROM tenants")]
        assert tenants == [DEFAULT_TENANT]  # the seed row was not inserted twice
    finally:
        second.close()


def test_open_creates_the_parent_directory(db_path: Path, store: ConfigStore) -> None:
    assert db_path.exists()


def test_wal_mode_and_foreign_keys_on(store: ConfigStore) -> None:
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_db_raises_when_not_open(box: SecretBox, db_path: Path) -> None:
    s = ConfigStore(db_path, box)
    with pytest.raises(RuntimeError, match="not open"):
        _ = s.db
    s.close()


async def test_call_runs_on_the_store_thread(store: ConfigStore) -> None:
    import threading

    name = await store.call(lambda: threading.current_thread().name)
    assert name.startswith("sqlite")
    assert await store.call(store.get_tenant, DEFAULT_TENANT) is not None


# --- providers and sealed keys -------------------------------------------------------------------


def test_provider_api_key_sealed_at_rest_and_opened_in_snapshot(store: ConfigStore, db_path: Path) -> None:
    add_provider(store)
    sealed = store.db.execute("SELECT api_key_sealed FROM providers WHERE id = 'p1'").fetchone()[0]
    assert sealed.startswith("gcm2:")
    assert PROVIDER_KEY not in sealed
    on_disk = raw_bytes(db_path)
    assert sealed.encode() in on_disk  # the check below looks at the bytes that hold the row
    assert PROVIDER_KEY.encode() not in on_disk
    snapshot = store.load_snapshot()
    assert snapshot.providers["p1"].api_key == PROVIDER_KEY
    assert PROVIDER_KEY not in repr(snapshot.providers["p1"])


def test_upsert_with_api_key_none_keeps_the_stored_key(store: ConfigStore) -> None:
    add_provider(store)
    store.upsert_provider(ProviderInfo("p1", "vllm", "http://new.example.test", enabled=False), api_key=None)
    provider = store.load_snapshot().providers["p1"]
    assert provider.api_key == PROVIDER_KEY
    assert (provider.type, provider.base_url, provider.enabled) == ("vllm", "http://new.example.test", False)
    listed = store.list_providers()
    assert [(p["id"], p["has_api_key"]) for p in listed] == [("p1", True)]


def test_upsert_with_a_new_key_replaces_it_and_empty_clears_it(store: ConfigStore) -> None:
    add_provider(store)
    add_provider(store, api_key="sk-rotated")
    assert store.load_snapshot().providers["p1"].api_key == "sk-rotated"
    add_provider(store, api_key="")
    assert store.load_snapshot().providers["p1"].api_key == ""
    assert store.list_providers()[0]["has_api_key"] is False


def test_a_different_secret_box_cannot_open_the_key(store: ConfigStore, db_path: Path) -> None:
    add_provider(store)
    other = ConfigStore(db_path, SecretBox(secrets.token_bytes(32)))
    other.open()
    try:
        with pytest.raises(SecretBoxError):
            other.load_snapshot()
    finally:
        other.close()


def test_secret_box_round_trip_and_fresh_nonce() -> None:
    box = SecretBox(secrets.token_bytes(32))
    a, b = box.seal("same", context="n"), box.seal("same", context="n")
    assert a != b
    assert box.open(a, context="n") == box.open(b, context="n") == "same"
    assert box.seal("", context="n") == ""
    assert box.open("", context="n") == ""
    with pytest.raises(SecretBoxError):
        box.open("plain:abc", context="n")
    with pytest.raises(SecretBoxError):
        box.open("gcm2:!!not base64!!", context="n")


def test_a_sealed_key_copied_onto_another_provider_does_not_open(store: ConfigStore) -> None:
    """The provider's name is bound as associated data: p1's sealed key pasted into p2's row (by anyone
    with write access to the database) no longer hands p2 p1's key."""
    add_provider(store, "p1")
    add_provider(store, "p2", api_key="sk-p2-key")
    sealed_p1 = store.db.execute("SELECT api_key_sealed FROM providers WHERE id = 'p1'").fetchone()[0]
    with store.db as db:
        db.execute("UPDATE providers SET api_key_sealed = ? WHERE id = 'p2'", (sealed_p1,))
    with pytest.raises(SecretBoxError, match="another provider"):
        store.load_snapshot()


def test_keys_sealed_before_names_were_bound_are_upgraded_once_on_open(
    store: ConfigStore, box: SecretBox, db_path: Path
) -> None:
    add_provider(store, "p1")
    add_provider(store, "p2", api_key="sk-p2-key")
    legacy = {pid: _legacy_seal(key) for pid, key in (("p1", PROVIDER_KEY), ("p2", "sk-p2-key"))}
    with store.db as db:  # as an older release wrote them: no associated data, prefix gcm1
        for pid, sealed in legacy.items():
            db.execute("UPDATE providers SET api_key_sealed = ? WHERE id = ?", (sealed, pid))
    with pytest.raises(SecretBoxError, match="not upgraded"):  # never read without the upgrade
        store.load_snapshot()
    store.close()
    reopened = ConfigStore(db_path, box)
    reopened.open()
    try:
        rows = dict(reopened.db.execute("SELECT id, api_key_sealed FROM providers").fetchall())
        assert all(value.startswith("gcm2:") for value in rows.values())
        providers = reopened.load_snapshot().providers
        assert (providers["p1"].api_key, providers["p2"].api_key) == (PROVIDER_KEY, "sk-p2-key")
    finally:
        reopened.close()


def _legacy_seal(plaintext: str) -> str:
    """The seal of releases before names were bound, under the `box` fixture's key."""
    nonce = secrets.token_bytes(12)
    raw = nonce + AESGCM(b"k" * 32).encrypt(nonce, plaintext.encode(), None)
    return "gcm1:" + base64.b64encode(raw).decode()


def test_secret_box_key_file_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "secret.key"
    sealed = SecretBox.from_key_file(path).seal("v", context="n")
    assert path.stat().st_mode & 0o777 == 0o600
    assert SecretBox.from_key_file(path).open(sealed, context="n") == "v"
    path.write_bytes(b"short")
    with pytest.raises(SecretBoxError, match="32 bytes"):
        SecretBox.from_key_file(path)


def test_get_and_delete_provider(store: ConfigStore) -> None:
    add_provider(store)
    assert store.get_provider("p1") == ProviderInfo("p1", "openai", "https://api.example.test", True)
    assert store.get_provider("nope") is None
    assert store.delete_provider("p1") is True
    assert store.delete_provider("p1") is False


# --- models --------------------------------------------------------------------------------------


def test_models_upsert_and_cascade_on_provider_delete(store: ConfigStore) -> None:
    add_provider(store, "p1")
    add_provider(store, "p2")
    m1 = ModelInfo("m1", "p1", weight=5, max_context_tokens=8000, input_per_1k=0.001, output_per_1k=0.002)
    store.upsert_model(m1)
    store.upsert_model(ModelInfo("m2", "p2"))
    assert store.get_model("m1") == m1
    store.upsert_model(ModelInfo("m1", "p1", weight=9, enabled=False))
    assert store.get_model("m1") == ModelInfo("m1", "p1", weight=9, enabled=False)
    assert store.delete_provider("p1") is True
    assert [m.id for m in store.list_models()] == ["m2"]
    assert store.get_model("m1") is None
    assert set(store.load_snapshot().models) == {"m2"}


def test_model_for_unknown_provider_rejected(store: ConfigStore) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        store.upsert_model(ModelInfo("m", "ghost"))


def test_delete_model(store: ConfigStore) -> None:
    add_provider(store)
    store.upsert_model(ModelInfo("m", "p1"))
    assert store.delete_model("m") is True
    assert store.delete_model("m") is False


def test_routing_defaults(store: ConfigStore) -> None:
    assert store.load_snapshot().routing == RoutingDefaults()
    store.set_routing(RoutingDefaults("cheap", 0.5, 9000))
    store.set_routing(RoutingDefaults("planning", 0.25, 8000))
    assert store.load_snapshot().routing == RoutingDefaults("planning", 0.25, 8000)


# --- tenants and pipelines -----------------------------------------------------------------------


def test_default_tenant_exists(store: ConfigStore) -> None:
    tenant = store.get_tenant(DEFAULT_TENANT)
    assert tenant is not None
    assert tenant.name == "Default tenant"
    assert tenant.created_at > 0
    assert DEFAULT_TENANT in store.load_snapshot().tenants


def test_create_tenant_and_duplicate(store: ConfigStore) -> None:
    created = store.create_tenant("acme", "Acme Inc")
    assert store.get_tenant("acme") == created
    assert [t.id for t in store.list_tenants()] == [DEFAULT_TENANT, "acme"]
    with pytest.raises(sqlite3.IntegrityError):
        store.create_tenant("acme", "Again")
    with pytest.raises(sqlite3.IntegrityError):
        store.create_tenant(DEFAULT_TENANT, "Again")


def test_pipelines_set_get_delete(store: ConfigStore) -> None:
    store.create_tenant("acme", "Acme")
    first = [{"stage": "auth"}, {"stage": "policy", "with": {"mode": "cheap"}}, {"stage": "dispatch"}]
    second = [{"stage": "auth"}, {"stage": "policy"}, {"stage": "dispatch"}]
    store.set_pipeline("acme", first)
    assert store.load_snapshot().pipelines == {"acme": first}
    store.set_pipeline("acme", second)
    assert store.load_snapshot().pipelines == {"acme": second}
    assert store.delete_pipeline("acme") is True
    assert store.delete_pipeline("acme") is False
    assert store.load_snapshot().pipelines == {}


def test_pipeline_for_unknown_tenant_rejected(store: ConfigStore) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        store.set_pipeline("ghost", [{"stage": "dispatch"}])


# --- API keys ------------------------------------------------------------------------------------


def test_create_api_key_format_and_listing(store: ConfigStore) -> None:
    plaintext, record = api_keys.create(store.db, name="ci", tenant_id=DEFAULT_TENANT, scopes=["chat"], expires_at=None)
    assert plaintext.startswith(KEY_PREFIX)
    assert len(plaintext) == 73
    assert re.fullmatch(r"tokenhub_[0-9a-f]{64}", plaintext)
    assert re.fullmatch(r"[0-9a-f]{16}", record["id"])
    assert record["id"] not in plaintext  # the listed id reveals none of the secret
    assert record["key_prefix"] == plaintext[:17]  # 8 hex chars for display; 224 random bits stay secret
    assert record["name"] == "ci"
    assert record["tenant_id"] == DEFAULT_TENANT
    assert record["scopes"] == ["chat"]
    assert record["enabled"] is True
    assert record["expires_at"] is None
    assert api_keys.list_page(store.db, 10, 0) == ([record], 1)


def test_api_key_plaintext_not_stored_but_digest_is(store: ConfigStore, db_path: Path) -> None:
    plaintext, record = api_keys.create(store.db, name="ci", tenant_id=DEFAULT_TENANT, scopes=[], expires_at=None)
    digest = hashlib.sha256(plaintext.encode()).hexdigest()
    assert key_digest(plaintext) == digest
    row = store.db.execute("SELECT * FROM api_keys WHERE id = ?", (record["id"],)).fetchone()
    assert row["key_digest"] == digest
    assert all(plaintext not in str(value) for value in tuple(row))
    on_disk = raw_bytes(db_path)
    assert digest.encode() in on_disk
    assert plaintext.encode() not in on_disk


def test_snapshot_maps_digest_to_key_info(store: ConfigStore) -> None:
    store.create_tenant("acme", "Acme")
    plaintext, record = api_keys.create(
        store.db, name="ops", tenant_id="acme", scopes=["chat", "admin"], expires_at=1_900_000_000.0
    )
    snapshot = store.load_snapshot()
    assert snapshot.keys_by_digest == {
        key_digest(plaintext): ApiKeyInfo(
            id=record["id"],
            name="ops",
            tenant_id="acme",
            scopes=frozenset({"chat", "admin"}),
            enabled=True,
            expires_at=1_900_000_000.0,
        )
    }


def test_api_key_for_unknown_tenant_rejected(store: ConfigStore) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        api_keys.create(store.db, name="x", tenant_id="ghost", scopes=[], expires_at=None)


def test_delete_api_key(store: ConfigStore) -> None:
    plaintext, record = api_keys.create(store.db, name="x", tenant_id=DEFAULT_TENANT, scopes=[], expires_at=None)
    keep, _ = api_keys.create(store.db, name="y", tenant_id=DEFAULT_TENANT, scopes=[], expires_at=None)
    assert store.delete_api_key(record["id"]) is True
    assert store.delete_api_key(record["id"]) is False
    keys = store.load_snapshot().keys_by_digest
    assert key_digest(plaintext) not in keys
    assert key_digest(keep) in keys


def test_api_keys_are_unique(store: ConfigStore) -> None:
    created = [
        api_keys.create(store.db, name=str(i), tenant_id=DEFAULT_TENANT, scopes=[], expires_at=None) for i in range(20)
    ]
    assert len({plaintext for plaintext, _ in created}) == 20
    assert len({record["id"] for _, record in created}) == 20


def test_snapshot_version_increases(store: ConfigStore) -> None:
    versions = [store.load_snapshot().version for _ in range(3)]
    assert versions == sorted(versions)
    assert len(set(versions)) == 3
