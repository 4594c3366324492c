"""The shared services, built once at start-up and handed to stage factories and admin handlers."""

from __future__ import annotations

import dataclasses
from typing import Any

import structlog

from adapters.http import HttpClient, RetryPolicy
from adapters.registry import build_adapter
from pipeline.metrics import Metrics
from pipeline.settings import Settings
from pipeline.types import ApiKeyInfo, ProviderInfo
from stages.health import HealthTracker
from store.analytics import AnalyticsStore
from store.config_store import ConfigSnapshot, ConfigStore, key_digest
from store.record_writer import RecordWriter

log = structlog.get_logger("tokenhub.services")
ENV_PROVIDER_ID = "openai"


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
        self.health = HealthTracker()
        self.records = RecordWriter(
            analytics,
            capacity=settings.record_queue_size,
            on_drop=metrics.store_dropped.labels(op="log_request").inc,
        )
        for provider in self.env_providers.values():
            # A row (without the key) so models can reference the provider; the key stays in memory.
            config.upsert_provider(dataclasses.replace(provider, api_key=""), api_key=None)
        self.snapshot: ConfigSnapshot = config.load_snapshot()
        self.providers: dict[str, ProviderInfo] = {}
        self.adapters: dict[str, Any] = {}
        self._apply(self.snapshot)

    @property
    def env_providers(self) -> dict[str, ProviderInfo]:
        """Providers configured by environment variables: in memory only, never written to SQLite."""
        if not self.settings.openai_api_key:
            return {}
        provider = ProviderInfo(
            ENV_PROVIDER_ID, "openai", self.settings.openai_base_url, True, self.settings.openai_api_key
        )
        return {ENV_PROVIDER_ID: provider}

    async def reload_config(self) -> None:
        """Re-read SQLite after an admin write has committed and swap the request path's snapshot."""
        snapshot = await self.config.call(self.config.load_snapshot)
        self._apply(snapshot)

    def _apply(self, snapshot: ConfigSnapshot) -> None:
        providers = {**snapshot.providers, **self.env_providers}  # environment wins, as in the original
        adapters: dict[str, Any] = {}
        for provider in providers.values():
            if not provider.enabled:
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
        self.snapshot = snapshot

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
        if not self.adapters:
            status["reason"] = "no provider is configured"
            status["fix"] = (
                'register one: POST /admin/v1/providers {"id","type":"openai","base_url","api_key"} '
                "or set TOKENHUB_OPENAI_API_KEY (and TOKENHUB_OPENAI_BASE_URL), then POST /admin/v1/models"
            )
        elif not routable:
            status["reason"] = "no enabled model belongs to a configured provider"
            status["fix"] = 'POST /admin/v1/models {"id","provider_id","enabled":true,...}'
        return status
