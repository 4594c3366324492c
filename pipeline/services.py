"""The shared services, built once at start-up and handed to stage factories and admin handlers."""

from __future__ import annotations

import dataclasses
from typing import Any

import structlog

from adapters.http import HttpClient, RetryPolicy
from adapters.registry import build_adapter
from adapters.vllm_prober import DiscoveredModel, VLLMProber
from pipeline.events import EventBus
from pipeline.housekeeping import Housekeeping
from pipeline.metrics import Metrics
from pipeline.settings import Settings
from pipeline.types import ApiKeyInfo, ModelInfo, ProviderInfo
from stages.bandit import Bandit
from stages.health import HealthTracker
from stages.health_prober import HealthProber
from stages.key_limits import KeyLimits
from stages.learning import BanditRefresher, RecentRequests
from stages.pricing_refresh import PricingRefresher
from store.analytics import AnalyticsStore
from store.config_store import ConfigSnapshot, ConfigStore, key_digest
from store.key_ledger import KeyLedger
from store.record_writer import RecordWriter
from store.retention import Retention
from store.vault import Vault, VaultError
from store.vault_crypto import KdfParams

log = structlog.get_logger("tokenhub.services")
ENV_PROVIDER_ID = "openai"
ENV_ANTHROPIC_PROVIDER_ID = "anthropic"
ENV_VLLM_PROVIDER_ID = "vllm"
DISCOVERED_MODEL_WEIGHT = 5


class Services:
    def __init__(
        self,
        settings: Settings,
        *,
        config: ConfigStore,
        analytics: AnalyticsStore,
        metrics: Metrics,
        http: HttpClient,
    ) -> None:
        self.settings = settings
        self.config = config
        self.analytics = analytics
        self.metrics = metrics
        self.http = http
        self.retry = RetryPolicy(max_retries=settings.provider_max_retries)
        self.events = EventBus(on_subscriber_dropped=metrics.event_subscribers_dropped.inc)
        self.health = HealthTracker(on_change=self._health_changed, cooldown_secs=settings.breaker_cooldown_secs)
        self.bandit = Bandit(half_life_secs=settings.bandit_half_life_secs, seed=settings.bandit_seed or None)
        self.recent_requests = RecentRequests()
        self.bandit_refresher = BanditRefresher(self.bandit, analytics, interval_secs=settings.bandit_refresh_secs)
        self.records = RecordWriter(
            analytics,
            capacity=settings.record_queue_size,
            on_drop=metrics.store_dropped.labels(op="log_request").inc,
        )
        self.retention = Retention(
            analytics, tsdb_days=settings.tsdb_retention_days, request_log_days=settings.request_log_retention_days
        )
        metrics.watch(
            health_states=lambda: {provider: h.state for provider, h in self.health.snapshot().items()},
            record_queue_depth=lambda: self.records.depth,
            event_subscribers=lambda: self.events.subscribers,
        )
        self.key_ledger = KeyLedger()  # per-key month-to-date spend and last-used times, in memory
        self.key_limits = KeyLimits()  # per-key requests / tokens per minute
        self.vault = _open_vault(settings, config)
        self.vault_locked_providers: frozenset[str] = frozenset()  # key in the locked vault: not routable
        self.vault_backed: frozenset[str] = frozenset()  # routable with a key read from the vault
        self.housekeeping = Housekeeping(self)
        for provider in self.env_providers.values():
            # A row (without the key) so models can reference the provider; the key stays in memory.
            config.upsert_provider(dataclasses.replace(provider, api_key=""), api_key=None)
        self.snapshot: ConfigSnapshot = config.load_snapshot()
        self.stored_snapshot = self.snapshot  # as in SQLite; `snapshot` adds the discovered vLLM models
        self.discovered: dict[str, tuple[DiscoveredModel, ...]] = {}  # provider id -> its /v1/models answer
        self.providers: dict[str, ProviderInfo] = {}
        self.adapters: dict[str, Any] = {}
        self._apply(self.snapshot)
        self.vllm_prober = VLLMProber(
            http,
            lambda: self.adapters.values(),
            self.set_discovered_models,
            interval=settings.vllm_probe_interval_secs,
        )
        self.health_prober = HealthProber(
            http,
            self.health,
            lambda: list(self.adapters.values()),
            interval_secs=0.0 if settings.health_probe_disabled else settings.health_probe_interval_secs,
        )
        self.pricing = PricingRefresher(
            source=settings.pricing_url if settings.pricing_refresh_enabled else "",
            http=http,
            config=config,
            reload=self.reload_config,
            registry=metrics.registry,
            interval_secs=settings.pricing_refresh_interval_secs,
        )

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

    async def reload_config(self) -> None:
        """Re-read SQLite after an admin write has committed and swap the request path's snapshot."""
        snapshot = await self.config.call(self.config.load_snapshot)
        self._apply(snapshot)

    def _apply(self, snapshot: ConfigSnapshot) -> None:
        providers = {**snapshot.providers, **self.env_providers}  # environment wins, as in the original
        adapters: dict[str, Any] = {}
        locked: set[str] = set()
        for provider in providers.values():
            if not provider.enabled:
                continue
            if provider.key_in_vault and not provider.api_key:
                locked.add(provider.id)  # no adapter until the vault is unlocked; policy says vault_locked
                continue
            current = self.adapters.get(provider.id)
            if current is not None and current.provider == provider:
                adapters[provider.id] = current  # unchanged: keep it
                continue
            try:
                adapters[provider.id] = build_adapter(provider, self.http, self.retry)
            except ValueError as exc:
                log.warning("provider_skipped", provider_id=provider.id, reason=str(exc))
        self.providers = providers
        self.adapters = adapters
        self.vault_locked_providers = frozenset(locked)
        self.vault_backed = frozenset(p.id for p in providers.values() if p.key_in_vault and p.id in adapters)
        self.discovered = {p: models for p, models in self.discovered.items() if p in adapters}
        self.stored_snapshot = snapshot
        self.snapshot = self._with_discovered(snapshot)

    def set_discovered_models(self, provider_id: str, models: tuple[DiscoveredModel, ...]) -> None:
        """The prober's latest model list for a vLLM provider; swaps the request path's snapshot if it changed."""
        if provider_id not in self.adapters or self.discovered.get(provider_id) == models:
            return
        self.discovered[provider_id] = models
        self.snapshot = self._with_discovered(self.stored_snapshot)
        log.info("vllm_models_discovered", provider_id=provider_id, models=[m.id for m in models])

    @property
    def discovered_models(self) -> dict[str, ModelInfo]:
        """The models routable only because a vLLM endpoint lists them (in memory, never in SQLite)."""
        stored = self.stored_snapshot.models
        return {model_id: m for model_id, m in self.snapshot.models.items() if model_id not in stored}

    def _with_discovered(self, stored: ConfigSnapshot) -> ConfigSnapshot:
        """The stored snapshot plus discovered models: chat kind, weight 5, free, window from max_model_len.
        A stored model with the same id wins (an admin registers one to set prices, weight or kind)."""
        found: dict[str, ModelInfo] = {}
        for provider_id, models in sorted(self.discovered.items()):
            for m in models:
                if m.id not in stored.models and m.id not in found:
                    found[m.id] = ModelInfo(
                        m.id, provider_id, weight=DISCOVERED_MODEL_WEIGHT, max_context_tokens=m.max_model_len
                    )
        return dataclasses.replace(stored, models={**stored.models, **found}) if found else stored

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
        }
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
