"""The aiohttp application factory and its lifecycle (start-up wiring, graceful drain on shutdown)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable

import structlog
from aiohttp import web

from adapters.http import HttpClient
from admin_ui.app import ADMIN_PREFIX, admin_app
from admin_ui.config_apply import ConfigApplier
from admin_ui.config_file import CredentialsFileUnsafe
from admin_ui.config_reload import sighup
from admin_ui.static import StaticFiles
from pipeline.admin_token import TOKEN_FILE, AdminToken, resolve_admin_token
from pipeline.data_lock import DataDirLock
from pipeline.edge.anthropic import AnthropicCodec
from pipeline.edge.cors import setup_cors
from pipeline.edge.embeddings import EmbeddingsCodec
from pipeline.edge.feedback import FeedbackEndpoint
from pipeline.edge.lane import LANE, Lane
from pipeline.edge.native import NativeCodec
from pipeline.edge.openai import OpenAICodec
from pipeline.edge.owner import owner_routes
from pipeline.edge.plan import PlanEndpoint
from pipeline.edge.plans import PlansEndpoint
from pipeline.edge.routed import RoutedEndpoint
from pipeline.edge.status import STATUS_OPERATIONS, healthz, list_models, metrics
from pipeline.errors import ConfigFileInvalid, ConfigStoreUnavailable
from pipeline.lifecycle import start_all, stop_all
from pipeline.logging import RequestLines
from pipeline.metrics import Metrics
from pipeline.openapi import OPERATIONS, OpenApiEndpoint, Operation
from pipeline.registry import default_registry
from pipeline.services import Services
from pipeline.settings import Settings
from pipeline.tenants import TenantPipelines
from pipeline.tracing import Tracing
from pipeline.web import PIPELINES, REQUEST_ID, SERVICES, request_id_and_errors
from store.analytics import AnalyticsStore
from store.config_store import ConfigStore
from store.host_key import HOST_KEY_FILE, ensure_host_key
from store.owner_link import OwnerLink, RemoteAnalytics
from store.owner_wire import OWNER_SOCKET
from store.secret_box import SecretBox

__all__ = ["ADMIN_TOKEN", "ADMIN_TOKEN_GENERATED", "StartupRefused", "build_services", "create_app", "reload_on_sighup"]

log = structlog.get_logger("tokenhub.app")
DOCS_PREFIX = "/docs"
# MkDocs' theme runs two inline scripts and loads highlight.js from cdnjs; nothing else leaves the origin.
_DOCS_CDN = "https://cdnjs.cloudflare.com"
DOCS_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": (
        f"default-src 'self'; script-src 'self' 'unsafe-inline' {_DOCS_CDN}; style-src 'self' 'unsafe-inline'"
        f" {_DOCS_CDN}; img-src 'self' data:; font-src 'self'; connect-src 'self'; object-src 'none';"
        " base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
ADMIN_TOKEN: web.AppKey[str] = web.AppKey("admin_token", str)  # for the start-up announcement
ADMIN_TOKEN_GENERATED: web.AppKey[bool] = web.AppKey("admin_token_generated", bool)
DATA_LOCK: web.AppKey[DataDirLock] = web.AppKey("data_lock", DataDirLock)


class StartupRefused(RuntimeError):
    """A configuration file that cannot be applied: the message says which file and line."""


def build_services(settings: Settings, request_lines: RequestLines | None = None) -> Services:
    """Open the stores (migrating SQLite) and build the shared services. Runs once, before serving."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # TOKENHUB_DATABASE_URL: PostgreSQL, shared by every replica (docs/scaling.md); else the SQLite file
    box = SecretBox.from_key_file(settings.data_dir / ".secret-key")
    config = ConfigStore(settings.database_url or settings.sqlite_path, box)
    try:
        applied = config.open()
    except ConfigStoreUnavailable:  # no snapshot to serve yet: there is nothing to fall back on
        raise StartupRefused(
            "the configuration store (TOKENHUB_DATABASE_URL) is unreachable: start again once PostgreSQL answers"
        ) from None
    if applied and settings.database_url:
        log.info("postgres_migrated", versions=applied)  # never the URL: it may hold a password
    elif applied:
        log.info("sqlite_migrated", versions=applied, path=str(settings.sqlite_path))
    analytics: AnalyticsStore | RemoteAnalytics
    if settings.owns_analytics:
        analytics = AnalyticsStore(
            settings.analytics_path,
            memory_limit_mib=settings.analytics_memory_limit_mib,
            cache_mib=settings.analytics_cache_mib,
            temp_limit_mib=settings.analytics_temp_limit_mib,
            export_dir=settings.log_export_dir,
        )
    else:  # `serve --workers N`: worker 0 owns the DuckDB file, the others reach it (pipeline/workers.py)
        analytics = RemoteAnalytics(OwnerLink(settings.data_dir / OWNER_SOCKET))
    analytics.open()
    tracing = Tracing.build(settings)  # None unless TOKENHUB_OTEL_ENABLED
    http = HttpClient(wrap_attempt=tracing.attempt if tracing is not None else None)
    return Services(
        settings,
        config=config,
        analytics=analytics,
        metrics=Metrics(),
        http=http,
        request_lines=request_lines,
        tracing=tracing,
    )


