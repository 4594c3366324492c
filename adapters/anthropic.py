"""Anthropic Messages API adapter (providers.md §4): same contract as OpenAIAdapter."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from adapters.anthropic_payload import build_payload
from adapters.anthropic_stream import AnthropicEventParser
from adapters.errors import ProviderError, excerpt
from adapters.http import HttpClient, RetryHook, RetryPolicy, parse_retry_after
from adapters.openai import normalize_base_url, parse_usage
from adapters.stream import UpstreamStream
from pipeline.types import ChatRequest, ChatResult, ErrorClass, ProviderInfo

__all__ = ["ANTHROPIC_VERSION", "AnthropicAdapter", "AnthropicEventParser"]

ANTHROPIC_VERSION = "2023-06-01"
# Anthropic's phrasings of "the input does not fit": another model with a larger window may take it.
_OVERFLOW_MARKERS = ("prompt is too long", "prompt_too_long", "exceed context limit")


class AnthropicAdapter:
    type = "anthropic"

    def __init__(self, provider: ProviderInfo, http: HttpClient, retry: RetryPolicy) -> None:
        self.provider = provider
        self.id = provider.id
        self._http = http
        self._retry = retry
        self._key = provider.api_key  # captured at build time; vault changes rebuild the adapter
        self.base_url = normalize_base_url(provider.base_url)
        self.url = self.base_url + "/v1/messages"
        self._headers: dict[str, str] = {"Content-Type": "application/json", "anthropic-version": ANTHROPIC_VERSION}
        if self._key:  # omitted when empty, like OpenAIAdapter's Bearer (a keyless gateway)
            self._headers["x-api-key"] = self._key

    def __repr__(self) -> str:
        return f"AnthropicAdapter(id={self.id!r}, url={self.url!r})"

    def health_endpoint(self) -> str:
        return self.url  # GET answers 405 when the API is up (there is no cheaper unauthenticated probe)

    def build_payload(self, model_id: str, request: ChatRequest) -> dict[str, Any]:
        return build_payload(model_id, request)

    def build_stream_payload(self, model_id: str, request: ChatRequest) -> dict[str, Any]:
        payload = build_payload(model_id, request)
        payload["stream"] = True  # usage comes in message_start and message_delta: nothing to ask for
        return payload

    def headers(self, request_id: str = "") -> dict[str, str]:
        return {**self._headers, "X-Request-ID": request_id} if request_id else self._headers

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
        body, raw, latency_ms = await self._http.post_json(
            self.url,
            self.build_payload(model_id, request),
            headers=self.headers(request_id),
            deadline=deadline,
            attempt_timeout=attempt_timeout,
            classify=self.classify,
            retry=self._retry,
            secret=self._key,
            on_retry=on_retry,
        )
        return ChatResult(body=body, usage=parse_usage(body), latency_ms=latency_ms, raw=raw, format="anthropic")

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
            self.url,
            self.build_stream_payload(model_id, request),
            headers=self.headers(request_id),
            deadline=deadline,
            attempt_timeout=attempt_timeout,
            classify=self.classify,
            retry=self._retry,
            secret=self._key,
        )
        return UpstreamStream(
            response,
            AnthropicEventParser(),
            provider_id=self.id,
            idle_timeout=idle_timeout,
            on_malformed=on_malformed,
            secret=self._key,
        )

    def classify(self, status: int, body: str, headers: Mapping[str, str]) -> ProviderError:
        """Map a non-200 response to an error class (providers.md §4). 529 is Anthropic's "overloaded": like a
        429 it says "not now, try elsewhere", so it is rate_limited (health backs off, escalate moves on)."""
        retry_after = None
        if status in (429, 529):
            error_class = ErrorClass.RATE_LIMITED
            retry_after = parse_retry_after(headers.get("Retry-After"))
        elif status >= 500:
            error_class = ErrorClass.TRANSIENT
            retry_after = parse_retry_after(headers.get("Retry-After"))
        elif any(marker in body.lower() for marker in _OVERFLOW_MARKERS):
            error_class = ErrorClass.CONTEXT_OVERFLOW
        else:
            error_class = ErrorClass.FATAL
        return ProviderError(
            error_class,
            f"anthropic HTTP {status}: {excerpt(body, self._key)}",
            status=status,
            retry_after=retry_after,
            secret=self._key,
        )
