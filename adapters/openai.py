"""OpenAI chat-completions adapter; also serves any OpenAI-compatible host."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adapters.errors import ProviderError, excerpt
from adapters.http import HttpClient, RetryHook, RetryPolicy, parse_retry_after
from pipeline.types import ChatRequest, ChatResult, ErrorClass, Message, ProviderInfo, Usage

__all__ = ["OpenAIAdapter", "normalize_base_url", "parse_usage"]

# Keys the adapter owns; a client's `parameters` must not override them.
_RESERVED_PARAMS = frozenset({"model", "messages", "stream"})


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


def _message(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls is not None:
        out["tool_calls"] = message.tool_calls
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    if message.name:
        out["name"] = message.name
    return out


class OpenAIAdapter:
    type = "openai"

    def __init__(self, provider: ProviderInfo, http: HttpClient, retry: RetryPolicy) -> None:
        self.provider = provider
        self.id = provider.id
        self._http = http
        self._retry = retry
        self._key = provider.api_key  # captured at build time; vault changes rebuild the adapter
        self.base_url = normalize_base_url(provider.base_url)
        self.url = self.base_url + "/v1/chat/completions"
        self._headers: dict[str, str] = {"Content-Type": "application/json"}
        if self._key:
            self._headers["Authorization"] = f"Bearer {self._key}"

    def __repr__(self) -> str:
        return f"OpenAIAdapter(id={self.id!r}, url={self.url!r})"

    def health_endpoint(self) -> str:
        return self.base_url + "/v1/models"

    def build_payload(self, model_id: str, request: ChatRequest) -> dict[str, Any]:
        payload: dict[str, Any] = {"model": model_id, "messages": [_message(m) for m in request.messages]}
        for key, value in request.parameters.items():
            if key not in _RESERVED_PARAMS:
                payload[key] = value
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
        return ChatResult(body=body, usage=parse_usage(body), latency_ms=latency_ms, raw=raw)

    def classify(self, status: int, body: str, headers: Mapping[str, str]) -> ProviderError:
        """Map a non-200 response to an error class (providers.md §3)."""
        retry_after = None
        lowered = body.lower()
        if status == 429:
            error_class = ErrorClass.RATE_LIMITED
            retry_after = parse_retry_after(headers.get("Retry-After"))
        elif status >= 500:
            error_class = ErrorClass.TRANSIENT
            retry_after = parse_retry_after(headers.get("Retry-After"))
        elif (
            "context_length_exceeded" in lowered
            or "context length" in lowered
            or (status == 400 and "max_tokens" in lowered and "too large" in lowered)
        ):
            error_class = ErrorClass.CONTEXT_OVERFLOW
        else:
            # Includes 400 budget_exceeded: ErrorClass has no budget class, so it is not retried either.
            error_class = ErrorClass.FATAL
        return ProviderError(
            error_class,
            f"openai HTTP {status}: {excerpt(body, self._key)}",
            status=status,
            retry_after=retry_after,
            secret=self._key,
        )
