"""The routing table: everything a routing decision reads about configuration, as one immutable value.

It joins the snapshot stored in SQLite, the providers from the environment, the adapters built for them,
the models vLLM endpoints reported, and which providers wait for the vault. The services build a new
table when an admin write commits or discovery finds a change, and swap it as ONE attribute: a request
that read the table sees one consistent version (never the adapters of one reload with the models of
another), and nothing in it is mutated after it is built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import structlog

from adapters.provider import Provider
from adapters.vllm_prober import DiscoveredModel
from pipeline.types import ModelInfo, ProviderInfo
from store.config_store import ConfigSnapshot

__all__ = ["DISCOVERED_MODEL_WEIGHT", "AdapterFactory", "RoutingTable", "build_table"]

log = structlog.get_logger("tokenhub.routing_table")
DISCOVERED_MODEL_WEIGHT = 5
AdapterFactory = Callable[[ProviderInfo], Provider]  # raises ValueError for a provider it cannot serve


@dataclass(frozen=True, slots=True)
class RoutingTable:
    stored: ConfigSnapshot  # as in SQLite
    snapshot: ConfigSnapshot  # `stored` plus the discovered vLLM models: what routing reads
    providers: Mapping[str, ProviderInfo]  # stored and environment providers (environment wins)
    adapters: Mapping[str, Provider]  # provider id -> adapter, for the enabled, usable providers
    discovered: Mapping[str, tuple[DiscoveredModel, ...]]  # provider id -> its latest /v1/models answer
    vault_locked: frozenset[str] = frozenset()  # key in the locked vault: no adapter, not routable
    vault_backed: frozenset[str] = frozenset()  # routable with a key read from the vault

    @property
    def discovered_models(self) -> dict[str, ModelInfo]:
        """The models routable only because a vLLM endpoint lists them (in memory, never in SQLite)."""
        stored = self.stored.models
        return {model_id: m for model_id, m in self.snapshot.models.items() if model_id not in stored}

    def with_discovered(self, provider_id: str, models: tuple[DiscoveredModel, ...]) -> RoutingTable | None:
        """This table with a provider's new model list, or None when nothing changes (an unknown provider,
        or the same list as before)."""
        if provider_id not in self.adapters or self.discovered.get(provider_id) == models:
            return None
        discovered = {**self.discovered, provider_id: models}
        return dataclasses.replace(
            self, discovered=MappingProxyType(discovered), snapshot=_with_discovered(self.stored, discovered)
        )


def build_table(
    stored: ConfigSnapshot,
    env_providers: Mapping[str, ProviderInfo],
    previous: RoutingTable | None,
    make_adapter: AdapterFactory,
    rewrite: Callable[[ProviderInfo], ProviderInfo] | None = None,
) -> RoutingTable:
    """The table for a newly loaded snapshot. An adapter whose provider record is unchanged is kept (with
    its connection state); discovered models of providers that are gone are dropped. `rewrite` maps each
    record to the one connected to (adapters/container.py: localhost inside a container)."""
    providers = {**stored.providers, **env_providers}  # environment wins, as in the original
    if rewrite is not None:
        providers = {provider_id: rewrite(p) for provider_id, p in providers.items()}
    old_adapters = previous.adapters if previous is not None else {}
    adapters: dict[str, Provider] = {}
    locked: set[str] = set()
    for provider in providers.values():
        if not provider.enabled:
            continue
        if provider.key_in_vault and not provider.api_key:
            locked.add(provider.id)  # no adapter until the vault is unlocked; policy says vault_locked
            continue
        current = old_adapters.get(provider.id)
        if current is not None and current.provider == provider:
            adapters[provider.id] = current
            continue
        try:
            adapters[provider.id] = make_adapter(provider)
        except ValueError as exc:
            log.warning("provider_skipped", provider_id=provider.id, reason=str(exc))
    old_discovered = previous.discovered if previous is not None else {}
    discovered = {p: models for p, models in old_discovered.items() if p in adapters}
    return RoutingTable(
        stored=stored,
        snapshot=_with_discovered(stored, discovered),
        providers=MappingProxyType(providers),
        adapters=MappingProxyType(adapters),
        discovered=MappingProxyType(discovered),
        vault_locked=frozenset(locked),
        vault_backed=frozenset(p.id for p in providers.values() if p.key_in_vault and p.id in adapters),
    )


def _with_discovered(stored: ConfigSnapshot, discovered: Mapping[str, tuple[DiscoveredModel, ...]]) -> ConfigSnapshot:
    """The stored snapshot plus discovered models: chat kind, weight 5, free, window from max_model_len.
    A stored model with the same id wins (an admin registers one to set prices, weight or kind)."""
    found: dict[str, ModelInfo] = {}
    for provider_id, models in sorted(discovered.items()):
        for m in models:
            if m.id not in stored.models and m.id not in found:
                found[m.id] = ModelInfo(
                    m.id, provider_id, weight=DISCOVERED_MODEL_WEIGHT, max_context_tokens=m.max_model_len
                )
    return dataclasses.replace(stored, models={**stored.models, **found}) if found else stored
