"""vLLM adapter: OpenAI's wire format spread round-robin over one deployment's endpoints (providers.md §5).

A provider's base_url holds one or more comma-separated base URLs. Each call takes the next healthy endpoint;
an endpoint that fails at the transport level or answers 5xx is marked down until its `/health` probe
answers 200 again (adapters/vllm_prober.py). When every endpoint is down they are all tried anyway: a
guess beats refusing without trying.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import aiohttp

from adapters.base import normalize_base_url
from adapters.errors import ProviderError, excerpt
from adapters.http import HttpClient, RetryHook, RetryPolicy, parse_retry_after
from adapters.openai import OpenAIAdapter
from adapters.stream import UpstreamStream
from pipeline.types import ChatRequest, ChatResult, ErrorClass, ProviderInfo

__all__ = ["Endpoint", "EndpointPool", "VLLMAdapter", "parse_endpoints"]

T = TypeVar("T")
# vLLM accepts sampling extras (top_k, min_p, repetition_penalty, ...); only Anthropic-only fields are dropped.
_NOT_VLLM = frozenset({"metadata", "anthropic_version", "thinking"})
# Case-insensitive body phrases vLLM (and the servers in front of it) use for an over-long prompt.
_OVERFLOW_PHRASES = (
    "context length",
    "context_length",
    "prompt is too long",
    "input is too long",
    "maximum context",
    "token limit",
    "too many tokens",
)
# One attempt per endpoint call: the adapter's own loop retries, on the next endpoint.
_ONCE = RetryPolicy(max_retries=0)


def parse_endpoints(base_url: str) -> tuple[str, ...]:
    """Comma-separated base URLs, each normalized like an OpenAI base URL; duplicates dropped."""
    endpoints = tuple(dict.fromkeys(normalize_base_url(part) for part in base_url.split(",") if part.strip()))
    if not endpoints:
        raise ValueError("a vllm provider needs at least one base URL")
    return endpoints


@dataclasses.dataclass(eq=False, slots=True)  # identity equality: endpoints are tracked by object
class Endpoint:
    base_url: str
    healthy: bool = True
    last_error: str = ""

    @property
    def chat_url(self) -> str:
        return self.base_url + "/v1/chat/completions"

    @property
    def embeddings_url(self) -> str:
        return self.base_url + "/v1/embeddings"

    @property
    def health_url(self) -> str:
        return self.base_url + "/health"

    @property
    def models_url(self) -> str:
        return self.base_url + "/v1/models"


class EndpointPool:
    """Round-robin over the healthy endpoints (all of them when none is healthy). Single-threaded: the
    counter and flags are only touched on the event loop, so no lock is needed."""

    def __init__(self, base_urls: tuple[str, ...]) -> None:
        self.endpoints = tuple(Endpoint(url) for url in base_urls)
        self._turn = itertools.count()
        self._healthy = self.endpoints

    def pick(self) -> Endpoint:
        candidates = self._healthy or self.endpoints
        return candidates[next(self._turn) % len(candidates)]

    def mark_down(self, endpoint: Endpoint, reason: str) -> None:
        endpoint.last_error = reason
        if endpoint.healthy:
            endpoint.healthy = False
            self._refresh()

    def mark_up(self, endpoint: Endpoint) -> None:
        if not endpoint.healthy:
            endpoint.healthy = True
            self._refresh()

    def _refresh(self) -> None:
        self._healthy = tuple(e for e in self.endpoints if e.healthy)


def _endpoint_fault(err: ProviderError) -> bool:
    """Transport failures, timeouts and 5xx say the endpoint is sick; a 429 or a 4xx say nothing about it."""
    return err.error_class is ErrorClass.TRANSIENT and (err.status is None or err.status >= 500)


class VLLMAdapter(OpenAIAdapter):
    type = "vllm"
    unsupported_params = _NOT_VLLM
    max_stop_sequences = None

    def __init__(self, provider: ProviderInfo, http: HttpClient, retry: RetryPolicy) -> None:
        base_urls = parse_endpoints(provider.base_url)
        super().__init__(dataclasses.replace(provider, base_url=base_urls[0]), http, retry)
        self.provider = provider  # as configured: Services compares it to decide whether to rebuild
        self.pool = EndpointPool(base_urls)
        self._rng = random.Random()

    def __repr__(self) -> str:
        return f"VLLMAdapter(id={self.id!r}, endpoints={[e.base_url for e in self.pool.endpoints]!r})"

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return self.pool.endpoints

    def health_endpoint(self) -> str:
        return self.pool.endpoints[0].health_url

    async def send(
        self,
        model_id: str,
        request: ChatRequest,
        *,
        request_id: str,
        deadline: float,
        attempt_timeout: float,
        on_retry: RetryHook | None = None,
    ) -> ChatResult:
        payload = self.build_payload(model_id, request)
        headers = self.headers(request_id)

        async def call(endpoint: Endpoint) -> tuple[dict[str, Any], bytes, float]:
            return await self._http.post_json(
                endpoint.chat_url,
                payload,
                headers=headers,
                deadline=deadline,
                attempt_timeout=attempt_timeout,
                classify=self.classify,
                retry=_ONCE,
                secret=self._key,
            )

        body, raw, latency_ms = await self._across_endpoints(call, deadline, on_retry)
        return self.result(body, raw, latency_ms)

    async def open_stream(
        self,
        model_id: str,
        request: ChatRequest,
        *,
        request_id: str,
        deadline: float,
        attempt_timeout: float,
        idle_timeout: float,
        on_malformed: Callable[[], None],
    ) -> UpstreamStream:
        payload = self.build_stream_payload(model_id, request)
        headers = self.headers(request_id)

        async def call(endpoint: Endpoint) -> aiohttp.ClientResponse:
            return await self._http.open_stream(
                endpoint.chat_url,
                payload,
                headers=headers,
                deadline=deadline,
                attempt_timeout=attempt_timeout,
                classify=self.classify,
                retry=_ONCE,
                secret=self._key,
            )

        response = await self._across_endpoints(call, deadline, None)
        return self.stream(response, idle_timeout=idle_timeout, on_malformed=on_malformed)

    async def embed(
        self,
        model_id: str,
        body: Mapping[str, Any],
        *,
        request_id: str,
        deadline: float,
        attempt_timeout: float,
    ) -> ChatResult:
        payload = {**body, "model": model_id}
        headers = self.headers(request_id)

        async def call(endpoint: Endpoint) -> tuple[dict[str, Any], bytes, float]:
            return await self._http.post_json(
                endpoint.embeddings_url,
                payload,
                headers=headers,
                deadline=deadline,
                attempt_timeout=attempt_timeout,
                classify=self.classify,
                retry=_ONCE,
                secret=self._key,
            )

        answer, raw, latency_ms = await self._across_endpoints(call, deadline, None)
        return self.result(answer, raw, latency_ms)

    async def _across_endpoints(
        self, call: Callable[[Endpoint], Awaitable[T]], deadline: float, on_retry: RetryHook | None
    ) -> T:
        """The shared retry rules (transient errors only, max_retries, Retry-After cap, deadline), except
        that each retry goes to the next endpoint, at once when that endpoint has not failed in this call
        and after the usual backoff when it has (every endpoint is down, or there is only one)."""
        retry = self._retry
        failed: set[Endpoint] = set()
        endpoint = self.pool.pick()
        attempt = 0
        while True:
            if time.monotonic() >= deadline:  # checked here so an expired deadline is not blamed on the endpoint
                raise ProviderError(ErrorClass.TRANSIENT, "deadline exceeded before the upstream call")
            try:
                return await call(endpoint)
            except ProviderError as err:
                if _endpoint_fault(err):
                    self.pool.mark_down(endpoint, err.message)
                failed.add(endpoint)
                if err.error_class is not ErrorClass.TRANSIENT or attempt >= retry.max_retries:
                    raise
                if err.retry_after is not None and err.retry_after > retry.max_retry_after:
                    raise
                endpoint = self.pool.pick()
                delay = retry.delay(attempt, err.retry_after, self._rng) if endpoint in failed else 0.0
                if time.monotonic() + delay >= deadline:
                    raise
                if on_retry is not None:
                    on_retry(attempt, err, delay)
                if delay:
                    await asyncio.sleep(delay)
                attempt += 1

    def classify(self, status: int, body: str, headers: Mapping[str, str]) -> ProviderError:
        """providers.md §5: 429 rate limited, 5xx transient, the overflow phrases context_overflow."""
        retry_after = None
        lowered = body.lower()
        if status == 429:
            error_class = ErrorClass.RATE_LIMITED
            retry_after = parse_retry_after(headers.get("Retry-After"))
        elif status >= 500:
            error_class = ErrorClass.TRANSIENT
            retry_after = parse_retry_after(headers.get("Retry-After"))
        elif any(phrase in lowered for phrase in _OVERFLOW_PHRASES) or (
            "max_tokens" in lowered and "too large" in lowered
        ):
            error_class = ErrorClass.CONTEXT_OVERFLOW
        else:
            error_class = ErrorClass.FATAL
        return ProviderError(
            error_class,
            f"vllm HTTP {status}: {excerpt(body, self._key)}",
            status=status,
            retry_after=retry_after,
            secret=self._key,
        )
