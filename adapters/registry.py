"""Builds the adapter for a provider record."""

from __future__ import annotations

from typing import TypeAlias

from adapters.anthropic import AnthropicAdapter
from adapters.http import HttpClient, RetryPolicy
from adapters.openai import OpenAIAdapter
from adapters.vllm import VLLMAdapter
from pipeline.types import ProviderInfo

# Every adapter has the same public surface (send, open_stream, classify, health_endpoint, id, type, url).
Adapter: TypeAlias = OpenAIAdapter | AnthropicAdapter

# Empty type means OpenAI-compatible (older provider records carry no type).
_OPENAI_TYPES = frozenset({"openai", ""})


def build_adapter(provider: ProviderInfo, http: HttpClient, retry: RetryPolicy) -> Adapter:
    if provider.type in _OPENAI_TYPES:
        return OpenAIAdapter(provider, http, retry)
    if provider.type == AnthropicAdapter.type:
        return AnthropicAdapter(provider, http, retry)
    if provider.type == VLLMAdapter.type:  # an OpenAIAdapter subclass, so `Adapter` covers it
        return VLLMAdapter(provider, http, retry)
    raise ValueError(f"unsupported provider type {provider.type!r}")
