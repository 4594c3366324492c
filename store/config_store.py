"""The configuration store: providers, models, routing defaults, tenants, pipelines, API keys. SQLite (WAL) by
default; PostgreSQL when given a ``postgresql://`` URL (store/pg_connection.py: the same SQL, the same migrations).

All store work runs on one dedicated thread (``call``), so the event loop never blocks on disk or network. The
request path never queries it: it reads the immutable ``ConfigSnapshot`` built by ``load_snapshot``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import json
import sqlite3
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from pipeline.objective import RewardConfig
from pipeline.types import ALIAS_STICKY_BY, AliasInfo, AliasVariant, ApiKeyInfo, ModelInfo, ProviderInfo
from store import vault_store
from store.migrations import migrate, migrate_postgres
from store.secret_box import SecretBox, upgrade_legacy_seals
from store.vault import Vault, provider_vault_keys, store_provider_key
from store.vault_store import provider_key_name

__all__ = [
    "DEFAULT_TENANT",
    "KEY_PREFIX",
    "ConfigSnapshot",
    "ConfigStore",
    "RoutingDefaults",
    "TenantRecord",
    "key_digest",
]

T = TypeVar("T")
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
KEY_PREFIX = "tokenhub_"
DEFAULT_TENANT = "default"


def key_digest(plaintext: str) -> str:
    """API keys carry 256 random bits, so a plain SHA-256 digest is as strong as a slow hash and costs
    microseconds per request instead of milliseconds."""
    return _sha256(plaintext.encode()).hexdigest()


def _builtin_sha256() -> Callable[[bytes], Any]:
    """CPython's own SHA-256 where it has one: the same digest as OpenSSL's (hashlib's), without OpenSSL's
    dispatch, which costs ~13 µs instead of ~3 when a request finds it cold (docs/benchmark.md)."""
    for module in ("_sha2", "_sha256"):  # Python 3.12+, 3.11
        with contextlib.suppress(ImportError):
            return cast(Callable[[bytes], Any], importlib.import_module(module).sha256)
    return hashlib.sha256


_sha256 = _builtin_sha256()


@dataclass(frozen=True, slots=True)
class RoutingDefaults:
    mode: str = ""
    max_budget_usd: float = 0.0
    max_latency_ms: int = 0
    reward: RewardConfig | None = None  # None: the default objective


@dataclass(frozen=True, slots=True)
class TenantRecord:
    id: str
    name: str
    created_at: float


@dataclass(frozen=True, slots=True)
class ConfigSnapshot:
    """Everything the request path needs from configuration, immutable; replaced whole on each admin write."""

    version: int
    providers: dict[str, ProviderInfo]
    models: dict[str, ModelInfo]
    routing: RoutingDefaults
    tenants: dict[str, TenantRecord]
    pipelines: dict[str, list[dict[str, Any]]]  # tenant id -> stored pipeline definition
    keys_by_digest: dict[str, ApiKeyInfo]
    aliases: dict[str, AliasInfo] = field(default_factory=dict)  # alias name -> alias (enabled or not)


class ConfigStore:
    def __init__(self, path: Path | str, secret_box: SecretBox) -> None:
        """``path``: the SQLite file (or ":memory:"), or a ``postgresql://`` URL."""
        self._path = str(path)
        self._box = secret_box
        self._conn: sqlite3.Connection | None = None
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="postgres" if self.database_url else "sqlite"
        )
        self.origin = uuid.uuid4().hex  # this process's store: its own change notifications are not news
        self._joined: _Joined | None = None  # set while `atomically` runs
        self._version = 0
        self.vault: Vault | None = None  # attached at start-up when the vault is enabled

    @property
    def secret_box(self) -> SecretBox:
        return self._box

    @property
    def database_url(self) -> str:
        """The PostgreSQL URL ('' on SQLite). Holds a password maybe: never log it."""
        return self._path if self._path.startswith(POSTGRES_SCHEMES) else ""

    @property
    def sqlite_file(self) -> str:
        """The SQLite file other processes may share ('' on PostgreSQL and for ":memory:")."""
        return "" if self.database_url or self._path == ":memory:" else self._path

    # --- lifecycle -------------------------------------------------------------------------------
    def open(self) -> list[int]:
        if self.database_url:
            return self._open_postgres()
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, check_same_thread=False, timeout=5.0)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: each commit syncs the WAL, so an admin write that returned 200 survives a power loss too,
        # not only a process kill (NORMAL would do for that); admin writes are rare, the sync is cheap.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        self._conn = conn
        applied = migrate(conn)
        upgrade_legacy_seals(conn, self._box)
        return applied

    # The driver's errors, whichever database the store is on; psycopg's only on PostgreSQL, so the SQLite default
    # never loads the PostgreSQL driver. Read in `except` clauses, i.e. only when something was raised.
    @property
    def errors(self) -> tuple[type[Exception], ...]:
        """Any failure of the database."""
        if not self.database_url:
            return (sqlite3.Error,)
        import psycopg

        return (sqlite3.Error, psycopg.Error)

    @property
    def integrity_errors(self) -> tuple[type[Exception], ...]:
        """A write refused by a constraint (a duplicate id, an unknown reference)."""
        if not self.database_url:
            return (sqlite3.IntegrityError,)
        import psycopg

        return (sqlite3.IntegrityError, psycopg.IntegrityError)

    def _open_postgres(self) -> list[int]:
        from store.pg_connection import PgConnection

        conn = PgConnection(self.database_url, origin=self.origin)
        applied = migrate_postgres(conn.connect())  # connect() raises ConfigStoreUnavailable: start-up stops
        self._conn = cast(sqlite3.Connection, conn)  # the same surface the store's functions use
        upgrade_legacy_seals(self._conn, self._box)
        return applied

    def data_version(self) -> int:
        """SQLite: a number that changes when another connection (another process) commits to the file."""
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    def close(self) -> None:
        self._executor.shutdown(wait=True)  # let queued work finish before the connection goes
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store method on the store's own thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    @property
    def db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("config store is not open")
        return cast(sqlite3.Connection, self._joined) if self._joined is not None else self._conn

    def atomically(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (store writes, on the store's thread) as ONE transaction: the ``with db:`` blocks of the
        methods it calls join it instead of committing each, and an exception rolls all of it back."""
        conn = self.db
        if self._joined is not None:
            raise RuntimeError("atomically() does not nest")
        self._joined = _Joined(conn)
        try:
            with conn:
                return fn()
        finally:
            self._joined = None

    # --- snapshot --------------------------------------------------------------------------------
    def load_snapshot(self) -> ConfigSnapshot:
        # On PostgreSQL every read below sees one moment of the database, whatever other replicas commit.
        reads = self.db.consistent_reads() if self.database_url else contextlib.nullcontext()  # type: ignore[attr-defined]
        with reads:
            return self._load_snapshot()

    def _load_snapshot(self) -> ConfigSnapshot:
        db = self.db
        in_vault = provider_vault_keys(db, self.vault)  # provider id -> key ("" while the vault is locked)
        providers = {
            row["id"]: ProviderInfo(
                id=row["id"],
                type=row["type"],
                base_url=row["base_url"],
                enabled=bool(row["enabled"]),
                api_key=in_vault.get(row["id"])
                or self._box.open(row["api_key_sealed"], context=provider_key_name(row["id"])),
                key_in_vault=row["id"] in in_vault,
                autoload_models=bool(row["autoload_models"]),
            )
            for row in db.execute("SELECT * FROM providers")
        }
        models = {row["id"]: _model(row) for row in db.execute("SELECT * FROM models")}
        routing_row = db.execute("SELECT * FROM routing_config WHERE id = 1").fetchone()
        routing = (
            RoutingDefaults(
                routing_row["default_mode"],
                routing_row["default_max_budget_usd"],
                routing_row["default_max_latency_ms"],
                _reward(routing_row["reward"]),
            )
            if routing_row
            else RoutingDefaults()
        )
        tenants = {row["id"]: _tenant(row) for row in db.execute("SELECT * FROM tenants")}
        pipelines = {
            row["tenant_id"]: json.loads(row["definition"])
            for row in db.execute("SELECT tenant_id, definition FROM tenant_pipelines")
        }
        keys = {row["key_digest"]: _api_key(row) for row in db.execute("SELECT * FROM api_keys")}
        aliases = {a.name: a for a in self.list_aliases()}
        self._version += 1
        return ConfigSnapshot(self._version, providers, models, routing, tenants, pipelines, keys, aliases)

    # --- providers -------------------------------------------------------------------------------
    @property
    def key_home(self) -> str:
        """Where a provider key written now is kept: the vault once it is attached (enabled) and set up,
        else sealed with the key file."""
        return "vault" if self.vault is not None and self.vault.initialized else "sealed"

    def upsert_provider(self, provider: ProviderInfo, *, api_key: str | None) -> None:
        """Create or replace a provider; ``api_key=None`` keeps the stored key, ``""`` removes it from
        wherever it is kept (the vault, even a disabled one, and the key-file seal)."""
        now = time.time()
        with self.db as db:
            db.execute(
                "INSERT INTO providers (id, type, enabled, base_url, autoload_models, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET type=excluded.type, "
                "enabled=excluded.enabled, base_url=excluded.base_url, autoload_models=excluded.autoload_models,"
                " updated_at=excluded.updated_at",
                (
                    provider.id,
                    provider.type,
                    int(provider.enabled),
                    provider.base_url,
                    int(provider.autoload_models),
                    now,
                    now,
                ),
            )
            if api_key == "":
                vault_store.delete_secret(db, vault_store.provider_key_name(provider.id))
                db.execute("UPDATE providers SET api_key_sealed = '' WHERE id = ?", (provider.id,))
            elif api_key is not None and self.key_home == "vault":
                store_provider_key(db, self.vault, provider.id, api_key)  # raises while the vault is locked
            elif api_key is not None:
                db.execute(
                    "UPDATE providers SET api_key_sealed = ? WHERE id = ?",
                    (self._box.seal(api_key, context=provider_key_name(provider.id)), provider.id),
                )

    def list_providers(self) -> list[dict[str, Any]]:
        return self._provider_records("", ())

    def provider_record(self, provider_id: str) -> dict[str, Any] | None:
        """One provider as ``list_providers`` shows it (where its key is kept: ``cred_store``)."""
        records = self._provider_records(" WHERE p.id = ?", (provider_id,))
        return records[0] if records else None

    def _provider_records(self, where: str, args: tuple[str, ...]) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT p.*, EXISTS(SELECT 1 FROM vault_secrets v WHERE v.name = 'provider:' || p.id || ':api_key')"
            f" AS in_vault FROM providers p{where} ORDER BY p.id",
            args,
        ).fetchall()
        return [
            {
                "id": row["id"],
                "type": row["type"],
                "base_url": row["base_url"],
                "enabled": bool(row["enabled"]),
                "autoload_models": bool(row["autoload_models"]),
                "has_api_key": bool(row["api_key_sealed"] or row["in_vault"]),
                "cred_store": "vault" if row["in_vault"] else "sealed" if row["api_key_sealed"] else "none",
                "created_at": row["created_at"],
                "updated_at": row["updated_at"],
            }
            for row in rows
        ]

    def get_provider(self, provider_id: str) -> ProviderInfo | None:
        row = self.db.execute("SELECT * FROM providers WHERE id = ?", (provider_id,)).fetchone()
        if row is None:
            return None
        return ProviderInfo(
            row["id"], row["type"], row["base_url"], bool(row["enabled"]), autoload_models=bool(row["autoload_models"])
        )

    def delete_provider(self, provider_id: str) -> bool:
        with self.db as db:
            return db.execute("DELETE FROM providers WHERE id = ?", (provider_id,)).rowcount > 0

    # --- models ----------------------------------------------------------------------------------
    def upsert_model(self, model: ModelInfo) -> None:
        """Create or replace a model. Prices written here are an admin's: a new row, or a changed price,
        is ``pricing_source = 'manual'`` (store/pricing.py leaves non-zero manual prices alone). So is the
        row: ``autoloaded`` is cleared, and autoload never removes it (store/model_autoload.py)."""
        now = time.time()
        with self.db as db:
            db.execute(
                "INSERT INTO models (id, provider_id, weight, max_context_tokens, input_per_1k, output_per_1k,"
                " enabled, kind, upstream_model, fallbacks, max_output_tokens, supports_prefill, capabilities,"
                " tool_name_map, gemma4_output, autoloaded, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?) ON CONFLICT(id)"
                " DO UPDATE SET provider_id=excluded.provider_id, weight=excluded.weight,"
                " max_context_tokens=excluded.max_context_tokens, input_per_1k=excluded.input_per_1k,"
                " output_per_1k=excluded.output_per_1k, enabled=excluded.enabled, kind=excluded.kind,"
                " upstream_model=excluded.upstream_model, fallbacks=excluded.fallbacks,"
                " max_output_tokens=excluded.max_output_tokens, supports_prefill=excluded.supports_prefill,"
                " capabilities=excluded.capabilities, tool_name_map=excluded.tool_name_map,"
                " gemma4_output=excluded.gemma4_output, autoloaded=0, updated_at=excluded.updated_at,"
                " pricing_source=CASE WHEN models.input_per_1k = excluded.input_per_1k"
                " AND models.output_per_1k = excluded.output_per_1k THEN models.pricing_source ELSE 'manual' END",
                (
                    model.id,
                    model.provider_id,
                    model.weight,
                    model.max_context_tokens,
                    model.input_per_1k,
                    model.output_per_1k,
                    int(model.enabled),
                    model.kind,
                    model.upstream_model,
                    json.dumps(list(model.fallbacks)),
                    model.max_output_tokens,
                    None if model.supports_prefill is None else int(model.supports_prefill),
                    None if model.capabilities is None else json.dumps(sorted(model.capabilities)),
                    json.dumps(dict(model.tool_name_map)),
                    int(model.gemma4_output),
                    now,
                    now,
                ),
            )

    def get_model(self, model_id: str) -> ModelInfo | None:
        row = self.db.execute("SELECT * FROM models WHERE id = ?", (model_id,)).fetchone()
        return _model(row) if row else None

    def list_models(self) -> list[ModelInfo]:
        return [_model(row) for row in self.db.execute("SELECT * FROM models ORDER BY id")]

    def delete_model(self, model_id: str) -> bool:
        with self.db as db:
            return db.execute("DELETE FROM models WHERE id = ?", (model_id,)).rowcount > 0

    # --- aliases ---------------------------------------------------------------------------------
    def upsert_alias(self, alias: AliasInfo) -> None:
        now = time.time()
        variants = json.dumps([{"model_id": v.model_id, "weight": v.weight} for v in alias.variants])
        fallbacks = json.dumps(list(alias.fallbacks))
        with self.db as db:
            db.execute(
                "INSERT INTO aliases (name, variants, enabled, sticky_by, fallbacks, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET variants=excluded.variants,"
                " enabled=excluded.enabled, sticky_by=excluded.sticky_by, fallbacks=excluded.fallbacks,"
                " updated_at=excluded.updated_at",
                (alias.name, variants, int(alias.enabled), alias.sticky_by, fallbacks, now, now),
            )

    def get_alias(self, name: str) -> AliasInfo | None:
        row = self.db.execute("SELECT * FROM aliases WHERE name = ?", (name,)).fetchone()
        return _alias(row) if row else None

    def list_aliases(self) -> list[AliasInfo]:
        """Every readable alias by name; a row that does not parse is skipped (it can only come from outside
        the admin API, which validates), rather than stopping the snapshot."""
        aliases = (_alias(row) for row in self.db.execute("SELECT * FROM aliases ORDER BY name"))
        return [a for a in aliases if a is not None]

    def alias_times(self) -> dict[str, tuple[float, float]]:
        """name -> (created_at, updated_at), for the admin listing."""
        rows = self.db.execute("SELECT name, created_at, updated_at FROM aliases")
        return {row["name"]: (row["created_at"], row["updated_at"]) for row in rows}

    def delete_alias(self, name: str) -> bool:
        with self.db as db:
            return db.execute("DELETE FROM aliases WHERE name = ?", (name,)).rowcount > 0

    # --- routing defaults ------------------------------------------------------------------------
    def set_routing(self, routing: RoutingDefaults) -> None:
        with self.db as db:
            db.execute(
                "INSERT INTO routing_config (id, default_mode, default_max_budget_usd, default_max_latency_ms, reward)"
                " VALUES (1, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET default_mode=excluded.default_mode,"
                " default_max_budget_usd=excluded.default_max_budget_usd,"
                " default_max_latency_ms=excluded.default_max_latency_ms, reward=excluded.reward",
                (
                    routing.mode,
                    routing.max_budget_usd,
                    routing.max_latency_ms,
                    routing.reward.model_dump_json() if routing.reward else "",
                ),
            )

    # --- tenants and pipelines -------------------------------------------------------------------
    def create_tenant(self, tenant_id: str, name: str) -> TenantRecord:
        now = time.time()
        with self.db as db:
            db.execute("INSERT INTO tenants (id, name, created_at) VALUES (?, ?, ?)", (tenant_id, name, now))
        return TenantRecord(tenant_id, name, now)

    def rename_tenant(self, tenant_id: str, name: str) -> bool:
        with self.db as db:
            return db.execute("UPDATE tenants SET name = ? WHERE id = ?", (name, tenant_id)).rowcount > 0

    def list_tenants(self) -> list[TenantRecord]:
        return [_tenant(row) for row in self.db.execute("SELECT * FROM tenants ORDER BY created_at, id")]

    def get_tenant(self, tenant_id: str) -> TenantRecord | None:
        row = self.db.execute("SELECT * FROM tenants WHERE id = ?", (tenant_id,)).fetchone()
        return _tenant(row) if row else None

    def set_pipeline(self, tenant_id: str, definition: list[dict[str, Any]]) -> None:
        with self.db as db:
            db.execute(
                "INSERT INTO tenant_pipelines (tenant_id, definition, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT(tenant_id) DO UPDATE SET definition=excluded.definition,"
                " updated_at=excluded.updated_at",
                (tenant_id, json.dumps(definition), time.time()),
            )

    def delete_pipeline(self, tenant_id: str) -> bool:
        with self.db as db:
            return db.execute("DELETE FROM tenant_pipelines WHERE tenant_id = ?", (tenant_id,)).rowcount > 0

    # --- API keys --------------------------------------------------------------------------------
    def delete_api_key(self, key_id: str) -> bool:
        with self.db as db:
            return db.execute("DELETE FROM api_keys WHERE id = ?", (key_id,)).rowcount > 0


class _Joined:
    """The connection as the store's methods see it inside ``atomically``: ``with db:`` and ``commit()``
    join the one outer transaction; everything else is the real connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> _Joined:
        return self

    def __exit__(self, *exc: object) -> None:
        return None  # an exception propagates to `atomically`, which rolls everything back

    def commit(self) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def _model(row: sqlite3.Row) -> ModelInfo:
    return ModelInfo(
        id=row["id"],
        provider_id=row["provider_id"],
        weight=row["weight"],
        max_context_tokens=row["max_context_tokens"],
        max_output_tokens=row["max_output_tokens"],
        input_per_1k=row["input_per_1k"],
        output_per_1k=row["output_per_1k"],
        enabled=bool(row["enabled"]),
        kind=row["kind"],
        upstream_model=row["upstream_model"],
        fallbacks=tuple(_id_list(row["fallbacks"])),
        pricing_source=row["pricing_source"],
        supports_prefill=None if row["supports_prefill"] is None else bool(row["supports_prefill"]),
        capabilities=None if row["capabilities"] is None else frozenset(_id_list(row["capabilities"])),
        tool_name_map=_name_pairs(row["tool_name_map"]),
        gemma4_output=bool(row["gemma4_output"]),
        autoloaded=bool(row["autoloaded"]),
    )


def _name_pairs(text: str) -> tuple[tuple[str, str], ...]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return ()
    if not isinstance(value, dict):
        return ()
    return tuple((k, v) for k, v in value.items() if isinstance(k, str) and isinstance(v, str))


def _id_list(text: str) -> list[str]:
    try:
        value = json.loads(text or "[]")
    except ValueError:
        return []
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def _alias(row: sqlite3.Row) -> AliasInfo | None:
    try:
        variants = tuple(AliasVariant(str(v["model_id"]), int(v["weight"])) for v in json.loads(row["variants"]))
    except (ValueError, TypeError, KeyError):
        return None
    if not variants or any(v.weight <= 0 or not v.model_id for v in variants):
        return None
    if row["sticky_by"] not in ALIAS_STICKY_BY:
        return None
    return AliasInfo(
        name=row["name"],
        variants=variants,
        enabled=bool(row["enabled"]),
        sticky_by=row["sticky_by"],
        fallbacks=tuple(_id_list(row["fallbacks"])),
    )


def _reward(stored: str) -> RewardConfig | None:
    """The stored objective; '' (never set) is the default. It was validated when it was written."""
    return RewardConfig.model_validate_json(stored) if stored else None


def _tenant(row: sqlite3.Row) -> TenantRecord:
    return TenantRecord(row["id"], row["name"], row["created_at"])


def _api_key(row: sqlite3.Row) -> ApiKeyInfo:
    return ApiKeyInfo(
        id=row["id"],
        name=row["name"],
        tenant_id=row["tenant_id"],
        scopes=frozenset(json.loads(row["scopes"] or "[]")),
        enabled=bool(row["enabled"]),
        expires_at=row["expires_at"],
        monthly_budget_usd=row["monthly_budget_usd"],
        rate_limit_rpm=row["rate_limit_rpm"],
        rate_limit_tpm=row["rate_limit_tpm"],
    )
