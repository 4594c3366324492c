"""The admin application, built from what it needs: ``admin_app(services, pipelines, admin_token)``.

Mounted at /admin: the web UI's static files at /admin/ and the JSON API at /admin/v1, a sub-application of its
own whose middlewares (rate limit, Bearer admin token, path checks, audit) never run on the request path of
/v1/*. Every write commits to SQLite first, then swaps the request path's snapshot, so a change applies to the
next request without a restart. The whole route table is below, in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from admin_ui import (
    admin_token,
    aliases,
    api_keys,
    audit,
    backup,
    config_reload,
    engine,
    evaluation,
    health,
    learning,
    models,
    observability,
    providers,
    routing,
    sessions,
    tenants,
    vault,
    workflows,
)
from admin_ui.common import PIPELINES, SERVICES
from admin_ui.owner_forward import forward_to_owner
from admin_ui.security import GUARDS, Guards, admin_rate_limit, validate_path_params
from admin_ui.sessions import ADMIN_TOKEN_KEY, SESSIONS, AdminSessions, admin_auth
from admin_ui.static import STATIC_DIR, StaticFiles
from pipeline.admin_token import AdminToken
from pipeline.openapi import OPERATIONS, Operation
from pipeline.services import Services
from pipeline.settings import MAX_TSDB_RETENTION_DAYS
from pipeline.tenants import TenantPipelines

__all__ = ["ADMIN_PREFIX", "API_PREFIX", "ROUTES", "admin_app"]

ADMIN_PREFIX = "/admin"
API_PREFIX = "/v1"  # under ADMIN_PREFIX: /admin/v1


def _route(
    route: web.RouteDef, summary: str, body: type[BaseModel] | Mapping[str, Any] | None = None, **more: Any
) -> tuple[web.RouteDef, Operation]:
    """A route and what /openapi.json says about it (the tag is its resource: the path's first segment)."""
    tag = route.path.strip("/").split("/")[0]
    return route, Operation(summary, f"admin: {tag}", body=body, security="admin", **more)


_CREATED = {"status": 201}
# Bodies checked by hand (their handlers' own messages), as JSON schemas of what the check accepts.
_RETENTION_BODY = {
    "type": "object",
    "required": ["days"],
    "properties": {"days": {"type": "integer", "minimum": 1, "maximum": MAX_TSDB_RETENTION_DAYS}},
}
_QUERY_BODY = {
    "type": "object",
    "required": ["sql"],
    "properties": {"sql": {"type": "string", "minLength": 1}, "max_rows": {"type": "integer", "minimum": 1}},
}
_STEPS = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "required": ["stage"],
        "additionalProperties": False,
        "properties": {"stage": {"type": "string"}, "with": {"type": "object"}},
    },
}
_PIPELINE_BODY = {
    "description": "the steps, or {stages: [...]} (GET /admin/v1/pipelines/stages lists stages and options)",
    "oneOf": [_STEPS, {"type": "object", "required": ["stages"], "properties": {"stages": _STEPS}}],
}

