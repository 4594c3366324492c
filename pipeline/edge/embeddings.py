"""OpenAI-compatible embeddings: POST /v1/embeddings, through the same tenant pipeline as chat.

The body's inputs go to the provider as given (in `parameters`); TokenHub only validates them and estimates
their tokens for routing. With `auto` TokenHub picks among models of kind "embedding"; a named model goes to
its own provider (stages/router.py). Never streamed.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NoReturn

import orjson
from aiohttp import web
from pydantic import Field, ValidationError

from pipeline.context import Policy, RequestContext
from pipeline.edge.codec import EdgeSink
from pipeline.edge.openai import openai_error
from pipeline.edge.wire import PolicyIn, Strict, invalid_request
from pipeline.errors import InvalidRequest, TokenHubError
from pipeline.modes import AUTO_MODELS
from pipeline.types import ChatRequest

MAX_INPUTS = 2048  # OpenAI's own limit per request

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


def measure_input(value: Any) -> tuple[int, int]:
    """Validate `input` and return (estimated tokens in total, estimated tokens of the longest input).
    Accepted: a string, a list of strings, a list of token ids, or a list of token-id lists; none empty."""
    if isinstance(value, str):
        if not value:
            raise InvalidRequest("input must not be an empty string", field="input")
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
        sizes = [_text_tokens(_item(item, i, str)) for i, item in enumerate(value)]
    elif _is_token_id(first):
        if not all(_is_token_id(item) for item in value):
            raise InvalidRequest("input: a token-id list must hold only non-negative integers", field="input")
        return len(value), len(value)
    elif isinstance(first, list):
        sizes = [len(_item(item, i, list)) for i, item in enumerate(value)]
    else:
        raise InvalidRequest("input: list items must be strings, token ids or token-id lists", field="input.0")
    return sum(sizes), max(sizes)


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

    def decode(self, raw: bytes, *, max_messages: int) -> tuple[ChatRequest, Policy]:
        try:
            body = EmbeddingsBody.model_validate_json(raw)
        except ValidationError as exc:
            raise invalid_request(exc) from None
        total, longest = measure_input(body.input)
        parameters: dict[str, Any] = {"input": body.input}
        parameters.update({name: value for name in FORWARDED if (value := getattr(body, name)) is not None})
        model = body.model.strip()
        request = ChatRequest(
            messages=[],
            model_hint="" if model in AUTO_MODELS else model,
            estimated_input_tokens=total,
            parameters=parameters,
            operation="embeddings",
            max_item_tokens=longest,
        )
        p = body.tokenhub
        policy = Policy(p.mode or "", p.max_budget_usd, p.max_latency_ms, p.min_weight) if p else Policy()
        return request, policy

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