def create_app(settings: Settings, *, request_lines: RequestLines | None = None) -> web.Application:
    """`request_lines` writes the one log line per request (the CLI builds it on its log stream); without
    it no request lines are written. Raises DataDirInUse when another process holds the data directory."""
    # Before any file is opened: a second server, or a restore, must not share the databases. The workers of
    # `serve --workers N` share them: their supervisor holds the lock.
    if settings.worker_index < 0:
        lock = DataDirLock.acquire(settings.data_dir, role="server", listen=settings.listen_addr)
    else:
        lock = DataDirLock.held_by_parent(settings.data_dir)
    try:
        services = build_services(settings, request_lines)
        token, generated = resolve_admin_token(settings.admin_token, settings.data_dir)
    except BaseException:
        lock.release()
        raise
    pipelines = TenantPipelines(default_registry(), services)
    services.config_reloaded.append(pipelines.refresh)  # a change another replica made rebuilds chains here too
    if settings.temporal_enabled:
        # Imported only when enabled: the Temporal SDK (protobuf, its Rust bridge) costs ~25 MiB of RSS.
        from stages.durable.runtime import TemporalRuntime

        services.temporal = TemporalRuntime(services, pipelines.chain_for)
    try:
        if settings.worker_index <= 0:  # worker 0 applies the files for every worker (they see its writes)
            ConfigApplier(services, pipelines).apply_at_start()
        if settings.host_api_key_enabled and settings.worker_index <= 0:
            _provision_host_key(services)
    except BaseException as exc:
        services.config.close()
        services.analytics.close()
        lock.release()
        if isinstance(exc, ConfigFileInvalid):
            raise StartupRefused(exc.describe()) from None
        if isinstance(exc, CredentialsFileUnsafe):
            raise StartupRefused(str(exc)) from None
        raise

    tracing = services.tracing
    app = web.Application(
        # tracing outermost: its span sees the status of errors request_id_and_errors turned into JSON
        middlewares=[
            *([tracing.middleware(lambda request: request.get(REQUEST_ID, ""))] if tracing is not None else []),
            request_id_and_errors,
        ],
        client_max_size=settings.max_body_bytes,
        # Header caps for aiohttp's parser (it answers 400 before any handler runs when one is exceeded).
        handler_args={
            "max_line_size": settings.max_header_bytes,
            "max_field_size": settings.max_header_bytes,
            "max_headers": settings.max_headers,
        },
    )
    setup_cors(app, settings.cors_origins)
    app[SERVICES] = services
    app[PIPELINES] = pipelines
    app[ADMIN_TOKEN] = token
    app[ADMIN_TOKEN_GENERATED] = generated
    app[DATA_LOCK] = lock
    embeddings = EmbeddingsCodec(max_chars=settings.max_content_chars, max_total_chars=settings.max_total_content_chars)
    chat_routes = {
        "/v1/chat": RoutedEndpoint(services, pipelines, NativeCodec()).handle,
        "/v1/chat/completions": RoutedEndpoint(services, pipelines, OpenAICodec()).handle,
        "/v1/messages": RoutedEndpoint(services, pipelines, AnthropicCodec()).handle,
        "/v1/embeddings": RoutedEndpoint(services, pipelines, embeddings).handle,
    }
    for path, handle in chat_routes.items():
        app.router.add_post(path, handle)
    if settings.lane_enabled and tracing is None:  # a trace's span is aiohttp middleware: traced requests skip the lane
        app[LANE] = Lane(
            chat_routes,
            max_body_bytes=settings.max_body_bytes,
            max_line_bytes=settings.max_header_bytes,
            max_field_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            cors=bool(settings.cors_origins),
        )
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/plan", PlanEndpoint(services, pipelines).handle)
    plans = PlansEndpoint(services, pipelines)
    app.router.add_get("/v1/plans/{plan_id}", plans.get)
    app.router.add_delete("/v1/plans/{plan_id}", plans.delete)
    app.router.add_post("/v1/feedback", FeedbackEndpoint(services).handle)
    if settings.worker_index == 0:  # the DuckDB owner of `serve --workers N`: the other workers' records and reads
        app.router.add_routes(owner_routes(services))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", OpenApiEndpoint().handle)
    # a token from TOKENHUB_ADMIN_TOKEN has no file to rotate: the rotation endpoint refuses it (409)
    live_token = AdminToken(token, path=None if settings.admin_token else settings.data_dir / TOKEN_FILE)
    app.add_subapp(ADMIN_PREFIX, admin_app(services, pipelines, live_token))
    docs = _docs_site(settings)
    app.router.add_get(DOCS_PREFIX, docs.to_folder)
    app.router.add_get(DOCS_PREFIX + "/{path:.*}", docs.serve)
    app[OPERATIONS] = {  # the endpoint objects above carry their own
        **STATUS_OPERATIONS,
        **plans.operations(),
        docs.to_folder: Operation(
            "The documentation site: redirects to /docs/", "docs", security="none", status=308, media=()
        ),
        docs.serve: Operation("The documentation site's files (when built)", "docs", security="none", media=("*/*",)),
    }
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_end_event_streams)
    return app


