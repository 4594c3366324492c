"""What ``tokenhub admin <resource> <verb>`` can do: one row per admin API call, in one table.

A path's ``{placeholders}`` become positional arguments in order; ``body="json"`` takes the request body as a
JSON argument (``'{"id": ...}'``, ``@file.json`` or ``-`` for stdin); ``query`` names the ``--options`` sent
as the query string; ``secrets`` are body fields read from the terminal (or stdin), never from the command
line; ``columns`` are the table's columns for people (``--json`` prints the server's answer unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["RESOURCES", "Command", "Resource"]

_PAGE = ("limit", "offset")


@dataclass(frozen=True, slots=True)
class Command:
    verb: str
    method: str
    path: str
    help: str
    body: Literal["none", "json", "optional"] = "none"
    fixed: dict[str, Any] = field(default_factory=dict)  # a body that is always the same (enable, disable)
    text_field: str = ""  # a positional TEXT argument sent as this body field (analytics query: "sql")
    secrets: tuple[str, ...] = ()
    query: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Resource:
    help: str
    commands: tuple[Command, ...]


_PROVIDER_COLUMNS = ("id", "type", "base_url", "enabled", "cred_store", "has_api_key")
_MODEL_COLUMNS = ("id", "provider_id", "weight", "max_context_tokens", "input_per_1k", "output_per_1k", "enabled")
_KEY_COLUMNS = ("id", "name", "key_prefix", "tenant_id", "scopes", "enabled", "expires_at", "monthly_budget_usd")
_LOG_FILTERS = (
    *_PAGE,
    "request_id",
    "client_request_id",
    "tenant",
    "api_key_id",
    "endpoint",
    "mode",
    "model",
    "provider",
    "alias_from",
    "error_class",
    "status",
    "outcome",
    "start",
    "end",
)

RESOURCES: dict[str, Resource] = {
    "providers": Resource(
        "upstream providers (their keys are sealed, never shown)",
        (
            Command("list", "GET", "/providers", "list providers", columns=_PROVIDER_COLUMNS),
            Command(
                "add", "POST", "/providers", "add a provider: BODY is its JSON (id, type, base_url, api_key)", "json"
            ),
            Command("edit", "PATCH", "/providers/{id}", "change some of a provider's fields (BODY: JSON)", "json"),
            Command("delete", "DELETE", "/providers/{id}", "delete a provider and its models"),
            Command("discover", "GET", "/providers/{id}/discover", "list the models the provider offers"),
        ),
    ),
    "models": Resource(
        "models and their prices, weights and context windows",
        (
            Command("list", "GET", "/models", "list models", columns=_MODEL_COLUMNS),
            Command("add", "POST", "/models", "add a model: BODY is its JSON (id, provider_id, weight, ...)", "json"),
            Command("edit", "PATCH", "/models/{id}", "change some of a model's fields (BODY: JSON)", "json"),
            Command("enable", "PATCH", "/models/{id}", "route to the model again", fixed={"enabled": True}),
            Command("disable", "PATCH", "/models/{id}", "stop routing to the model", fixed={"enabled": False}),
            Command("delete", "DELETE", "/models/{id}", "delete a model"),
        ),
    ),
    "aliases": Resource(
        "model aliases: weighted variants (A/B) and fallbacks",
        (
            Command("list", "GET", "/aliases", "list aliases", columns=("name", "enabled", "sticky_by", "variants")),
            Command("get", "GET", "/aliases/{name}", "show one alias"),
            Command("add", "POST", "/aliases", "add an alias: BODY is its JSON (name, variants, ...)", "json"),
            Command("set", "PUT", "/aliases/{name}", "replace an alias (BODY: JSON)", "json"),
            Command("edit", "PATCH", "/aliases/{name}", "change some of an alias's fields (BODY: JSON)", "json"),
            Command("delete", "DELETE", "/aliases/{name}", "delete an alias"),
        ),
    ),
    "keys": Resource(
        "API keys: scopes, expiry, budgets, rate limits",
        (
            Command(
                "list",
                "GET",
                "/apikeys",
                "list API keys (never the keys themselves)",
                query=_PAGE,
                columns=_KEY_COLUMNS,
            ),
            Command(
                "create", "POST", "/apikeys", 'create a key (BODY: JSON, e.g. \'{"name": "app"}\'); shown once', "json"
            ),
            Command("edit", "PATCH", "/apikeys/{id}", "change a key's fields (BODY: JSON)", "json"),
            Command("rotate", "POST", "/apikeys/{id}/rotate", "replace a key's secret (the new key is shown once)"),
            Command("paid", "POST", "/apikeys/{id}/paid", "reset a key's month-to-date budget"),
            Command("revoke", "DELETE", "/apikeys/{id}", "revoke a key"),
        ),
    ),
    "tenants": Resource(
        "tenants (each may have its own pipeline)",
        (
            Command("list", "GET", "/tenants", "list tenants", columns=("id", "name", "custom_pipeline", "created_at")),
            Command(
                "create",
                "POST",
                "/tenants",
                'create a tenant (BODY: JSON, e.g. \'{"id": "acme", "name": "Acme"}\')',
                "json",
            ),
        ),
    ),
    "pipelines": Resource(
        "per-tenant pipelines of stages",
        (
            Command("get", "GET", "/tenants/{tenant}/pipeline", "show a tenant's pipeline", columns=("stage", "with")),
            Command(
                "set", "PUT", "/tenants/{tenant}/pipeline", 'set a tenant\'s pipeline (BODY: {"stages": [...]})', "json"
            ),
            Command("delete", "DELETE", "/tenants/{tenant}/pipeline", "back to the default pipeline"),
            Command(
                "stages",
                "GET",
                "/pipelines/stages",
                "every stage and its options",
                columns=("stage", "summary", "required"),
            ),
        ),
    ),
    "routing": Resource(
        "routing defaults, the engine's view and the what-if simulator",
        (
            Command("get", "GET", "/routing-config", "show the routing defaults"),
            Command("set", "PUT", "/routing-config", "set the routing defaults (BODY: JSON)", "json"),
            Command(
                "simulate",
                "POST",
                "/routing/simulate",
                "what routing would decide for BODY (JSON), without calling",
                "json",
            ),
            Command("models", "GET", "/engine/models", "the models as the engine ranks them", query=_PAGE),
            Command("health", "GET", "/health", "provider health and circuit breakers"),
            Command("rewards", "GET", "/rewards", "what the bandit learned", query=_PAGE),
        ),
    ),
    "vault": Resource(
        "the credential vault (passwords are read from the terminal or stdin)",
        (
            Command("status", "GET", "/vault", "is the vault set up, locked; which secrets it holds"),
            Command("unlock", "POST", "/vault/unlock", "unlock (or set up) the vault", secrets=("password",)),
            Command("lock", "POST", "/vault/lock", "lock the vault"),
            Command(
                "rotate",
                "POST",
                "/vault/rotate",
                "re-seal everything under a new password",
                secrets=("old_password", "new_password"),
            ),
        ),
    ),
    "logs": Resource(
        "the request log",
        (
            Command(
                "list",
                "GET",
                "/logs",
                "recent requests, newest first",
                query=_LOG_FILTERS,
                columns=("timestamp", "request_id", "tenant_id", "model_id", "status", "cost_usd", "latency_ms"),
            ),
        ),
    ),
    "stats": Resource("request statistics", (Command("show", "GET", "/stats", "totals and per-model figures"),)),
    "analytics": Resource(
        "the analytics store (DuckDB, read-only SQL)",
        (
            Command("query", "POST", "/analytics/query", "run one read-only SQL query", text_field="sql"),
            Command(
                "trends",
                "GET",
                "/analytics/trends",
                "requests, cost and latency per bucket",
                query=("bucket", "start", "end"),
            ),
        ),
    ),
    "tsdb": Resource(
        "the time series",
        (
            Command(
                "query",
                "GET",
                "/tsdb/query",
                "one metric's series",
                query=("metric", "model", "provider", "start", "end", "step", "agg"),
            ),
            Command("metrics", "GET", "/tsdb/metrics", "the metrics stored"),
        ),
    ),
    "audit": Resource(
        "the audit trail of admin actions",
        (
            Command(
                "list",
                "GET",
                "/audit",
                "recent admin actions, newest first",
                query=(*_PAGE, "action", "target", "status", "since", "until"),
            ),
        ),
    ),
    "info": Resource("the server and vault at a glance", (Command("show", "GET", "/info", "server information"),)),
}
