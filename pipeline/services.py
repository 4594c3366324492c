"""The shared services, built once at start-up and handed to stage factories and admin handlers."""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import structlog

from adapters.container import localhost_rewrite
from adapters.http import HttpClient, RetryPolicy
from adapters.provider import Provider
from adapters.registry import build_provider
from adapters.vllm_prober import DiscoveredModel, VLLMProber
from pipeline.durability import Durable, NotDurable
from pipeline.events import EventBus
from pipeline.housekeeping import Housekeeping
from pipeline.lifecycle import Component, Hooks
from pipeline.logging import RequestLines, set_log_level
from pipeline.metrics import Metrics
from pipeline.periodic import Periodic
from pipeline.settings import HOT_SETTINGS, Settings
from pipeline.tracing import Tracing
from pipeline.types import ApiKeyInfo, ModelInfo, ProviderInfo
from pipeline.worker_metrics import PUSH_SECS, WorkerMetrics
from stages.bandit import Bandit
from stages.health import HealthTracker
from stages.health_prober import HealthProber
from stages.key_limits import KeyLimits
from stages.key_rotation import INTERVAL_SECS as KEY_ROTATION_SECS
from stages.key_rotation import KeyRotationEnforcer
from stages.learning import BanditRefresher, RecentRequests
from stages.model_autoload import ModelAutoloader
from stages.model_disables import DisabledModel, ModelDisables
from stages.pricing_refresh import PricingRefresher
from stages.recorder import Recorder
from stages.router import Router
from stages.routing_table import RoutingTable, build_table
from stages.shared_bandit import SharedBandit
from stages.shared_events import SharedEvents
from stages.shared_gate import SharedGate, build_shared
from stages.shared_health import SharedHealth
from stages.shared_sync import SyncLoop
from stages.sinks.events import EventsSink
from stages.sinks.key_accounting import KeyAccountingSink
from stages.sinks.learning import LearningSink
from stages.sinks.log_line import LogLineSink
from stages.sinks.metrics import MetricsSink
from stages.sinks.request_log import RequestLogSink
from store.analytics import AnalyticsStore
from store.config_store import ConfigSnapshot, ConfigStore, key_digest
from store.config_watch import ConfigWatcher
from store.idempotency import IdempotencyStore
from store.key_ledger import KeyLedger
from store.log_export import LogExporter
from store.owner_link import OwnerLink, RemoteAnalytics
from store.record_relay import RecordRelay
from store.record_writer import RecordWriter
from store.reservations import LocalReservations, Reservations
from store.retention import Retention
from store.segments import default_replica_id, sanitize_replica_id
from store.vault import Vault, VaultError
from store.vault_crypto import KdfParams

if TYPE_CHECKING:
    from store.redis_link import RedisLink

__all__ = ["ENV_ANTHROPIC_PROVIDER_ID", "ENV_PROVIDER_ID", "ENV_VLLM_PROVIDER_ID", "Services"]

log = structlog.get_logger("tokenhub.services")
ENV_PROVIDER_ID = "openai"
ENV_ANTHROPIC_PROVIDER_ID = "anthropic"
ENV_VLLM_PROVIDER_ID = "vllm"


