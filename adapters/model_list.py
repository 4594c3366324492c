"""What a provider says it serves: GET its model list with its own auth (Bearer, or x-api-key +
anthropic-version), each endpoint of a vLLM deployment in turn until one answers. Used by the admin's
discovery (GET /providers/{id}/discover) and by `autoload_models` (stages/model_autoload.py)."""

from __future__ import annotations

import contextlib
from typing import Any

import aiohttp
import orjson

from adapters.errors import excerpt
from adapters.http import BodyTooLarge, HttpClient, read_capped
from adapters.provider import Provider
from pipeline.errors import DiscoveryFailed

__all__ = ["LIST_TIMEOUT", "fetch_model_list", "model_entries"]

LIST_TIMEOUT = aiohttp.ClientTimeout(total=10)
_MAX_LIST_BYTES = 4 * 1024 * 1024  # a model list is KiBs; more is not one
_MAX_MODELS = 2000
_INT_FIELDS = ("context_length", "max_model_len", "context_window")


async def fetch_model_list(http: HttpClient, adapter: Provider, *, secret: str) -> list[dict[str, Any]]:
    """The provider's models as entries (`model_entries`); DiscoveryFailed (a 502) when no URL answers
    with a model list. `secret` (the provider's key) is scrubbed from every message."""
    headers = adapter.headers()
    failure: DiscoveryFailed | None = None
    for url in adapter.model_list_urls():
        try:
            return model_entries(await _get_json(http, url, headers, adapter.id, secret))
        except DiscoveryFailed as exc:
            failure = exc
    if failure is None:
        raise DiscoveryFailed(f"provider {adapter.id!r} lists no model URL")
    raise failure


async def _get_json(http: HttpClient, url: str, headers: dict[str, str], provider_id: str, secret: str) -> Any:
    raw: bytes | None = None  # None: the body was over the size limit
    try:
        async with http.session.get(url, headers=headers, timeout=LIST_TIMEOUT) as resp:
            status = resp.status
            with contextlib.suppress(BodyTooLarge):
                raw = await read_capped(resp, _MAX_LIST_BYTES)
    except TimeoutError:
        raise DiscoveryFailed(f"provider {provider_id!r} did not answer within 10 s") from None
    except (aiohttp.ClientError, OSError) as exc:
        detail = excerpt(str(exc) or type(exc).__name__, secret)
        raise DiscoveryFailed(f"provider {provider_id!r} is unreachable: {detail}") from None
    if status != 200:
        body = excerpt(raw.decode(errors="replace"), secret) if raw is not None else "(an oversized body)"
        raise DiscoveryFailed(f"provider {provider_id!r} returned HTTP {status}: {body}", upstream_status=status)
    if raw is None:
        raise DiscoveryFailed(f"provider {provider_id!r} sent a model list larger than {_MAX_LIST_BYTES} bytes")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise DiscoveryFailed(f"provider {provider_id!r} answered with something that is not JSON") from None


def model_entries(answer: Any) -> list[dict[str, Any]]:
    """OpenAI/vLLM `{"data": [{"id", "owned_by", "max_model_len"?}]}`, Anthropic `{"data": [{"id",
    "display_name"}]}`, or a bare list; entries without a string id are skipped."""
    data = answer.get("data") if isinstance(answer, dict) else answer
    if not isinstance(data, list):
        raise DiscoveryFailed("the provider's answer holds no model list ('data')")
    found: dict[str, dict[str, Any]] = {}
    for item in data[:_MAX_MODELS]:
        model_id = item.get("id") if isinstance(item, dict) else None
        if not isinstance(model_id, str) or not model_id.strip() or len(model_id) > 256 or model_id in found:
            continue
        entry: dict[str, Any] = {"id": model_id}
        for name in ("owned_by", "display_name"):
            if isinstance(value := item.get(name), str):
                entry[name] = value[:256]
        for name in _INT_FIELDS:
            value = item.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                entry[name] = value
        found[model_id] = entry
    return list(found.values())
