"""The provider types TokenHub speaks, keyed by the `type` of a provider record.

Adding a type is one module (an adapter and its `PROVIDER_TYPE`) and one line in `_TYPES` below; the admin's
list of types and the error for an unknown one follow from this table.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from adapters import anthropic, openai, vllm
from adapters.http import HttpClient, RetryPolicy
from adapters.provider import Provider, ProviderType
from pipeline.types import ProviderInfo

__all__ = ["PROVIDER_TYPES", "build_provider", "provider_type", "provider_type_names"]

_TYPES = (
    openai.PROVIDER_TYPE,
    anthropic.PROVIDER_TYPE,
    vllm.PROVIDER_TYPE,
)
PROVIDER_TYPES: Mapping[str, ProviderType] = MappingProxyType({t.name: t for t in _TYPES})
# Older provider records carry no type: they are OpenAI-compatible.
_UNTYPED = openai.PROVIDER_TYPE.name


def provider_type_names() -> tuple[str, ...]:
    """The type names a provider record may carry, in registry order."""
    return tuple(PROVIDER_TYPES)


def provider_type(name: str) -> ProviderType:
    """The registered type called `name` ("" is OpenAI); ValueError for a type nobody registered."""
    found = PROVIDER_TYPES.get(name or _UNTYPED)
    if found is None:
        raise ValueError(f"unsupported provider type {name!r} (known: {', '.join(PROVIDER_TYPES)})")
    return found


def build_provider(provider: ProviderInfo, http: HttpClient, retry: RetryPolicy) -> Provider:
    """The provider for a record; ValueError when its type is unknown or the record cannot be served."""
    return provider_type(provider.type).factory(provider, http, retry)
