"""The contract between the router and a provider, and the description of a provider type.

The stages, the probers and the admin know a provider only through `Provider`: they never ask which class
it is. What a type can do beyond chat is in its `Capabilities` (data, for the admin and the policy) and,
for the code that uses it, in the narrower protocols `EmbeddingProvider` and `PooledProvider`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from adapters.endpoints import EndpointPool
from adapters.errors import ProviderError
from adapters.http import HttpClient, RetryHook, RetryPolicy
from pipeline.types import ChatRequest, ChatResult, ModelInfo, ProviderInfo, StreamDelta

__all__ = [
    "Capabilities",
    "ChatStream",
    "EmbeddingProvider",
    "PooledProvider",
    "Provider",
    "ProviderFactory",
    "ProviderType",
    "supports_prefill",
]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a provider type does besides chat (send and stream, which every type does)."""

    embeddings: bool = False  # POST /v1/embeddings: an EmbeddingProvider; policy routes embedding models here
    discovery: bool = False  # a PooledProvider: several endpoints, each probed; its listed models are routable
    # Its models continue an assistant prefill (a request with `continue_final`) from its last character
    # instead of answering afresh: the default of each model's `supports_prefill` (stream rescue).
    prefill: bool = False
    # Media (pipeline.types.MEDIA_CAPABILITIES values) the type's payload can carry; what its models read
    # unless a model's own `capabilities` say otherwise; and which of them it can pass by URL.
    inputs: frozenset[str] = frozenset()
    default_inputs: frozenset[str] = frozenset()
    url_inputs: frozenset[str] = frozenset()
    media_tokens: str = "openai"  # how its models count image tokens (pipeline.media.media_tokens)


class ChatStream(Protocol):
    """An open upstream stream: iterate for normalized deltas, then `release` (done) or `close` (abort)."""

    def __aiter__(self) -> AsyncIterator[StreamDelta]: ...

    def close(self) -> None: ...

    def release(self) -> None: ...


@runtime_checkable
class Provider(Protocol):
    """One configured provider, built from its `ProviderInfo` by its type's factory.

    `send` and `open_stream` take the normalized request and the provider's own model id; every failure
    they raise is a `ProviderError` already classified (`classify` is how: it maps a non-200 answer to
    context_overflow | rate_limited | transient | fatal, with Retry-After). `deadline` is absolute
    time.monotonic(); transient failures are retried within it by the shared HTTP helper."""

    @property
    def id(self) -> str: ...

    @property
    def type(self) -> str: ...

    @property
    def provider(self) -> ProviderInfo:
        """The record it was built from: a different record means a rebuild."""
        ...

    @property
    def capabilities(self) -> Capabilities: ...

    def headers(self, request_id: str = "") -> dict[str, str]:
        """Content-Type and the provider's auth headers (for model listing and probes that need them)."""
        ...

    async def send(
        self,
        model_id: str,
        request: ChatRequest,
        *,
        request_id: str,
        deadline: float,
        attempt_timeout: float,
        on_retry: RetryHook | None = None,
    ) -> ChatResult: ...

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
    ) -> ChatStream: ...

    def classify(self, status: int, body: str, headers: Mapping[str, str]) -> ProviderError: ...

    def health_endpoint(self) -> str:
        """The URL the health prober GETs without credentials ("" = not probed)."""
        ...

    def model_list_urls(self) -> tuple[str, ...]:
        """Where the provider lists the models it serves (GET with `headers()`), tried in order."""
        ...


@runtime_checkable
class EmbeddingProvider(Provider, Protocol):
    """A provider whose type has `capabilities.embeddings`."""

    async def embed(
        self,
        model_id: str,
        body: Mapping[str, Any],
        *,
        request_id: str,
        deadline: float,
        attempt_timeout: float,
    ) -> ChatResult:
        """The client's embeddings body as given, `model` set to `model_id`; the answer passes through."""
        ...


@runtime_checkable
class PooledProvider(Provider, Protocol):
    """A provider whose type has `capabilities.discovery`: its endpoints are probed one by one (up or down)
    and the models they list become routable without being registered."""

    @property
    def pool(self) -> EndpointPool: ...


ProviderFactory = Callable[[ProviderInfo, HttpClient, RetryPolicy], Provider]


@dataclass(frozen=True, slots=True)
class ProviderType:
    """A provider type as the registry knows it, before any provider of that type exists."""

    name: str  # the `type` of a provider record
    factory: ProviderFactory  # raises ValueError for a record it cannot serve (no base URL, ...)
    capabilities: Capabilities
    health_path: str  # appended to the (first) base URL for the health probe
    summary: str  # one line for the admin and the docs


def supports_prefill(model: ModelInfo, provider: Provider) -> bool:
    """Whether stream rescue may continue an answer on `model`: its own `supports_prefill`, else its type's."""
    return provider.capabilities.prefill if model.supports_prefill is None else model.supports_prefill
