"""Versioned, idempotent SQLite schema migrations for the configuration store."""

from __future__ import annotations

import sqlite3
import time

__all__ = ["MIGRATIONS", "migrate"]

MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "providers_models_routing",
        """
        CREATE TABLE providers (
            id TEXT PRIMARY KEY,
            type TEXT NOT NULL DEFAULT 'openai',
            enabled INTEGER NOT NULL DEFAULT 1,
            base_url TEXT NOT NULL,
            api_key_sealed TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE TABLE models (
            id TEXT PRIMARY KEY,
            provider_id TEXT NOT NULL REFERENCES providers(id) ON DELETE CASCADE,
            weight INTEGER NOT NULL DEFAULT 1,
            max_context_tokens INTEGER NOT NULL DEFAULT 0,
            input_per_1k REAL NOT NULL DEFAULT 0,
            output_per_1k REAL NOT NULL DEFAULT 0,
            enabled INTEGER NOT NULL DEFAULT 1,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE TABLE routing_config (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            default_mode TEXT NOT NULL DEFAULT '',
            default_max_budget_usd REAL NOT NULL DEFAULT 0,
            default_max_latency_ms INTEGER NOT NULL DEFAULT 0
        );
        """,
    ),
    (
        2,
        "tenants_pipelines_api_keys",
        """
        CREATE TABLE tenants (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE TABLE tenant_pipelines (
            tenant_id TEXT PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
            definition TEXT NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            key_digest TEXT NOT NULL UNIQUE,
            key_prefix TEXT NOT NULL,
            name TEXT NOT NULL,
            tenant_id TEXT NOT NULL REFERENCES tenants(id),
            scopes TEXT NOT NULL DEFAULT '[]',
            created_at REAL NOT NULL,
            expires_at REAL,
            enabled INTEGER NOT NULL DEFAULT 1
        );
        CREATE INDEX api_keys_tenant ON api_keys(tenant_id);
        INSERT INTO tenants (id, name, created_at) VALUES ('default', 'Default tenant', strftime('%s','now'));
        """,
    ),
    (
        3,
        "model_kind",
        """
        ALTER TABLE models ADD COLUMN kind TEXT NOT NULL DEFAULT 'chat';
        """,
    ),
    (
        4,
        "vault_audit_api_key_limits",
        """
        CREATE TABLE vault (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            salt BLOB NOT NULL,
            kdf TEXT NOT NULL,
            canary BLOB NOT NULL,
            created_at REAL NOT NULL,
            rotated_at REAL NOT NULL
        );
        CREATE TABLE vault_secrets (
            name TEXT PRIMARY KEY,
            ciphertext BLOB NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE TRIGGER provider_delete_drops_vault_key AFTER DELETE ON providers BEGIN
            DELETE FROM vault_secrets WHERE name = 'provider:' || old.id || ':api_key';
        END;
        CREATE TABLE audit_logs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            timestamp REAL NOT NULL,
            actor TEXT NOT NULL,
            client_ip TEXT NOT NULL,
            method TEXT NOT NULL,
            route TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            detail TEXT NOT NULL,
            status INTEGER NOT NULL,
            request_id TEXT NOT NULL
        );
        CREATE INDEX audit_logs_timestamp ON audit_logs(timestamp);
        CREATE INDEX audit_logs_action ON audit_logs(action, timestamp);
        ALTER TABLE api_keys ADD COLUMN monthly_budget_usd REAL NOT NULL DEFAULT 0;
        ALTER TABLE api_keys ADD COLUMN budget_reset_at REAL;
        ALTER TABLE api_keys ADD COLUMN rate_limit_rpm INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE api_keys ADD COLUMN rate_limit_tpm INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE api_keys ADD COLUMN last_used_at REAL;
        ALTER TABLE api_keys ADD COLUMN rotated_at REAL;
        """,
    ),
    (
        5,
        "upstream_names_fallbacks_aliases",
        """
        ALTER TABLE models ADD COLUMN upstream_model TEXT NOT NULL DEFAULT '';
        ALTER TABLE models ADD COLUMN fallbacks TEXT NOT NULL DEFAULT '[]';
        CREATE TABLE aliases (
            name TEXT PRIMARY KEY,
            variants TEXT NOT NULL,
            enabled INTEGER NOT NULL DEFAULT 1,
            sticky_by TEXT NOT NULL DEFAULT '',
            fallbacks TEXT NOT NULL DEFAULT '[]',
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        """,
    ),
    (
        6,
        "model_max_output_tokens",
        "ALTER TABLE models ADD COLUMN max_output_tokens INTEGER NOT NULL DEFAULT 0;",
    ),
    (
        7,
        "model_pricing_source",
        # 'manual': set by an admin (a non-zero manual price is never refreshed); 'litellm': from the
        # price table (store/pricing.py). Existing rows count as manual, as the original defaults them.
        """
        ALTER TABLE models ADD COLUMN pricing_source TEXT NOT NULL DEFAULT 'manual';
        """,
    ),
    (
        8,
        "model_supports_prefill",
        # NULL: the provider type's default (Anthropic and vLLM continue a prefill, OpenAI does not).
        "ALTER TABLE models ADD COLUMN supports_prefill INTEGER;",
    ),
    (
        9,
        "api_key_rotation_days",
        # 0 = no rotation period; the hourly job (stages/key_rotation.py) disables keys not rotated for longer.
        "ALTER TABLE api_keys ADD COLUMN rotation_days INTEGER NOT NULL DEFAULT 0;",
    ),
    (
        10,
        "model_capabilities",
        # A JSON list of what the model reads besides text (vision, documents, audio); NULL = its provider
        # type's default (adapters' Capabilities.default_inputs), which existing rows keep.
        "ALTER TABLE models ADD COLUMN capabilities TEXT;",
    ),
    (
        11,
        "provider_model_rows",
        # tool_name_map: JSON object, model-facing tool name -> client-facing name. autoloaded: the row was
        # written by its provider's autoload_models (only such rows are removed when the provider stops
        # listing them; an admin write makes the row the admin's).
        """
        ALTER TABLE providers ADD COLUMN autoload_models INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE models ADD COLUMN tool_name_map TEXT NOT NULL DEFAULT '{}';
        ALTER TABLE models ADD COLUMN gemma4_output INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE models ADD COLUMN autoloaded INTEGER NOT NULL DEFAULT 0;
        """,
    ),
    (
        12,
        "routing_reward",
        # The routing objective (pipeline/objective.py) as JSON; '' = the default objective.
        "ALTER TABLE routing_config ADD COLUMN reward TEXT NOT NULL DEFAULT '';",
    ),
    (
        13,
        "key_spend_copy",
        # Scaled out: the durable copy of each key's month-to-date spend, whose live total is in Redis
        # (store/spend_copy.py); it seeds Redis when Redis comes back empty. Unused by a single process.
        """
        CREATE TABLE key_spend (
            key_id TEXT NOT NULL,
            month TEXT NOT NULL,
            spend_usd REAL NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (key_id, month)
        );
        """,
    ),
)


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Apply every migration not yet recorded; returns the versions applied now."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    applied = []
    for version, name, sql in MIGRATIONS:
        if version in done:
            continue
        with conn:  # one transaction per migration: all of it or none of it
            conn.executescript("BEGIN;" + sql + ";")
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (version, name, time.time()),
            )
        applied.append(version)
    return applied
