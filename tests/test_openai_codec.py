"""The /v1/chat/completions codec on its own: which of the body's fields reach the provider as parameters."""

from __future__ import annotations

from typing import Any

import orjson

from pipeline.edge.openai import FORWARDED, OpenAICodec

GIVEN: dict[str, Any] = {
    "temperature": 0.5,
    "top_p": 0.9,
    "max_tokens": 64,
    "max_completion_tokens": 32,
    "stop": ["\n"],
    "n": 2,
    "presence_penalty": 0.1,
    "frequency_penalty": -0.1,
    "seed": 7,
    "response_format": {"type": "json_object"},
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "user": "u-1",
    "logit_bias": {"42": 1.5},
    "logprobs": True,
    "top_logprobs": 3,
    "reasoning_effort": "low",
}


def parameters(**fields: Any) -> dict[str, Any]:
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], **fields}
    request, _ = OpenAICodec().decode(orjson.dumps(body), max_messages=10)
    return request.parameters


def test_every_forwarded_field_the_body_sets_is_forwarded_as_given_in_one_order() -> None:
    assert set(GIVEN) == set(FORWARDED)
    forwarded = parameters(**dict(reversed(GIVEN.items())))
    assert forwarded == GIVEN and list(forwarded) == list(FORWARDED)


def test_fields_the_body_leaves_out_or_sets_to_null_are_not_forwarded() -> None:
    assert parameters() == {}
    assert parameters(temperature=None, seed=None, max_tokens=16) == {"max_tokens": 16}
    assert parameters(stream=True, stream_options={"include_usage": True}, tokenhub={"mode": "cheap"}) == {}
