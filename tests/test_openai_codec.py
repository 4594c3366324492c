"""The /v1/chat/completions codec on its own: which of the body's fields reach the provider as parameters, and
the plain body's path against the models' (it may decline a body, never decode one differently)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.edge.openai import FORWARDED, OpenAICodec, StreamOptions, plain_request, validated_request
from tests.support.plain_bodies import (
    NUMBER,
    TEXT,
    PlainPath,
    good_messages,
    odd_messages,
    one_of,
    with_odd_fields,
    without_policy,
)

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


# --- the plain body, decoded without the models ----------------------------------------------------------------


MAX_MESSAGES = 3
PATH = PlainPath(without_policy(plain_request), validated_request, MAX_MESSAGES)
USER = {"role": "user", "content": "x"}
SDK_BODIES = [
    {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]},
    {"model": " auto ", "messages": [{"role": "system", "content": ""}, {"role": "user", "content": "é😀"}]},
    {"model": "m", "messages": [USER], "stream": True, "stream_options": {"include_usage": True}},
    {"messages": [USER], "max_tokens": 64, "max_completion_tokens": 32, "metadata": {}},
    {"model": "m", "messages": [USER], "stream": False, "stream_options": None, "max_tokens": None},
]


def test_the_plain_path_knows_every_field_of_stream_options() -> None:
    """It reads stream_options' one field and ignores the rest, as the model does: a new field needs a look."""
    assert set(StreamOptions.model_fields) == {"include_usage"}


@pytest.mark.parametrize("body", SDK_BODIES)
def test_the_usual_sdk_bodies_take_the_plain_path_to_the_same_request(body: dict[str, Any]) -> None:
    PATH.takes(body)


# One field of a plain body set to something else: another type, a value out of range, a field left to the models.
_ODD_FIELD = one_of(
    {
        "model": st.one_of(st.integers(), st.none(), TEXT),
        "messages": odd_messages(MAX_MESSAGES),
        "stream": NUMBER,
        "stream_options": st.one_of(
            st.fixed_dictionaries({}, optional={"include_usage": NUMBER, "unknown": TEXT}), NUMBER
        ),
        "max_tokens": NUMBER,
        "max_completion_tokens": NUMBER,
        "n": st.integers(-1, 3),
        "temperature": NUMBER,
        "tokenhub": st.one_of(st.fixed_dictionaries({"mode": st.just("cheap")}), NUMBER),
        "unknown": NUMBER,
    }
)
_PLAIN_BODY = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["", "auto", "*", " m ", "gpt-x"]),
        "messages": good_messages(MAX_MESSAGES),
    },
    optional={
        "stream": st.booleans(),
        "max_tokens": st.integers(1, 2**40),
        "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
    },
)
_BODY = with_odd_fields(_PLAIN_BODY, _ODD_FIELD)


def _plain(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [USER], **fields}


# The edges a mutation of the plain path would cross, always tried (a random body reaches some of them rarely).
EDGES = [
    _plain(messages=[{"role": "r" * 64, "content": "x"}]),
    _plain(messages=[{"role": "r" * 65, "content": "x"}]),
    _plain(messages=[{"role": "", "content": "x"}]),
    _plain(messages=[{"role": "user", "content": None}]),
    _plain(messages=[{"role": "user", "content": 7}]),
    _plain(messages=[{"role": "user", "content": "x", "name": "n"}]),
    _plain(messages=[{"role": "user", "content": "x", "unknown": 1}]),
    _plain(messages=[USER] * (MAX_MESSAGES + 1)),
    _plain(messages=[]),
    _plain(stream=1),
    _plain(stream_options={"include_usage": 1}),
    _plain(stream_options={"include_usage": None}),
    _plain(stream_options={"unknown": 1}),
    _plain(max_tokens=True),
    _plain(max_tokens=0),
    _plain(max_tokens=1.0),
    _plain(max_completion_tokens=-1),
    _plain(temperature=0.5),
    _plain(model=None),
]


@settings(max_examples=1000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(_BODY)
def test_the_plain_path_accepts_only_what_the_models_accept_and_builds_the_same_request(body: dict[str, Any]) -> None:
    PATH.agrees(body)


@pytest.mark.parametrize("body", EDGES)
def test_the_plain_path_agrees_with_the_models_at_the_edges(body: dict[str, Any]) -> None:
    PATH.agrees(body)
