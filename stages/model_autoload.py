"""`autoload_models`: a provider (any type: OpenAI, Anthropic and vLLM all list theirs at GET /v1/models) whose
record has it set gets the models it lists registered, and those it stops listing removed again: at start-up,
every TOKENHUB_MODEL_AUTOLOAD_INTERVAL_SECS, and when an admin write turns it on or changes the provider.

Registered like the spec's autoload (weight 5, enabled, free until priced) and persisted in SQLite, marked
as autoloaded; only such rows are ever removed (store/model_autoload.py). Lists can hold what chat cannot use
(OpenAI's whisper, tts, dall-e, moderation): those are skipped, and `*embed*` models are registered as
embedding models where the provider type serves embeddings. A provider that cannot be listed keeps what it
had: a flapping provider must not empty the routing table.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import structlog

from adapters.http import HttpClient
from adapters.model_list import fetch_model_list
from adapters.provider import Provider
from pipeline.errors import DiscoveryFailed
from pipeline.model_ids import ID_PATTERN
from pipeline.types import ProviderInfo
from store.config_store import ConfigStore
from store.model_autoload import Listed, Synced, sync_autoloaded

__all__ = ["NOT_CHAT_MARKERS", "ModelAutoloader", "listed_models"]

log = structlog.get_logger("tokenhub.autoload")
# Families a provider lists that do not answer chat completions (OpenAI's audio, image and moderation models).
NOT_CHAT_MARKERS = ("whisper", "tts", "dall-e", "moderation", "transcribe", "realtime", "gpt-image", "sora")
_ID = re.compile(ID_PATTERN)
_CONTEXT_FIELDS = ("max_model_len", "context_length", "context_window")


def listed_models(entries: Iterable[Mapping[str, Any]], *, embeddings: bool) -> list[Listed]:
    """The entries of a model list worth registering, with their kind and context window."""
    found = []
    for entry in entries:
        model_id = entry["id"]
        lowered = model_id.lower()
        if len(model_id) > 128 or not _ID.match(model_id) or any(m in lowered for m in NOT_CHAT_MARKERS):
            continue
        kind = "embedding" if "embed" in lowered else "chat"
        if kind == "embedding" and not embeddings:
            continue
        context = next((entry[name] for name in _CONTEXT_FIELDS if name in entry), 0)
        found.append(Listed(model_id, kind, context))
    return found


class ModelAutoloader:
    def __init__(
        self,
        *,
        http: HttpClient,
        config: ConfigStore,
        providers: Callable[[], Mapping[str, ProviderInfo]],
        adapters: Callable[[], Mapping[str, Provider]],
        reload: Callable[[], Awaitable[None]],
    ) -> None:
        self._http = http
        self._config = config
        self._providers = providers  # read on each run: providers come and go with admin writes
        self._adapters = adapters
        self._reload = reload
        self._lock = asyncio.Lock()  # the periodic run and an admin write's run never interleave

    async def run_once(self) -> None:
        """Every enabled autoload provider in turn; one that fails is logged and keeps its models."""
        for provider in list(self._providers().values()):
            if not provider.autoload_models or provider.id not in self._adapters():
                continue
            try:
                await self.load(provider.id)
            except DiscoveryFailed as exc:
                log.warning("model_autoload_failed", provider_id=provider.id, reason=exc.message)

    async def load(self, provider_id: str) -> Synced:
        """List one provider's models and bring its autoloaded rows in step; DiscoveryFailed when the list
        cannot be had (nothing changes then)."""
        async with self._lock:
            provider = self._providers().get(provider_id)
            adapter = self._adapters().get(provider_id)
            if provider is None or adapter is None:
                raise DiscoveryFailed(f"provider {provider_id!r} is not enabled and usable: nothing to list")
            entries = await fetch_model_list(self._http, adapter, secret=provider.api_key)
            listed = listed_models(entries, embeddings=adapter.capabilities.embeddings)
            synced = await self._config.call(sync_autoloaded, self._config.db, provider_id, listed)
            if synced.added or synced.removed:
                await self._reload()
                log.info(
                    "models_autoloaded", provider_id=provider_id, added=list(synced.added), removed=list(synced.removed)
                )
            return synced