def _docs_site(settings: Settings) -> StaticFiles:
    """The documentation site (`make docs` builds it into ./site) at /docs/, static and without a token; a
    JSON 404 saying how to build it while it is absent. Same path safety as the admin UI's files."""
    return StaticFiles(
        settings.docs_path,
        headers=DOCS_HEADERS,
        what="documentation",
        missing=f"the documentation site is not built: run `make docs` (it builds {settings.docs_path}/)"
        " or set TOKENHUB_DOCS_DIR",
    )


def _provision_host_key(services: Services) -> None:
    """The host-local API key for tools on this host (store/host_key.py): reused, or created once."""
    data_dir = services.settings.data_dir
    key_id, created = ensure_host_key(services.config.db, data_dir)
    if created:
        services.reload_config_blocking()
        log.info("host_api_key_created", api_key_id=key_id, file=str(data_dir / HOST_KEY_FILE))


def reload_on_sighup(app: web.Application, reread: Callable[[], Settings]) -> None:
    """`tokenhub serve`: SIGHUP re-reads the live settings and re-applies the config file (config_reload.py)."""
    running: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks

    def on_signal() -> None:
        task = asyncio.ensure_future(sighup(app[SERVICES], app[PIPELINES], reread))
        running.add(task)
        task.add_done_callback(running.discard)

    async def install(app: web.Application) -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_signal)

    async def finish(app: web.Application) -> None:
        # A reload that began before the stop ends (applied, audited, logged) before the stores close.
        if running:
            await asyncio.wait(set(running), timeout=app[SERVICES].settings.shutdown_drain_secs)

    app.on_startup.append(install)
    app.on_shutdown.append(finish)


async def _end_event_streams(app: web.Application) -> None:
    # on_shutdown runs before aiohttp waits for open handlers: end the SSE streams so they don't hold
    # the graceful drain for its whole timeout.
    app[SERVICES].events.close()


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    """Start the services' components in order; stop them in reverse. aiohttp runs the part after `yield`
    once in-flight requests have drained, so the record writer's stop flushes everything they recorded."""
    services = app[SERVICES]
    await start_all(services.components)
    yield
    await stop_all(services.components)
    app[DATA_LOCK].release()
    log.info("stopped", records_written=services.records.written)
