"""OpenAI chat-completions adapter; also serves any OpenAI-compatible host."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from adapters.base import HttpAdapter
from adapters.errors import ProviderError, excerpt
from adapters.failures import FailureRules
from adapters.provider import Capabilities
from adapters.sse import SseEvent
from adapters.stream import malformed
from adapters.usage import parse_usage
from pipeline.types import ChatRequest, ChatResult, ErrorClass, MediaPart, Message, StreamDelta

__all__ = ["PROVIDER_TYPE", "OpenAIAdapter", "OpenAIChunkParser"]

# Keys the adapter owns; a client's `parameters` must not override them.
_RESERVED_PARAMS = frozenset({"model", "messages", "stream", "stream_options"})
# Parameters other providers' clients send that OpenAI rejects ("Unrecognized request argument"): dropped.
_NOT_OPENAI = frozenset({"top_k", "metadata", "anthropic_version", "thinking"})
# providers.md §3. Quota errors (429 insufficient_quota, 400 budget_exceeded) are budget_exceeded (failures.py).
_FAILURES = FailureRules(
    overflow_phrases=("context_length_exceeded", "context length"),
    budget_overflow_statuses=frozenset({400}),
)


def _message(message: Message) -> dict[str, Any]:
    content: Any = [_part(p) for p in message.parts] if message.parts else message.content
    out: dict[str, Any] = {"role": message.role, "content": content}
    if message.tool_calls is not None:
        out["tool_calls"] = message.tool_calls
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    if message.name:
        out["name"] = message.name
    return out


def _part(part: str | MediaPart) -> dict[str, Any]:
    """A content part in OpenAI's shapes: an image by URL as given or as a data URI, a PDF as a `file` part
    with `file_data`, audio as `input_audio`. A document by URL has no OpenAI form: routing never sends one
    here (this type's `url_inputs` lacks documents)."""
    if isinstance(part, str):
        return {"type": "text", "text": part}
    data_uri = f"data:{part.media_type};base64,{part.data}"
    if part.kind == "image":
        image: dict[str, Any] = {"url": part.url or data_uri}
        if part.detail:
            image["detail"] = part.detail
        return {"type": "image_url", "image_url": image}
    if part.kind == "document":
        name = part.filename or part.title or "document.pdf"
        return {"type": "file", "file": {"filename": name, "file_data": data_uri}}
    audio_format = "mp3" if part.media_type == "audio/mpeg" else "wav"
    return {"type": "input_audio", "input_audio": {"data": part.data, "format": audio_format}}


class OpenAIAdapter(HttpAdapter):
    type = "openai"
    # Current OpenAI chat models read images and PDFs; audio only the audio models (set per model).
    capabilities = Capabilities(
        embeddings=True,
        inputs=frozenset({"vision", "documents", "audio"}),
        default_inputs=frozenset({"vision", "documents"}),
        url_inputs=frozenset({"vision"}),
    )
    failures = _FAILURES
    chat_path = "/v1/chat/completions"
    health_path = "/v1/models"  # an unauthenticated GET answers 401 when the API is up
    models_path = "/v1/models"
    embeddings_path = "/v1/embeddings"
    unsupported_params: frozenset[str] = _NOT_OPENAI
    max_stop_sequences: int | None = 4
    # Sent with a `continue_final` request (a prefill to continue). OpenAI has no such thing (its models answer
    # a trailing assistant message afresh, so its type does not declare `prefill`); an OpenAI-compatible host
    # that continues one as is (llama.cpp, ...) may be marked `supports_prefill` per model.
    prefill_fields: tuple[tuple[str, Any], ...] = ()

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"} if key else {}

    def new_parser(self) -> OpenAIChunkParser:
        return OpenAIChunkParser()

    def build_payload(self, model_id: str, request: ChatRequest) -> dict[str, Any]:
        payload: dict[str, Any] = {"model": model_id, "messages": [_message(m) for m in request.messages]}
        unsupported = self.unsupported_params
        for key, value in request.parameters.items():
            if key not in _RESERVED_PARAMS and key not in unsupported:
                payload[key] = value
        if request.continue_final:
            payload.update(self.prefill_fields)  # (name, value) pairs
        stop = payload.get("stop")
        if self.max_stop_sequences and isinstance(stop, list) and len(stop) > self.max_stop_sequences:
            payload["stop"] = stop[: self.max_stop_sequences]  # OpenAI rejects more; the first ones matter most
        return payload

    def build_stream_payload(self, model_id: str, request: ChatRequest) -> dict[str, Any]:
        payload = self.build_payload(model_id, request)
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}  # the final chunk then carries usage
        return payload

    async def embed(
        self,
        model_id: str,
        body: Mapping[str, Any],
        *,
        request_id: str,
        deadline: float,
        attempt_timeout: float,
    ) -> ChatResult:
        """POST <base>/v1/embeddings: the client's fields as given, `model` set to the routed model id."""
        return await self._post(
            self.embeddings_path,
            {**body, "model": model_id},
            request_id=request_id,
            deadline=deadline,
            attempt_timeout=attempt_timeout,
        )


PROVIDER_TYPE = OpenAIAdapter.describe("OpenAI, or any OpenAI-compatible API (chat completions, embeddings)")


class OpenAIChunkParser:
    """`data: {chat.completion.chunk}` events up to `data: [DONE]`. Only choice 0 is relayed."""

    __slots__ = ("done", "finished")

    def __init__(self) -> None:
        self.done = False
        self.finished = False

    def feed(self, event: SseEvent) -> list[StreamDelta]:
        data = event.data
        if data.strip() == "[DONE]":
            self.done = True
            return []
        try:
            chunk = orjson.loads(data)
        except ValueError:
            raise malformed("not JSON", data) from None
        if not isinstance(chunk, dict):
            raise malformed("not a JSON object", data)
        if "error" in chunk:
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise ProviderError(ErrorClass.TRANSIENT, f"upstream error mid-stream: {excerpt(str(message))}")
        choices = chunk.get("choices")
        usage = parse_usage(chunk)
        if not isinstance(choices, list):
            if usage is None:
                raise malformed("no choices", data)
            return [StreamDelta(usage=usage)]
        delta = _choice_delta(choices, data)
        if delta is None:
            return [StreamDelta(usage=usage)] if usage else []
        delta.usage = usage
        if delta.finish_reason:
            self.finished = True
        return [delta] if delta.has_token or usage else []


def _choice_delta(choices: list[Any], data: str) -> StreamDelta | None:
    choice = next((c for c in choices if isinstance(c, dict) and c.get("index", 0) == 0), None)
    if choice is None:
        return None
    delta = choice.get("delta") or {}
    if not isinstance(delta, dict):
        raise malformed("delta is not an object", data)
    content = delta.get("content")
    reasoning = delta.get("reasoning_content") or delta.get("reasoning")
    tool_calls = delta.get("tool_calls")
    finish = choice.get("finish_reason")
    return StreamDelta(
        content=content if isinstance(content, str) else "",
        reasoning=reasoning if isinstance(reasoning, str) else "",
        tool_calls=tool_calls if isinstance(tool_calls, list) and tool_calls else None,
        finish_reason=finish if isinstance(finish, str) and finish else None,
    )
