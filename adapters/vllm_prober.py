"""Background prober for pooled providers (vLLM): `/health` flips each endpoint up or down, `/v1/models` discovers
the models a deployment serves. `run_once` is one round; the services run it at start-up and then every
interval on the periodic helper, off the request path; one bad endpoint or a bad answer never stops it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import structlog

from adapters.endpoints import Endpoint
from adapters.errors import excerpt
from adapters.http import HttpClient, read_capped
from adapters.provider import PooledProvider, Provider

__all__ = ["DiscoveredModel", "VLLMProber", "parse_model_list"]

log = structlog.get_logger("tokenhub.vllm")
_MAX_LIST_BYTES = 4 * 1024 * 1024  # a model list is a few KiB; a bigger answer is not one
_MAX_MODELS = 1000
_MAX_ID_LENGTH = 256


@dataclass(frozen=True, slots=True)
class DiscoveredModel:
    id: str
    max_model_len: int = 0  # 0 = not reported


ModelsFound = Callable[[str, tuple[DiscoveredModel, ...]], None]


def parse_model_list(body: Any) -> tuple[DiscoveredModel, ...]:
    """OpenAI's `{"data": [{"id", "max_model_len"?}, ...]}`; malformed entries are skipped."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise ValueError("no 'data' list")
    found: dict[str, DiscoveredModel] = {}
    for entry in data[:_MAX_MODELS]:
        model_id = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(model_id, str) or not model_id.strip() or len(model_id) > _MAX_ID_LENGTH:
            continue
        length = entry.get("max_model_len")
        valid = isinstance(length, int) and not isinstance(length, bool) and length > 0
        found.setdefault(model_id, DiscoveredModel(model_id, length if valid else 0))
    return tuple(found.values())


class VLLMProber:
    def __init__(
        self,
        http: HttpClient,
        providers: Callable[[], Iterable[Provider]],
        on_models: ModelsFound,
        *,
        interval: float,
        timeout: float | None = None,
    ) -> None:
        self._http = http
        self._providers = providers  # read each cycle: providers come and go with admin writes
        self._on_models = on_models
        self.interval = interval  # how often the services schedule `run_once`
        # a probe must finish well within a cycle, but a tiny test interval must not make probes flaky
        seconds = timeout if timeout is not None else min(5.0, max(interval, 1.0))
        self._timeout = aiohttp.ClientTimeout(total=seconds)
        self._lock = asyncio.Lock()
        self.cycles = 0

    async def run_once(self) -> None:
        """Probe every endpoint of every pooled provider, then refresh each one's discovered models."""
        async with self._lock:  # the periodic round and an explicit call (tests, admin) never interleave
            pooled = [p for p in self._providers() if isinstance(p, PooledProvider)]
            results = await asyncio.gather(*(self._cycle(p) for p in pooled), return_exceptions=True)
            for provider, result in zip(pooled, results, strict=True):
                if isinstance(result, Exception):
                    log.error("vllm_probe_failed", provider_id=provider.id, error=excerpt(repr(result)))
            self.cycles += 1

    async def _cycle(self, provider: PooledProvider) -> None:
        await asyncio.gather(*(self._probe(provider, endpoint) for endpoint in provider.pool.endpoints))
        healthy = [e for e in provider.pool.endpoints if e.healthy]
        lists = await asyncio.gather(*(self._models(provider, endpoint) for endpoint in healthy))
        answered = [models for models in lists if models is not None]
        if not answered:
            return  # nothing reachable: keep what was discovered before rather than flap
        merged: dict[str, DiscoveredModel] = {}
        for models in answered:
            for model in models:
                merged.setdefault(model.id, model)
        self._on_models(provider.id, tuple(merged.values()))

    async def _probe(self, provider: PooledProvider, endpoint: Endpoint) -> None:
        try:
            async with self._http.session.get(endpoint.health_url, timeout=self._timeout) as resp:
                status = resp.status
        except TimeoutError:
            return self._down(provider, endpoint, "health probe timed out")
        except (aiohttp.ClientError, OSError) as exc:
            return self._down(provider, endpoint, f"health probe failed: {excerpt(str(exc) or type(exc).__name__)}")
        if status != 200:
            return self._down(provider, endpoint, f"health probe answered HTTP {status}")
        if not endpoint.healthy:
            log.info("vllm_endpoint_up", provider_id=provider.id, endpoint=endpoint.base_url)
        provider.pool.mark_up(endpoint)

    def _down(self, provider: PooledProvider, endpoint: Endpoint, reason: str) -> None:
        if endpoint.healthy:
            log.warning("vllm_endpoint_down", provider_id=provider.id, endpoint=endpoint.base_url, reason=reason)
        provider.pool.mark_down(endpoint, reason)

    async def _models(self, provider: PooledProvider, endpoint: Endpoint) -> tuple[DiscoveredModel, ...] | None:
        try:
            async with self._http.session.get(
                endpoint.models_url, headers=provider.headers(), timeout=self._timeout
            ) as resp:
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
                raw = await read_capped(resp, _MAX_LIST_BYTES)  # BodyTooLarge is a ValueError
            return parse_model_list(orjson.loads(raw))
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            detail = excerpt(str(exc) or type(exc).__name__)
            log.warning("vllm_discovery_failed", provider_id=provider.id, endpoint=endpoint.base_url, reason=detail)
            return None
