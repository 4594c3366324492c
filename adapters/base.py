"""What every HTTP provider adapter shares: the base URL, the auth headers, one call and one stream through
the shared HTTP helper, and usage parsing. A subclass says where to send (`url`), what to send
(`build_payload`, `build_stream_payload`), how to read failures (`classify`) and streams (`new_parser`), and
the shape of its answers (`result_format`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from adapters.errors import ProviderError
from adapters.http import HttpClient, RetryHook, RetryPolicy
from adapters.stream import ChunkParser, UpstreamStream
from pipeline.types import ChatRequest, ChatResult, ProviderInfo, Usage


def normalize_base_url(url: str) -> str:
    """Strip trailing '/', then one trailing '/v1' or '/v2', then trailing '/' (so paths can be appended)."""
    url = url.strip().rstrip("/")
    if url.endswith(("/v1", "/v2")):
        url = url[:-3]
    return url.rstrip("/")


def _count(value: Any) -> int:
    # bool is an int subclass; a token count of True is garbage, not 1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    try:
        return max(int(value), 0)
    except (OverflowError, ValueError):  # inf / nan
        return 0


def parse_usage(body: Mapping[str, Any]) -> Usage | None:
    """OpenAI's prompt/completion_tokens, else the input/output_tokens shape, else None."""
    # dict, not Mapping: parsed JSON is always a dict, and an ABC isinstance check is slow per request.
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return None
    for input_key, output_key in (("prompt_tokens", "completion_tokens"), ("input_tokens", "output_tokens")):
        tokens_in, tokens_out = _count(usage.get(input_key)), _count(usage.get(output_key))
        if tokens_in > 0 or tokens_out > 0:
            return Usage(input_tokens=tokens_in, output_tokens=tokens_out)
    return None


class HttpAdapter:
    type = ""
    result_format = "openai"  # the body's shape: "openai" or "anthropic"
    path = ""  # appended to the base URL for chat calls

    def __init__(self, provider: ProviderInfo, http: HttpClient, retry: RetryPolicy) -> None:
        self.provider = provider
        self.id = provider.id
        self._http = http
        self._retry = retry
        self._key = provider.api_key  # captured at build time; vault changes rebuild the adapter
        self.base_url = normalize_base_url(provider.base_url)
        self.url = self.base_url + self.path
        self._headers: dict[str, str] = {"Content-Type": "application/json", **self.auth_headers(self._key)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, url={self.url!r})"

    def auth_headers(self, key: str) -> dict[str, str]:
        raise NotImplementedError

    def build_payload(self, model_id: str, request: ChatRequest) -> dict[str, Any]:
        raise NotImplementedError

    def build_stream_payload(self, model_id: str, request: ChatRequest) -> dict[str, Any]:
        raise NotImplementedError

    def classify(self, status: int, body: str, headers: Mapping[str, str]) -> ProviderError:
        raise NotImplementedError

    def new_parser(self) -> ChunkParser:
        raise NotImplementedError

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
        return self.stream(response, idle_timeout=idle_timeout, on_malformed=on_malformed)

    def result(self, body: dict[str, Any], raw: bytes, latency_ms: float) -> ChatResult:
        return ChatResult(body=body, usage=parse_usage(body), latency_ms=latency_ms, raw=raw, format=self.result_format)

    def stream(
        self, response: aiohttp.ClientResponse, *, idle_timeout: float, on_malformed: Callable[[], None]
    ) -> UpstreamStream:
        return UpstreamStream(
            response,
            self.new_parser(),
            provider_id=self.id,
            idle_timeout=idle_timeout,
            on_malformed=on_malformed,
            secret=self._key,
        )
