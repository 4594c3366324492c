"""Anthropic Messages API adapter (providers.md §4): same contract as OpenAIAdapter."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adapters.anthropic_payload import build_payload
from adapters.anthropic_stream import AnthropicEventParser
from adapters.base import HttpAdapter
from adapters.errors import ProviderError, excerpt
from adapters.http import parse_retry_after
from pipeline.types import ChatRequest, ErrorClass

__all__ = ["ANTHROPIC_VERSION", "AnthropicAdapter", "AnthropicEventParser"]

ANTHROPIC_VERSION = "2023-06-01"
# Anthropic's phrasings of "the input does not fit": another model with a larger window may take it.
_OVERFLOW_MARKERS = ("prompt is too long", "prompt_too_long", "exceed context limit")


class AnthropicAdapter(HttpAdapter):
    type = "anthropic"
    path = "/v1/messages"
    result_format = "anthropic"

    def auth_headers(self, key: str) -> dict[str, str]:
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        if key:  # omitted when empty, like OpenAIAdapter's Bearer (a keyless gateway)
            headers["x-api-key"] = key
        return headers

    def new_parser(self) -> AnthropicEventParser:
        return AnthropicEventParser()

    def health_endpoint(self) -> str:
        return self.url  # GET answers 405 when the API is up (there is no cheaper unauthenticated probe)

    def build_payload(self, model_id: str, request: ChatRequest) -> dict[str, Any]:
        return build_payload(model_id, request)

    def build_stream_payload(self, model_id: str, request: ChatRequest) -> dict[str, Any]:
        payload = build_payload(model_id, request)
        payload["stream"] = True  # usage comes in message_start and message_delta: nothing to ask for
        return payload

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