# The one route table: each route with its OpenAPI operation (summary, and the model its body is validated with).
ROUTES: list[tuple[web.RouteDef, Operation]] = [
    # durable orchestration (Temporal): workflows, one described, its history
    _route(web.get("/workflows", workflows.list_workflows), "Durable workflows (Temporal), by status"),
    _route(web.get("/workflows/{workflow_id}", workflows.describe_workflow), "One workflow"),
    _route(
        web.get("/workflows/{workflow_id}/history", workflows.workflow_history),
        "One workflow's activities: timing, model, cost",
    ),
    # the web UI's sign-in: the admin token for a session cookie
    _route(
        web.post("/session", sessions.start_session),
        "Sign in: the admin token for a session cookie",
        sessions.SignIn,
        **_CREATED,
    ),
    _route(web.get("/session", sessions.session_info), "Whether this browser is signed in, and its CSRF token"),
    _route(web.delete("/session", sessions.end_session), "Sign out"),
    _route(
        web.post("/admin-token/rotate", admin_token.rotate_admin_token),
        "Rotate the admin token (random, or one given); every UI session signs out",
        admin_token.RotateIn,
    ),
    # providers, models, aliases
    _route(web.get("/providers", providers.list_providers), "List providers (keys masked)"),
    _route(web.post("/providers", providers.create_provider), "Create a provider", providers.ProviderIn, **_CREATED),
    _route(web.patch("/providers/{id}", providers.patch_provider), "Change a provider", providers.ProviderPatch),
    _route(web.delete("/providers/{id}", providers.delete_provider), "Delete a provider and its models"),
    _route(web.get("/providers/{id}/discover", engine.discover_models), "Ask a provider which models it serves"),
    _route(web.get("/models", models.list_models), "List models"),
    _route(web.post("/models", models.create_model), "Register a model", models.ModelIn, **_CREATED),
    _route(web.patch("/models/{id:.+}", models.patch_model), "Change a model", models.ModelPatch),
    _route(web.delete("/models/{id:.+}", models.delete_model), "Delete a model"),
    _route(web.get("/aliases", aliases.list_aliases), "List aliases"),
    _route(web.post("/aliases", aliases.create_alias), "Create an alias", aliases.AliasIn, **_CREATED),
    _route(web.get("/aliases/{name:.+}", aliases.get_alias), "One alias"),
    _route(web.put("/aliases/{name:.+}", aliases.put_alias), "Create or replace an alias", aliases.AliasBody),
    _route(web.patch("/aliases/{name:.+}", aliases.patch_alias), "Change an alias", aliases.AliasPatch),
    _route(web.delete("/aliases/{name:.+}", aliases.delete_alias), "Delete an alias"),
    # routing: defaults, the engine's view, what it learns, what it would decide
    _route(web.get("/routing-config", routing.get_routing), "The routing defaults"),
    _route(web.put("/routing-config", routing.put_routing), "Change the routing defaults", routing.RoutingIn),
    _route(web.get("/engine/models", engine.engine_models), "The routing engine's view of every model"),
    _route(web.get("/rewards", learning.rewards), "What routing learned: rewards and bandit arms"),
    _route(
        web.post("/routing/simulate", learning.simulate),
        "What routing would decide (no side effects)",
        learning.SimulateIn,
    ),
    _route(
        web.post("/routing/evaluate", evaluation.evaluate_policy),
        "What a candidate routing policy would have earned on the logged traffic (counterfactual)",
        evaluation.EvaluateIn,
    ),
    _route(web.get("/health", health.provider_health), "Provider health and circuit breakers"),
    # API keys
    _route(web.get("/apikeys", api_keys.list_api_keys), "List API keys (never the secrets)"),
    _route(
        web.post("/apikeys", api_keys.create_api_key),
        "Create an API key (its secret is shown once)",
        api_keys.ApiKeyIn,
        **_CREATED,
    ),
    _route(web.patch("/apikeys/{id}", api_keys.patch_api_key), "Change an API key", api_keys.ApiKeyPatch),
    _route(web.delete("/apikeys/{id}", api_keys.revoke_api_key), "Revoke an API key"),
    _route(web.post("/apikeys/{id}/rotate", api_keys.rotate_api_key), "Rotate an API key's secret"),
    _route(web.post("/apikeys/{id}/paid", api_keys.mark_budget_paid), "Reset a key's month-to-date spend"),
    # tenants and their pipelines
    _route(web.get("/tenants", tenants.list_tenants), "List tenants"),
    _route(web.post("/tenants", tenants.create_tenant), "Create a tenant", tenants.TenantIn, **_CREATED),
    _route(web.get("/tenants/{id}/pipeline", tenants.get_pipeline), "A tenant's pipeline"),
    _route(web.put("/tenants/{id}/pipeline", tenants.put_pipeline), "Set a tenant's pipeline", _PIPELINE_BODY),
    _route(web.delete("/tenants/{id}/pipeline", tenants.delete_pipeline), "Back to the default pipeline"),
    _route(web.get("/pipelines/stages", tenants.list_stages), "The stages and their options, the default pipeline"),
    # observability
    _route(web.get("/logs", observability.list_logs), "The request log"),
    _route(web.get("/logs/{request_id}", observability.get_log), "One request: row, attempts, plan steps, feedback"),
    _route(web.get("/stats", observability.stats), "Aggregates of the request log"),
    _route(web.get("/tsdb/query", observability.tsdb_query), "A time series"),
    _route(web.get("/tsdb/metrics", observability.tsdb_metrics), "The time series' names"),
    _route(web.get("/tsdb/retention", observability.get_retention), "Retention of the time series and request log"),
    _route(
        web.put("/tsdb/retention", observability.put_retention), "Change the time series' retention", _RETENTION_BODY
    ),
    _route(web.post("/tsdb/prune", observability.prune_tsdb), "Prune the time series now"),
    _route(
        web.post("/analytics/query", observability.analytics_query),
        "A read-only SQL query on the request log",
        _QUERY_BODY,
    ),
    _route(web.get("/analytics/schema", observability.analytics_schema), "The analyst tables' columns and types"),
    _route(web.get("/analytics/trends", observability.analytics_trends), "Hourly or daily trends"),
    _route(web.get("/events", observability.events_stream), "Live events (SSE)", media=("text/event-stream",)),
    # vault and audit
    _route(web.get("/info", vault.admin_info), "What the web UI asks first: vault state"),
    _route(web.get("/vault", vault.vault_status), "The vault's state"),
    _route(web.post("/vault/unlock", vault.unlock_vault), "Unlock (or set up) the vault", vault.UnlockIn),
    _route(web.post("/vault/lock", vault.lock_vault), "Lock the vault"),
    _route(web.post("/vault/rotate", vault.rotate_vault), "Change the vault password", vault.RotateIn),
    _route(web.get("/vault/secrets", vault.list_secrets), "The vault's generic secrets: names, never values"),
    _route(web.get("/vault/secrets/{key}", vault.get_secret), "One generic secret's value (vault unlocked)"),
    _route(web.put("/vault/secrets/{key}", vault.put_secret), "Store a generic secret, sealed", vault.SecretIn),
    _route(web.delete("/vault/secrets/{key}", vault.delete_secret), "Delete a generic secret"),
    _route(web.get("/audit", audit.list_audit), "The admin audit trail"),
    # backups (tokenhub backup is the client)
    _route(
        web.post("/backup", backup.create_backup), "An online backup, as a tar archive", media=("application/x-tar",)
    ),
    # configuration as code (docs/config-file.md)
    _route(web.post("/config/reload", config_reload.reload_config_file), "Re-apply TOKENHUB_CONFIG_FILE"),
]