class Services:
    """The shared services. Configuration the request path reads lives in one immutable `RoutingTable`,
    swapped whole (`self.routing`); `snapshot`, `adapters`, ... are read-only views of the current one.
    `components` is start-up and shutdown as data: started in order, stopped in reverse (pipeline/app.py)."""

    def __init__(
        self,
        settings: Settings,
        *,
        config: ConfigStore,
        analytics: AnalyticsStore | RemoteAnalytics,
        metrics: Metrics,
        http: HttpClient,
        request_lines: RequestLines | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self.tracing = tracing  # None = off; build_chain and the HTTP client checked it when built
        self.config = config
        self.analytics = analytics
        self.metrics = metrics
        self.http = http
        self.retry = RetryPolicy(max_retries=settings.provider_max_retries)
        self.events = EventBus(on_subscriber_dropped=metrics.event_subscribers_dropped.inc)
        self.health = HealthTracker(on_change=self._health_changed, cooldown_secs=settings.breaker_cooldown_secs)
        # models whose provider reported its quota used up (dispatch disables, the Router skips them)
        self.model_disables = ModelDisables(
            disable_secs=settings.model_disable_secs, on_disabled=self._model_disabled, on_enabled=self._model_enabled
        )
        metrics.models_disabled_now.set_function(self.model_disables.count)
        self.bandit = Bandit(half_life=settings.bandit_half_life_requests, seed=settings.bandit_seed or None)
        # Feedback finds a record here without a DuckDB read, and a record still queued for the writer must be
        # here (it is updated in place); older ones are read from the log. It holds what the writer has not
        # stored plus the newest 1,000 (stages/learning.py), not a fixed 10,000 (~8 MB) at any load.
        self.recent_requests = RecentRequests(capacity=1000, unwritten=lambda: self.records.unwritten)
        # It reads the log once every record accepted so far is in it (`records` is built below).
        self.bandit_refresher = BanditRefresher(self.bandit, analytics, settle=lambda: self.records.settle())
        # `serve --workers N`: a worker that does not own the DuckDB file sends its records to the one that does.
        self.owner: OwnerLink | None = analytics.link if isinstance(analytics, RemoteAnalytics) else None
        self.records: RecordWriter | RecordRelay = (
            RecordWriter(
                analytics,
                capacity=settings.record_queue_size,
                on_drop=metrics.store_dropped.labels(op="log_request").inc,
            )
            if self.owner is None
            else RecordRelay(
                self.owner,
                capacity=settings.record_queue_size,
                drain_secs=settings.shutdown_drain_secs + 10,
                on_drop=metrics.store_dropped.labels(op="relay_to_owner").inc,
            )
        )
        # What /metrics answers: under `serve --workers N`, every worker's series (pipeline/worker_metrics.py).
        self.worker_metrics = WorkerMetrics(metrics.registry, worker_index=settings.worker_index, owner=self.owner)
        self.retention = Retention(
            analytics,
            tsdb_days=settings.tsdb_retention_days,
            request_log_days=settings.request_log_retention_days,
            config=config,
            audit_days=settings.audit_retention_days,
        )
        metrics.watch(
            health_states=lambda: {provider: h.state for provider, h in self.health.snapshot().items()},
            record_queue_depth=lambda: self.records.depth,
            event_subscribers=lambda: self.events.subscribers,
            analytics_reopens=lambda: analytics.reopens,
        )
        # Shared hot state across replicas (docs/scaling.md): None = this process's memory only.
        self.redis: RedisLink | None = None
        if settings.redis_url:
            from store.redis_link import RedisLink  # redis-py costs ~9 MiB: only a server that uses it loads it

            self.redis = RedisLink(
                settings.redis_url,
                settings.redis_prefix,
                timeout_secs=settings.redis_timeout_ms / 1000,
                on_state=lambda up: metrics.shared_state_up.set(1 if up else 0),
            )
        # Changes committed by other replicas (PostgreSQL NOTIFY) or workers (a shared SQLite file) reload here;
        # `config_reloaded` hooks (the tenant chains) run after each such reload.
        self.config_reloaded: list[Callable[[], None]] = []
        self.config_watcher = ConfigWatcher(
            config, self.reload_from_elsewhere, on_state=lambda up: metrics.config_store_up.set(1 if up else 0)
        )
        metrics.config_store_up.set(1)
        # Learning and health shared with the other replicas (docs/scaling.md), pushed and pulled in the background.
        self.replica_id = uuid.uuid4().hex[:12]
        self.shared_bandit: SharedBandit | None = None
        self.shared_health: SharedHealth | None = None
        if self.redis is not None:
            self.shared_bandit = SharedBandit(
                self.redis,
                self.bandit,
                metrics,
                replica_id=self.replica_id,
                seed_locally=self.bandit_refresher.refresh_once,
            )
            self.shared_health = SharedHealth(
                self.redis, self.health, self.model_disables, metrics, replica_id=self.replica_id
            )
        # Live events from the other workers and replicas, for this process's /admin/v1/events streams.
        self.shared_events = SharedEvents(self.redis, self.events) if self.redis is not None else None
        self.key_ledger = KeyLedger()  # per-key month-to-date spend and last-used times, in memory
        self.key_limits = KeyLimits()  # per-key requests / tokens per minute
        self.idempotency = IdempotencyStore(settings.idempotency_max_bytes)  # Idempotency-Key answers, in memory
        self.reservations: Reservations = LocalReservations()  # budget holds of requests in flight
        # Scaled out: limits, spend and holds in Redis, these local objects the fallback (stages/shared_gate.py)
        self.shared_gate: SharedGate | None = None
        shared_spend: list[Component] = []
        if self.redis is not None:
            shared = build_shared(self.redis, config, metrics, self.key_limits, settings.shared_budget_on_outage)
            self.shared_gate, self.key_ledger, self.reservations = shared.gate, shared.ledger, shared.reservations
            shared_spend.append(shared.spend)
        metrics.budget_reserved.set_function(lambda: self.reservations.total_usd)
        self.request_lines = request_lines or RequestLines()  # none given: no request lines
        self.vault = _open_vault(settings, config)
        # What happens after each request, in order (learning sets the record's reward before it is queued).
        self.recorder = Recorder(
            [
                LearningSink(
                    self.bandit,
                    self.recent_requests,
                    self.shared_bandit.observed if self.shared_bandit is not None else None,
                ),
                MetricsSink(metrics),
                EventsSink(self.events),
                LogLineSink(self.request_lines),
                RequestLogSink(self.records),
                KeyAccountingSink(
                    self.key_ledger,
                    self.shared_gate or self.key_limits,
                    self.vault,
                    lambda: self.vault_backed,
                    self.reservations,
                ),
                *([self.shared_gate] if self.shared_gate is not None else []),
            ],
            on_failure=lambda sink: metrics.record_sink_failures.labels(sink).inc(),
        )
        # Durable orchestration (docs/temporal.md): none unless TOKENHUB_TEMPORAL_ENABLED, when the composition
        # root installs the Temporal runtime (its activities run the tenant chains built after the services).
        self.temporal: Durable = NotDurable()
        self.housekeeping = Housekeeping(
            config=config,
            analytics=analytics,
            ledger=self.key_ledger,
            vault=self.vault,
            reload_config=self.reload_config,
        )
        for provider in self.env_providers.values():
            # A row (without the key) so models can reference the provider; the key stays in memory.
            config.upsert_provider(dataclasses.replace(provider, api_key=""), api_key=None)
        self.rewrite = localhost_rewrite(settings.container)  # None outside a container (adapters/container.py)
        self.routing: RoutingTable = build_table(
            config.load_snapshot(), self.env_providers, None, self._make_adapter, self.rewrite
        )
        self.router = Router(
            lambda: self.routing,
            health=self.health,
            bandit=self.bandit,
            settings=settings,
            metrics=metrics,
            disables=self.model_disables,
        )
        self.vllm_prober = VLLMProber(
            http,
            lambda: self.adapters.values(),
            self.set_discovered_models,
            interval=settings.vllm_probe_interval_secs,
        )
        self.health_prober = HealthProber(http, self.health, lambda: list(self.adapters.values()))
        self.pricing = PricingRefresher(
            source=settings.pricing_url if settings.pricing_refresh_enabled else "",
            http=http,
            config=config,
            reload=self.reload_config,
            registry=metrics.registry,
        )
        self.key_rotation = KeyRotationEnforcer(
            config=config, events=self.events, key_limits=self.key_limits, reload_config=self.reload_config
        )
        self.autoloader = ModelAutoloader(
            http=http,
            config=config,
            providers=lambda: self.providers,
            adapters=lambda: self.adapters,
            reload=self.reload_config,
        )
        probe_secs = 0.0 if settings.health_probe_disabled else settings.health_probe_interval_secs
        pricing_secs = settings.pricing_refresh_interval_secs
        retention = self.retention
        # Every background job, on the one periodic helper (an interval of 0 turns a job off).
        tsdb_every, log_every = retention.tsdb_every, retention.request_log_every
        if self.owner is not None:  # `serve --workers N`: the DuckDB owner prunes for every worker
            tsdb_every = log_every = 0.0
        self.jobs: list[Periodic] = [
            Periodic("prune-tsdb", tsdb_every, retention.prune_tsdb, first_run_now=False),
            Periodic("prune-log", log_every, retention.prune_request_log, first_run_now=False),
            Periodic("prune-audit", log_every, retention.prune_audit, first_run_now=False),
            Periodic("vllm-prober", settings.vllm_probe_interval_secs, self.vllm_prober.run_once),
            Periodic("health-prober", probe_secs, self.health_prober.run_once),
            Periodic("model-autoload", settings.model_autoload_interval_secs, self.autoloader.run_once),
            Periodic("pricing-refresh", pricing_secs if self.pricing.source else 0.0, self.pricing.run_once),
            # its first run rebuilds the posteriors from the request log
            Periodic("bandit-refresh", settings.bandit_refresh_secs, self._refresh_bandit),
            Periodic("events-heartbeat", settings.events_heartbeat_secs, self._heartbeat, first_run_now=False),
            # its first run catches keys whose rotation period ran out while the server was down
            Periodic("key-rotation", KEY_ROTATION_SECS, self.key_rotation.run_once),
        ]
        if self.owner is not None:  # `serve --workers N`: this worker's series to the owner, for every scrape
            self.jobs.append(Periodic("metrics-push", PUSH_SECS, self.worker_metrics.push))
        sync_loops: list[SyncLoop] = []
        if self.shared_bandit is not None and self.shared_health is not None:
            rounds = [self.shared_health.sync_once, self.shared_bandit.sync_once]
            sync_loops.append(SyncLoop("shared-sync", settings.shared_sync_ms / 1000, rounds))
        # Cluster-wide analytics (docs/scaling.md): None unless TOKENHUB_LOG_EXPORT_DIR.
        self.log_export: LogExporter | None = None
        if analytics.export_dir:
            replica = settings.log_export_replica_id
            self.log_export = LogExporter(
                analytics,
                replica_id=sanitize_replica_id(replica) if replica else default_replica_id(settings.data_dir),
                segment_secs=settings.log_export_segment_secs,
                on_segment=lambda table, rows: metrics.log_export_rows.labels(table).inc(rows),
                on_unreadable=metrics.log_export_unreadable.set,
            )
            # a few checks per segment span, so a closed window is exported (and others' segments seen) soon
            every = min(max(settings.log_export_segment_secs / 4, 1.0), 60.0)
            self.jobs.append(Periodic("log-export", every, self.log_export.run_once))
        # Started in this order, stopped in reverse: the stores close last; the record writer stops (and
        # flushes) after the jobs and after aiohttp has drained in-flight requests; housekeeping seeds
        # per-key spend before serving and flushes the last key last-used times at stop.
        self.components: list[Component] = [
            Hooks("stores", on_stop=self._close_stores),
            Hooks("http", self.http.start, self.http.close),
            self.config_watcher,
            *([Hooks("redis", self.redis.start, self.redis.stop)] if self.redis is not None else []),
            *([Hooks("shared-events", se.start, se.stop)] if (se := self.shared_events) is not None else []),
            # before housekeeping (its start reads spend from the owner); closed after the relay has drained
            *([Hooks("owner-link", self.owner.start, self.owner.close)] if self.owner is not None else []),
            self.housekeeping,
            *shared_spend,  # after housekeeping: its request-log spend may seed Redis on a cold start
            Hooks("record-writer", self.records.start, self.records.stop),
            # stopped before the record writer, which then flushes what its activities recorded
            Hooks("temporal", lambda: self.temporal.start(), lambda: self.temporal.stop()),
            *self.jobs,
            *sync_loops,  # stopped first: its last round pushes what was learned until then
        ]
        if tracing is not None:  # first, so it stops last: the spans of draining requests are exported
            self.components.insert(0, tracing)

    # --- the current routing table, read-only --------------------------------------------------------------

    @property
    def snapshot(self) -> ConfigSnapshot:
        """What routing reads: the stored snapshot plus the discovered vLLM models."""
        return self.routing.snapshot

    @property
    def stored_snapshot(self) -> ConfigSnapshot:
        return self.routing.stored

    @property
    def providers(self) -> Mapping[str, ProviderInfo]:
        return self.routing.providers

    @property
    def adapters(self) -> Mapping[str, Provider]:
        return self.routing.adapters

    @property
    def discovered(self) -> Mapping[str, tuple[DiscoveredModel, ...]]:
        return self.routing.discovered

    @property
    def discovered_models(self) -> dict[str, ModelInfo]:
        return self.routing.discovered_models

    @property
    def vault_locked_providers(self) -> frozenset[str]:
        return self.routing.vault_locked

    @property
    def vault_backed(self) -> frozenset[str]:
        return self.routing.vault_backed

    @property
    def env_providers(self) -> dict[str, ProviderInfo]:
        """Providers configured by environment variables: in memory only, never written to SQLite."""
        settings = self.settings
        providers: dict[str, ProviderInfo] = {}
        if settings.openai_api_key:
            providers[ENV_PROVIDER_ID] = ProviderInfo(
                ENV_PROVIDER_ID, "openai", settings.openai_base_url, True, settings.openai_api_key
            )
        if settings.anthropic_api_key:
            providers[ENV_ANTHROPIC_PROVIDER_ID] = ProviderInfo(
                ENV_ANTHROPIC_PROVIDER_ID, "anthropic", settings.anthropic_base_url, True, settings.anthropic_api_key
            )
        if settings.vllm_endpoints:  # one provider, its endpoints comma-joined (the adapter splits them)
            providers[ENV_VLLM_PROVIDER_ID] = ProviderInfo(
                ENV_VLLM_PROVIDER_ID, "vllm", ",".join(settings.vllm_endpoints), True, settings.vllm_api_key
            )
        return providers

    def _health_changed(self, provider_id: str, old_state: str, new_state: str, reason: str) -> None:
        log.info("provider_health_changed", provider_id=provider_id, old_state=old_state, new_state=new_state)
        self.events.publish(
            "health_change", provider_id=provider_id, old_state=old_state, new_state=new_state, reason=reason
        )

    def _model_disabled(self, entry: DisabledModel) -> None:
        log.warning("model_disabled", model_id=entry.model_id, provider_id=entry.provider_id, until=entry.until)
        self.metrics.models_disabled.labels(provider=entry.provider_id, model=entry.model_id).inc()
        self.events.publish(
            "model_disabled",
            model_id=entry.model_id,
            provider_id=entry.provider_id,
            reason=entry.reason,
            until=entry.until,
        )

    def _model_enabled(self, entry: DisabledModel, why: str) -> None:
        log.info("model_enabled", model_id=entry.model_id, provider_id=entry.provider_id, why=why)
        self.events.publish("model_enabled", model_id=entry.model_id, provider_id=entry.provider_id, reason=why)

    async def reload_config(self) -> None:
        """Re-read SQLite after an admin write has committed and swap the request path's routing table."""
        snapshot = await self.config.call(self.config.load_snapshot)
        self.routing = build_table(snapshot, self.env_providers, self.routing, self._make_adapter, self.rewrite)

    async def reload_from_elsewhere(self) -> None:
        """Another process committed a change: reload as after an admin write here (the vault too, in case
        another replica set it up), then let the hooks catch up."""
        if not self.vault.initialized:
            await self.config.call(self.vault.load, self.config.db)
        await self.reload_config()
        self.metrics.config_reloads.inc()
        for hook in self.config_reloaded:
            hook()

    def reload_config_blocking(self) -> None:
        """`reload_config` before serving (start-up has no event loop yet and nothing else uses the store)."""
        self.routing = build_table(
            self.config.load_snapshot(), self.env_providers, self.routing, self._make_adapter, self.rewrite
        )

    def apply_hot_settings(self, fresh: Settings) -> dict[str, tuple[Any, Any]]:
        """SIGHUP: take the settings that apply without a restart (HOT_SETTINGS) from ``fresh``; the others
        keep their start-up values. Returns name -> (old, new) for each that changed. Rate limits reach the
        request path when the caller rebuilds the tenant chains, the admin limiter on its next request."""
        current = self.settings
        changed = {
            name: (getattr(current, name), getattr(fresh, name))
            for name in HOT_SETTINGS
            if getattr(current, name) != getattr(fresh, name)
        }
        if changed:
            self.settings = current.model_copy(update={name: new for name, (_, new) in changed.items()})
            self.router.settings = self.settings
        if "log_level" in changed:
            set_log_level(self.settings.log_level)
            self.request_lines.set_level(self.settings.log_level)
        return changed

    def set_discovered_models(self, provider_id: str, models: tuple[DiscoveredModel, ...]) -> None:
        """The prober's latest model list for a vLLM provider; swaps the routing table if it changed."""
        table = self.routing.with_discovered(provider_id, models)
        if table is None:
            return
        self.routing = table
        log.info("vllm_models_discovered", provider_id=provider_id, models=[m.id for m in models])

    def _make_adapter(self, provider: ProviderInfo) -> Provider:
        return build_provider(provider, self.http, self.retry)

    async def _refresh_bandit(self) -> int:
        """From the request log alone, or (scaled out) from what every replica learned."""
        if self.shared_bandit is not None:
            return await self.shared_bandit.refresh_once()
        return await self.bandit_refresher.refresh_once()

    async def _heartbeat(self) -> None:
        """A `heartbeat` event keeps idle SSE connections alive and tells a quiet server from a dead one."""
        self.metrics.heartbeats.inc()
        enabled = sum(1 for model in self.snapshot.models.values() if model.enabled)
        self.events.publish("heartbeat", reason=f"providers={len(self.adapters)} models={enabled}")

    def _close_stores(self) -> None:
        self.analytics.close()
        self.config.close()

    def identify(self, presented: str) -> ApiKeyInfo | None:
        """The API key record for a presented key, or None. A dict lookup on the snapshot: no I/O."""
        if not presented:
            return None
        return self.snapshot.keys_by_digest.get(key_digest(presented))

    def readiness(self) -> dict[str, Any]:
        models = self.snapshot.models
        routable = [m for m in models.values() if m.enabled and m.provider_id in self.adapters]
        status: dict[str, Any] = {
            "status": "ok" if routable else "unhealthy",
            "adapters": len(self.adapters),
            "models": len(models),
            "routable_models": len(routable),
            "temporal": self.temporal.status(),  # reported only: Temporal being down never fails /healthz
        }
        if self.redis is not None:  # down is reported, not failed: the replica serves on local state
            status["shared_state"] = self.redis.status()
        if self.settings.worker_index >= 0:  # `serve --workers N`: which process answered
            status["worker"] = {
                "index": self.settings.worker_index,
                "pid": os.getpid(),
                "analytics_owner": self.owner is None,
                "records_buffered": self.records.depth,
            }
        if self.config.database_url:  # likewise: a replica serves its last snapshot while PostgreSQL is away
            status["config_store"] = self.config_watcher.status()
        if not routable and self.vault_locked_providers:
            status["reason"] = f"the vault is locked: {', '.join(sorted(self.vault_locked_providers))} wait for it"
            status["fix"] = 'POST /admin/v1/vault/unlock {"password"} or set TOKENHUB_VAULT_PASSWORD'
        elif not self.adapters:
            status["reason"] = "no provider is configured"
            status["fix"] = (
                'register one: POST /admin/v1/providers {"id","type":"openai","base_url","api_key"} '
                "or set TOKENHUB_OPENAI_API_KEY (and TOKENHUB_OPENAI_BASE_URL), then POST /admin/v1/models"
            )
        elif not routable:
            status["reason"] = "no enabled model belongs to a configured provider"
            status["fix"] = 'POST /admin/v1/models {"id","provider_id","enabled":true,...}'
        return status


def _open_vault(settings: Settings, config: ConfigStore) -> Vault:
    """The vault, attached to the config store when enabled; unlocked now when TOKENHUB_VAULT_PASSWORD is
    set (a wrong password stops start-up). Headless vaults never auto-lock: nobody would unlock them."""
    params = KdfParams(settings.vault_kdf_time_cost, settings.vault_kdf_memory_kib, settings.vault_kdf_parallelism)
    if settings.vault_enabled:
        try:
            params.check()
        except ValueError as exc:
            raise RuntimeError(f"TOKENHUB_VAULT_KDF_*: {exc}") from None
        if params.weak and not settings.vault_kdf_allow_weak:
            raise RuntimeError(
                "TOKENHUB_VAULT_KDF_*: these Argon2id parameters are below OWASP's minimum (e.g. 19456 KiB with"
                " 2 passes); use the defaults, or set TOKENHUB_VAULT_KDF_ALLOW_WEAK=true for tests only"
            )
    if params != KdfParams():
        log.warning("vault_kdf_parameters_changed", time_cost=params.time_cost, memory_kib=params.memory_kib)
    auto_lock = 0.0 if settings.vault_password else settings.vault_auto_lock_secs
    vault = Vault(enabled=settings.vault_enabled, params=params, auto_lock_secs=auto_lock)
    vault.load(config.db)
    if not settings.vault_enabled:
        return vault
    config.vault = vault
    if settings.vault_password:
        log.warning("vault_password_from_environment", note="TOKENHUB_VAULT_PASSWORD is readable by this process")
        try:
            outcome = vault.unlock_blocking(settings.vault_password, config)
        except VaultError as exc:
            raise RuntimeError(f"TOKENHUB_VAULT_PASSWORD does not unlock the vault: {exc.kind}") from None
        log.info("vault_unlocked", source="environment", initialized=outcome.initialized)
    return vault
