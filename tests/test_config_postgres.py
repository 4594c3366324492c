"""The configuration store on PostgreSQL (TOKENHUB_DATABASE_URL), over a real server and a fresh database per
test: a representative part of the admin API suites run again on it, then what only PostgreSQL does
(migrations under an advisory lock, change notifications, constraint errors as 409, backups refused)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pipeline.errors import ConfigStoreUnavailable
from pipeline.types import ModelInfo, ProviderInfo
from store import api_keys, audit
from store.config_store import ConfigStore
from store.migrations import MIGRATIONS
from store.pg_connection import CHANNEL
from store.secret_box import SecretBox
from tests.conftest import Hub
from tests.support.backing import fresh_postgres
from tests.support.tcp_proxy import tcp_proxy

# The same tests, collected here a second time and run on PostgreSQL by the `config_backend` override below.
from tests.test_admin_api import (  # noqa: F401
    test_deleting_a_provider_removes_its_models,
    test_disabled_provider_is_not_routed,
    test_model_crud_validation_and_live_effect,
    test_provider_crud_and_base_url_normalisation,
    test_routing_defaults_apply_to_the_next_request,
)
from tests.test_admin_providers import test_cred_store_vault_stores_the_key_in_the_vault_and_the_next_request_uses_it  # noqa: F401
from tests.test_aliases import test_alias_crud, test_round_robin_over_http_follows_the_weights  # noqa: F401
from tests.test_apikeys import (  # noqa: F401
    test_monthly_budget_is_enforced_and_can_be_reset,
    test_per_key_requests_per_minute,
)
from tests.test_key_rotation import test_job_disables_keys_past_their_period_with_event_and_audit_row  # noqa: F401
from tests.test_tenants import (  # noqa: F401
    test_configuration_listings_page_on_the_server,
    test_tenant_pipeline_differs_and_hot_reloads,
    test_tenant_pipeline_survives_restart,
)
from tests.test_vault import (  # noqa: F401
    test_rotation_over_http,
    test_vault_setup_over_http_then_lock_gives_503_vault_locked_in_every_shape,
)


@pytest.fixture
def config_backend() -> str:
    return "postgres"


def _store(url: str, tmp_path: Path) -> ConfigStore:
    return ConfigStore(url, SecretBox.from_key_file(tmp_path / ".secret-key"))


def test_replicas_starting_together_migrate_once(tmp_path: Path) -> None:
    with fresh_postgres() as url:
        stores = [_store(url, tmp_path) for _ in range(3)]
        applied: list[list[int]] = []
        barrier = threading.Barrier(len(stores))

        def open_store(store: ConfigStore) -> None:
            barrier.wait()
            applied.append(store.open())

        threads = [threading.Thread(target=open_store, args=(store,)) for store in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        try:
            everything = [version for version, _name, _sql in MIGRATIONS]
            assert sorted(applied, key=len) == [[], [], everything]  # one replica migrated, two found it done
            with psycopg.connect(url) as conn:
                rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
            assert [row[0] for row in rows] == everything
            assert stores[0].load_snapshot().tenants["default"].name == "Default tenant"
        finally:
            for store in stores:
                store.close()


def test_configuration_writes_notify_in_their_transaction_and_nothing_else_does(tmp_path: Path) -> None:
    with fresh_postgres() as url:
        store = _store(url, tmp_path)
        store.open()
        try:
            with psycopg.connect(url, autocommit=True) as listener, psycopg.connect(url, autocommit=True) as marker:
                listener.execute(f"LISTEN {CHANNEL}")
                listener.execute("LISTEN test_marker")
                marks = 0

                def received() -> list[str]:
                    """What the store notified since the last call: everything before a marker notified now,
                    as notifications arrive in commit order (no wait that a slow machine could outlast)."""
                    nonlocal marks
                    marks += 1
                    marker.execute("SELECT pg_notify('test_marker', %s)", (str(marks),))
                    got = []
                    for n in listener.notifies(timeout=15):
                        if n.channel == "test_marker":
                            assert n.payload == str(marks)
                            return got
                        got.append(n.payload)
                    raise AssertionError("the marker notification never came")

                store.upsert_provider(ProviderInfo("p", "openai", "http://127.0.0.1:1", True), api_key="sk-x")
                assert received() == [store.origin]  # one notification for the whole transaction
                store.atomically(lambda: [store.upsert_model(ModelInfo(id=f"m{i}", provider_id="p")) for i in range(3)])
                assert received() == [store.origin]
                key = api_keys.create(store.db, name="k", tenant_id="default", scopes=["chat"], expires_at=None)[1]
                assert received() == [store.origin]
                # not configuration: the audit trail and last-used times change nothing a replica serves
                audit.append(store.db, audit.AuditEntry(1.0, "admin", "", "POST", "/x", "a", "t", "", 200, ""))
                api_keys.record_last_used(store.db, {key["id"]: 5.0})
                assert received() == []
                assert api_keys.get(store.db, key["id"])["last_used_at"] == 5.0
                # a failed transaction rolls back and notifies nobody
                with pytest.raises(psycopg.IntegrityError):
                    store.create_tenant("default", "again")
                assert received() == []
                # a write outside any transaction still notifies
                assert store.delete_model("m0")
                assert received() == [store.origin]
        finally:
            store.close()


def test_snapshot_types_match_sqlite(tmp_path: Path) -> None:
    """Timestamps keep their sub-second part (DOUBLE PRECISION, not PostgreSQL's 32-bit REAL); text sorts
    by bytes, as SQLite sorts it."""
    with fresh_postgres() as url:
        store = _store(url, tmp_path)
        store.open()
        try:
            for provider_id in ("b", "B", "a-b", "ab", "a_b"):
                store.upsert_provider(ProviderInfo(provider_id, "openai", "http://127.0.0.1:1", True), api_key=None)
            assert [p["id"] for p in store.list_providers()] == sorted(["b", "B", "a-b", "ab", "a_b"])
            tenant = store.create_tenant("t1", "T")
            assert store.get_tenant("t1") == tenant  # created_at round-trips exactly
        finally:
            store.close()


async def test_constraint_errors_are_409_and_backup_is_refused(hub: Hub) -> None:
    await hub.admin("POST", "/tenants", {"id": "acme", "name": "Acme"}, expect=201)
    error = (await hub.admin("POST", "/tenants", {"id": "acme", "name": "Again"}, expect=409))["error"]
    assert error["type"] == "conflict"
    refused = (await hub.admin("POST", "/backup", expect=409))["error"]
    assert "pg_dump" in refused["message"]


def test_backup_and_restore_commands_refuse_on_postgres(tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
    from pipeline.cli import main

    monkeypatch.setenv("TOKENHUB_DATABASE_URL", "postgresql://tokenhub:secret-pw@127.0.0.1:1/none")
    assert main(["backup", "--data-dir", str(tmp_path), "--to", str(tmp_path / "b")]) == 2
    assert main(["restore", str(tmp_path / "b"), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("pg_dump") == 2 and "secret-pw" not in err


def test_a_lost_connection_is_503_while_down_and_replaced_once_the_server_is_back(tmp_path: Path) -> None:
    with fresh_postgres() as url, tcp_proxy() as proxy:
        store = _store(url.replace(":5432/", f":{proxy.port}/"), tmp_path)
        store.open()
        try:
            store.upsert_provider(ProviderInfo("p", "openai", "http://127.0.0.1:1", True), api_key=None)
            proxy.cut()
            with pytest.raises(ConfigStoreUnavailable):
                store.list_models()
            with pytest.raises(ConfigStoreUnavailable):
                store.upsert_model(ModelInfo(id="m", provider_id="p"))
            proxy.restore()
            store.upsert_model(ModelInfo(id="m", provider_id="p"))  # reconnects: nothing to retry by hand
            # the connection dies while idle: the next read or transaction notices and replaces it, once
            proxy.cut()
            proxy.restore()
            assert [m.id for m in store.list_models()] == ["m"]
            proxy.cut()
            proxy.restore()
            assert store.delete_model("m")
        finally:
            store.close()


def test_a_database_url_that_is_not_postgres_is_refused_without_echoing_it() -> None:
    from pipeline.settings import SettingsError, load_settings

    with pytest.raises(SettingsError) as refused:
        load_settings({"TOKENHUB_DATABASE_URL": "mysql://root:hunter2-pw@db/tokenhub"})
    assert "TOKENHUB_DATABASE_URL=<hidden>" in str(refused.value) and "hunter2" not in str(refused.value)
    assert load_settings({"TOKENHUB_DATABASE_URL": "postgres://u@h/d"}).database_url == "postgres://u@h/d"
