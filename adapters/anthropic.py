"""Anthropic Messages API adapter (providers.md §4): the payload, stream and failure vocabulary are in
anthropic_payload.py, anthropic_stream.py; the calls themselves are HttpAdapter's."""

from __future__ import annotations

from typing import Any

from adapters.anthropic_payload import build_payload
from adapters.anthropic_stream import FAILURES, AnthropicEventParser
from adapters.base import HttpAdapter
from adapters.provider import Capabilities
from pipeline.types import ChatRequest

__all__ = ["ANTHROPIC_VERSION", "PROVIDER_TYPE", "AnthropicAdapter", "AnthropicEventParser"]

ANTHROPIC_VERSION = "2023-06-01"


class AnthropicAdapter(HttpAdapter):
    type = "anthropic"
    # A final assistant turn is a prefill the Messages API continues (stripped of trailing whitespace, which
    # it rejects): stream rescue may continue on Anthropic models. Claude reads images and PDFs, by base64 or
    # URL; there is no audio input.
    capabilities = Capabilities(
        prefill=True,
        inputs=frozenset({"vision", "documents"}),
        default_inputs=frozenset({"vision", "documents"}),
        url_inputs=frozenset({"vision", "documents"}),
        media_tokens="anthropic",
    )
    failures = FAILURES
    result_format = "anthropic"
    chat_path = "/v1/messages"
    health_path = "/v1/messages"  # GET answers 405 when the API is up (there is no cheaper unauthenticated probe)
    models_path = "/v1/models?limit=1000"

    def auth_headers(self, key: str) -> dict[str, str]:
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        if key:  # omitted when empty, like OpenAIAdapter's Bearer (a keyless gateway)
            headers["x-api-key"] = key
        return headers

    def new_parser(self) -> AnthropicEventParser:
        return AnthropicEventParser()

    def build_payload(self, model_id: str, request: ChatRequest) -> dict[str, Any]:
        return build_payload(model_id, request)

    def build_stream_payload(self, model_id: str, request: ChatRequest) -> dict[str, Any]:
        payload = build_payload(model_id, request)
        payload["stream"] = True  # usage comes in message_start and message_delta: nothing to ask for
        return payload


PROVIDER_TYPE = AnthropicAdapter.describe("Anthropic Messages API (chat only: no embeddings)")
