"""The admin application, built from what it needs: ``admin_app(services, pipelines, admin_token)``.

Mounted at /admin: the web UI's static files at /admin/ and the JSON API at /admin/v1, a sub-application of its
own whose middlewares (rate limit, Bearer admin token, path checks, audit) never run on the request path of
/v1/*. Every write commits to SQLite first, then swaps the request path's snapshot, so a change applies to the
next request without a restart. The whole route table is below, in one place.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from admin_ui import (
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
)
from admin_ui.common import PIPELINES, SERVICES
from admin_ui.security import GUARDS, Guards, admin_rate_limit, validate_path_params
from admin_ui.sessions import ADMIN_TOKEN_KEY, SESSIONS, AdminSessions, admin_auth
from admin_ui.static import STATIC_DIR, StaticFiles
from pipeline.services import Services
from pipeline.tenants import TenantPipelines

__all__ = ["ADMIN_PREFIX", "API_PREFIX", "ROUTES", "admin_app"]

ADMIN_PREFIX = "/admin"
API_PREFIX = "/v1"  # under ADMIN_PREFIX: /admin/v1

ROUTES: list[web.RouteDef] = [
    # the web UI's sign-in: the admin token for a session cookie
    web.post("/session", sessions.start_session),
    web.get("/session", sessions.session_info),
    web.delete("/session", sessions.end_session),
    # providers, models, aliases
    web.get("/providers", providers.list_providers),
    web.post("/providers", providers.create_provider),
    web.patch("/providers/{id}", providers.patch_provider),
    web.delete("/providers/{id}", providers.delete_provider),
    web.get("/providers/{id}/discover", engine.discover_models),
    web.get("/models", models.list_models),
    web.post("/models", models.create_model),
    web.patch("/models/{id:.+}", models.patch_model),
    web.delete("/models/{id:.+}", models.delete_model),
    web.get("/aliases", aliases.list_aliases),
    web.post("/aliases", aliases.create_alias),
    web.get("/aliases/{name:.+}", aliases.get_alias),
    web.put("/aliases/{name:.+}", aliases.put_alias),
    web.patch("/aliases/{name:.+}", aliases.patch_alias),
    web.delete("/aliases/{name:.+}", aliases.delete_alias),
    # routing: defaults, the engine's view, what it learns, what it would decide
    web.get("/routing-config", routing.get_routing),
    web.put("/routing-config", routing.put_routing),
    web.get("/engine/models", engine.engine_models),
    web.get("/rewards", learning.rewards),
    web.post("/routing/simulate", learning.simulate),
    web.post("/routing/evaluate", evaluation.evaluate_policy),
    web.get("/health", health.provider_health),
    # API keys
    web.get("/apikeys", api_keys.list_api_keys),
    web.post("/apikeys", api_keys.create_api_key),
    web.patch("/apikeys/{id}", api_keys.patch_api_key),
    web.delete("/apikeys/{id}", api_keys.revoke_api_key),
    web.post("/apikeys/{id}/rotate", api_keys.rotate_api_key),
    web.post("/apikeys/{id}/paid", api_keys.mark_budget_paid),
    # tenants and their pipelines
    web.get("/tenants", tenants.list_tenants),
    web.post("/tenants", tenants.create_tenant),
    web.get("/tenants/{id}/pipeline", tenants.get_pipeline),
    web.put("/tenants/{id}/pipeline", tenants.put_pipeline),
    web.delete("/tenants/{id}/pipeline", tenants.delete_pipeline),
    web.get("/pipelines/stages", tenants.list_stages),
    # observability
    web.get("/logs", observability.list_logs),
    web.get("/logs/{request_id}", observability.get_log),
    web.get("/stats", observability.stats),
    web.get("/tsdb/query", observability.tsdb_query),
    web.get("/tsdb/metrics", observability.tsdb_metrics),
    web.get("/tsdb/retention", observability.get_retention),
    web.put("/tsdb/retention", observability.put_retention),
    web.post("/tsdb/prune", observability.prune_tsdb),
    web.post("/analytics/query", observability.analytics_query),
    web.get("/analytics/schema", observability.analytics_schema),
    web.get("/analytics/trends", observability.analytics_trends),
    web.get("/events", observability.events_stream),
    # vault and audit
    web.get("/info", vault.admin_info),
    web.get("/vault", vault.vault_status),
    web.post("/vault/unlock", vault.unlock_vault),
    web.post("/vault/lock", vault.lock_vault),
    web.post("/vault/rotate", vault.rotate_vault),
    web.get("/audit", audit.list_audit),
    # backups (tokenhub backup is the client)
    web.post("/backup", backup.create_backup),
    # configuration as code (docs/config-file.md)
    web.post("/config/reload", config_reload.reload_config_file),
]


def admin_app(
    services: Services, pipelines: TenantPipelines, admin_token: str, *, static_dir: Path = STATIC_DIR
) -> web.Application:
    """The application to mount at ADMIN_PREFIX. ``static_dir`` holds the web UI (served as it is)."""
    if not admin_token:
        raise ValueError("the admin API needs an admin token")
    api = web.Application(
        middlewares=[
            admin_rate_limit,  # first: floods are refused before anything, token guesses included
            admin_auth(admin_token),  # Bearer token, or the web UI's session cookie (+ CSRF header)
            validate_path_params,
            audit.audit_trail,  # what is left, refused or done, is recorded
            audit.publish_admin_actions,
        ]
    )
    api[SERVICES] = services
    api[PIPELINES] = pipelines
    api[GUARDS] = Guards.build(services)
    api[SESSIONS] = AdminSessions(services.settings.admin_session_ttl_secs)
    api[ADMIN_TOKEN_KEY] = admin_token
    api.router.add_routes(ROUTES)
    admin = web.Application()
    admin.router.add_routes(StaticFiles(static_dir).routes())
    admin.add_subapp(API_PREFIX, api)
    return admin
