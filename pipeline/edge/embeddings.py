"""OpenAI-compatible embeddings: POST /v1/embeddings, through the same tenant pipeline as chat.

The body's inputs go to the provider as given (in `parameters`); TokenHub only validates them, holds them
to the content caps chat messages have (TOKENHUB_MAX_CONTENT_CHARS per input, TOKENHUB_MAX_TOTAL_CONTENT_CHARS
per request; a token id counts as 4 characters, the ratio of the token estimate), and estimates their tokens
for routing. With `auto` TokenHub picks among models of kind "embedding"; a named model goes to its own
provider (stages/router.py). Never streamed.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NoReturn

import orjson
from aiohttp import web
from pydantic import Field, ValidationError

from pipeline.context import Policy, RequestContext
from pipeline.edge.codec import EdgeSink
from pipeline.edge.openai import OpenAIErrorBody, openai_error
from pipeline.edge.wire import PolicyIn, Strict, policy_from
from pipeline.errors import InvalidRequest, TokenHubError, invalid_request
from pipeline.modes import model_hint
from pipeline.types import ChatRequest

__all__ = ["EmbeddingsCodec", "measure_input"]

MAX_INPUTS = 2048  # OpenAI's own limit per request
CHARS_PER_TOKEN_ID = 4  # what a token id weighs against the character caps (the estimate's bytes/4)

# Forwarded to the provider when present.
FORWARDED = ("encoding_format", "dimensions", "user")


class EmbeddingsBody(Strict):
    model: str = ""
    input: Any  # checked by hand: the error then names the shape that is wrong, not pydantic's union branches
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: str | None = None
    tokenhub: PolicyIn | None = None  # TokenHub's routing policy, as on /v1/chat/completions


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _text_tokens(text: str) -> int:
    return -(-len(text.encode()) // 4)  # bytes/4 rounded up, like the chat estimate


def measure_input(value: Any, *, max_chars: int, max_total_chars: int) -> tuple[int, int]:
    """Validate `input` and return (estimated tokens in total, estimated tokens of the longest input).
    Accepted: a string, a list of strings, a list of token ids, or a list of token-id lists; none empty,
    none over ``max_chars`` and all together not over ``max_total_chars`` (characters; a token id is 4)."""
    if isinstance(value, str):
        if not value:
            raise InvalidRequest("input must not be an empty string", field="input")
        _check_size(len(value), max_chars, "input")
        _check_total(len(value), max_total_chars)
        tokens = _text_tokens(value)
        return tokens, tokens
    if not isinstance(value, list) or not value:
        raise InvalidRequest(
            "input must be a non-empty string, or a non-empty list of strings, of token ids, or of token-id lists",
            field="input",
        )
    if len(value) > MAX_INPUTS:
        raise InvalidRequest(f"too many inputs: {len(value)} > {MAX_INPUTS}", field="input")
    first = value[0]
    if isinstance(first, str):
        texts = [_item(item, i, str) for i, item in enumerate(value)]
        chars = [len(text) for text in texts]
        sizes = [_text_tokens(text) for text in texts]
    elif _is_token_id(first):
        if not all(_is_token_id(item) for item in value):
            raise InvalidRequest("input: a token-id list must hold only non-negative integers", field="input")
        _check_size(len(value) * CHARS_PER_TOKEN_ID, max_chars, "input")
        _check_total(len(value) * CHARS_PER_TOKEN_ID, max_total_chars)
        return len(value), len(value)
    elif isinstance(first, list):
        sizes = [len(_item(item, i, list)) for i, item in enumerate(value)]
        chars = [size * CHARS_PER_TOKEN_ID for size in sizes]
    else:
        raise InvalidRequest("input: list items must be strings, token ids or token-id lists", field="input.0")
    for index, size in enumerate(chars):
        _check_size(size, max_chars, f"input.{index}")
    _check_total(sum(chars), max_total_chars)
    return sum(sizes), max(sizes)


def _check_size(chars: int, limit: int, field: str) -> None:
    if chars > limit:
        raise InvalidRequest(f"{field} has {chars} characters; the limit is {limit}", field=field)


def _check_total(chars: int, limit: int) -> None:
    if chars > limit:
        raise InvalidRequest(f"the inputs hold {chars} characters; the limit is {limit}", field="input")


def _item(item: Any, index: int, kind: type) -> Any:
    field = f"input.{index}"
    if not isinstance(item, kind):
        raise InvalidRequest(f"{field}: every item must have the same type as the first", field=field)
    if not item:
        raise InvalidRequest(f"{field} must not be empty", field=field)
    if kind is list and not all(_is_token_id(token) for token in item):
        raise InvalidRequest(f"{field}: token ids must be non-negative integers", field=field)
    return item


class EmbeddingsCodec:
    endpoint = "embeddings"
    scope = "embeddings"
    strict_model = True  # an unknown model is a 404, as OpenAI answers
    summary = "OpenAI-compatible embeddings, routed to embedding models"
    body_model = EmbeddingsBody
    error_model = OpenAIErrorBody
    streams = False

    def __init__(self, *, max_chars: int, max_total_chars: int) -> None:
        self._max_chars = max_chars  # per input
        self._max_total_chars = max_total_chars  # all inputs of a request

    def decode(self, raw: bytes, *, max_messages: int) -> tuple[ChatRequest, Policy]:
        try:
            body = EmbeddingsBody.model_validate_json(raw)
        except ValidationError as exc:
            raise invalid_request(exc) from None
        total, longest = measure_input(body.input, max_chars=self._max_chars, max_total_chars=self._max_total_chars)
        parameters: dict[str, Any] = {"input": body.input}
        parameters.update({name: value for name in FORWARDED if (value := getattr(body, name)) is not None})
        request = ChatRequest(
            messages=[],
            model_hint=model_hint(body.model),
            estimated_input_tokens=total,
            parameters=parameters,
            operation="embeddings",
            max_item_tokens=longest,
        )
        return request, policy_from(body.tokenhub)

    def encode(self, ctx: RequestContext) -> bytes:
        """The provider's embedding list, its `model` naming the TokenHub model that served it."""
        result, served = ctx.result, ctx.served_by
        assert result is not None and served is not None
        body = dict(result.body)
        body["model"] = served.model.id
        body.setdefault("object", "list")
        return orjson.dumps(body)

    def error_body(self, error: TokenHubError, request_id: str) -> dict[str, Any]:
        return openai_error(error, request_id)

    def stream_sink(self, request: web.Request, ctx: RequestContext) -> EdgeSink:
        return _no_stream()


def _no_stream() -> NoReturn:
    # decode never sets `stream`, so the edge never asks; if it ever did, the client gets a clear 400
    raise InvalidRequest("embeddings cannot be streamed", field="stream")