def admin_app(
    services: Services,
    pipelines: TenantPipelines,
    admin_token: AdminToken | str,
    *,
    static_dir: Path = STATIC_DIR,
) -> web.Application:
    """The application to mount at ADMIN_PREFIX. ``static_dir`` holds the web UI (served as it is). A plain
    string token has no token file: it cannot be rotated through the API."""
    token = admin_token if isinstance(admin_token, AdminToken) else AdminToken(admin_token, path=None)
    api = web.Application(
        middlewares=[
            admin_rate_limit,  # first: floods are refused before anything, token guesses included
            admin_auth(token),  # Bearer token, or the web UI's session cookie (+ CSRF header)
            validate_path_params,
            # `serve --workers N`: what needs the DuckDB file goes to its owner (audited there, not here)
            *([forward_to_owner(services.owner)] if services.owner is not None else []),
            audit.audit_trail,  # what is left, refused or done, is recorded
            audit.publish_admin_actions,
        ]
    )
    api[SERVICES] = services
    api[PIPELINES] = pipelines
    api[GUARDS] = Guards.build(services)
    api[SESSIONS] = AdminSessions(
        services.settings.admin_session_ttl_secs,
        link=services.redis,
        on_fallback=services.metrics.shared_state_fallbacks.labels("sessions").inc,
    )
    api[ADMIN_TOKEN_KEY] = token
    api.router.add_routes(route for route, _ in ROUTES)
    api[OPERATIONS] = {
        route.handler: replace(op, security="none") if sessions.is_public(route.method, route.handler) else op
        for route, op in ROUTES
    }
    admin = web.Application()
    static = StaticFiles(static_dir)
    admin.router.add_routes(static.routes())
    admin[OPERATIONS] = static.operations()
    admin.add_subapp(API_PREFIX, api)
    return admin
