"""Builds the adapter for a provider record."""

from __future__ import annotations

from adapters.anthropic import AnthropicAdapter
from adapters.base import HttpAdapter
from adapters.http import HttpClient, RetryPolicy
from adapters.openai import OpenAIAdapter
from adapters.vllm import VLLMAdapter
from pipeline.types import ProviderInfo

# Empty type means OpenAI-compatible (older provider records carry no type).
_OPENAI_TYPES = frozenset({"openai", ""})


def build_adapter(provider: ProviderInfo, http: HttpClient, retry: RetryPolicy) -> HttpAdapter:
    if provider.type in _OPENAI_TYPES:
        return OpenAIAdapter(provider, http, retry)
    if provider.type == AnthropicAdapter.type:
        return AnthropicAdapter(provider, http, retry)
    if provider.type == VLLMAdapter.type:
        return VLLMAdapter(provider, http, retry)
    raise ValueError(f"unsupported provider type {provider.type!r}")
