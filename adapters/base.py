"""What every HTTP provider adapter shares: its URLs, the auth headers, `classify`, and the per-call plumbing
(one plain call, one stream, through the shared HTTP helper and its retry loop).

A subclass says what it is (`type`, `capabilities`, `result_format`), where things are (`chat_path`,
`health_path`, `models_path`), how to authenticate (`auth_headers`), what to send (`build_payload`,
`build_stream_payload`), how its failures read (`failures`) and how its streams read (`new_parser`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from adapters.endpoints import normalize_base_url
from adapters.errors import ProviderError
from adapters.failures import FailureRules
from adapters.http import CallOptions, HttpClient, RetryHook, RetryPolicy, Route
from adapters.provider import Capabilities, ProviderType
from adapters.stream import ChunkParser, UpstreamStream
from adapters.usage import parse_usage
from pipeline.types import ChatRequest, ChatResult, ProviderInfo

__all__ = ["HttpAdapter", "normalize_base_url"]


class HttpAdapter:
    type: ClassVar[str]
    capabilities: ClassVar[Capabilities] = Capabilities()
    failures: ClassVar[FailureRules]
    result_format: ClassVar[str] = "openai"  # the body's shape: "openai" or "anthropic"
    chat_path: ClassVar[str]  # appended to the base URL for chat calls
    health_path: ClassVar[str]  # appended to the base URL for the health probe
    models_path: ClassVar[str]  # appended to each base URL for the model list

    def __init__(self, provider: ProviderInfo, http: HttpClient, retry: RetryPolicy) -> None:
        self.provider = provider
        self.id = provider.id
        self._http = http
        self._retry = retry
        self._key = provider.api_key  # captured at build time; vault changes rebuild the adapter
        self.base_url = normalize_base_url(provider.base_url)
        self.url = self.base_url + self.chat_path
        self._headers: dict[str, str] = {"Content-Type": "application/json", **self.auth_headers(self._key)}

    @classmethod
    def describe(cls, summary: str) -> ProviderType:
        """The registry's entry for this class: its name, capabilities and health path are the class's own."""
        return ProviderType(
            name=cls.type, factory=cls, capabilities=cls.capabilities, health_path=cls.health_path, summary=summary
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, url={self.url!r})"

    def auth_headers(self, key: str) -> dict[str, str]:
        raise NotImplementedError

    def build_payload(self, model_id: str, request: ChatRequest) -> dict[str, Any]:
        raise NotImplementedError

    def build_stream_payload(self, model_id: str, request: ChatRequest) -> dict[str, Any]:
        raise NotImplementedError

    def new_parser(self) -> ChunkParser:
        raise NotImplementedError

    def classify(self, status: int, body: str, headers: Mapping[str, str]) -> ProviderError:
        return self.failures.classify(self.type, status, body, headers, self._key)

    def headers(self, request_id: str = "") -> dict[str, str]:
        return {**self._headers, "X-Request-ID": request_id} if request_id else self._headers

    def health_endpoint(self) -> str:
        return self.base_url + self.health_path

    def model_list_urls(self) -> tuple[str, ...]:
        return (self.base_url + self.models_path,)

    def _call_options(self, request_id: str, deadline: float, attempt_timeout: float) -> CallOptions:
        """What every call through the shared HTTP helper carries: auth, limits, classification, retries."""
        return {
            "headers": self.headers(request_id),
            "deadline": deadline,
            "attempt_timeout": attempt_timeout,
            "classify": self.classify,
            "retry": self._retry,
            "secret": self._key,
        }

    def _target(self, path: str) -> str | Route:
        """Where a call to `path` goes: the one base URL here; a pooled adapter returns a Route over its
        endpoints instead, and the shared retry loop walks it."""
        return self.base_url + path

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
        return await self._post(
            self.chat_path,
            self.build_payload(model_id, request),
            request_id=request_id,
            deadline=deadline,
            attempt_timeout=attempt_timeout,
            on_retry=on_retry,
        )

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
        response = await self._http.open_stream(
            self._target(self.chat_path),
            self.build_stream_payload(model_id, request),
            **self._call_options(request_id, deadline, attempt_timeout),
        )
        return UpstreamStream(
            response,
            self.new_parser(),
            provider_id=self.id,
            idle_timeout=idle_timeout,
            timeouts=self._http.timeouts,
            on_malformed=on_malformed,
            secret=self._key,
        )

    async def _post(
        self,
        path: str,
        payload: dict[str, Any],
        *,
        request_id: str,
        deadline: float,
        attempt_timeout: float,
        on_retry: RetryHook | None = None,
    ) -> ChatResult:
        """One JSON call to `path` through the shared retry loop, answered as a ChatResult."""
        body, raw, latency_ms = await self._http.post_json(
            self._target(path),
            payload,
            on_retry=on_retry,
            **self._call_options(request_id, deadline, attempt_timeout),
        )
        return ChatResult(body=body, usage=parse_usage(body), latency_ms=latency_ms, raw=raw, format=self.result_format)
