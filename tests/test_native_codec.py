"""The /v1/chat codec's plain body path against the models' path: it may decline a body, never decode one
differently (the request and the policy)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.edge.native import ChatBody, RequestIn, plain_chat, validated_chat
from pipeline.edge.wire import PolicyIn
from tests.support.plain_bodies import NUMBER, TEXT, PlainPath, good_messages, odd_messages, one_of, with_odd_fields

MAX_MESSAGES = 3
USER = {"role": "user", "content": "x"}
PATH = PlainPath(plain_chat, validated_chat, MAX_MESSAGES)


def _plain(policy: Any = None, **request: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"request": {"messages": [USER], **request}}
    if policy is not None:
        body["policy"] = policy
    return body


USUAL_BODIES = [
    {"request": {"messages": [{"role": "user", "content": "Hello, this is a benchmark request."}]}},
    _plain(model_hint=" fake-gpt "),
    _plain({"mode": "cheap"}, messages=[{"role": "system", "content": ""}, {"role": "user", "content": "é😀"}]),
    _plain(
        {"mode": "normal", "max_budget_usd": 0.05, "max_latency_ms": 3000, "min_weight": 2},
        stream=True,
        parameters={"temperature": 0.2, "max_tokens": 64, "stop": ["\n"]},
    ),
    _plain({"max_budget_usd": 1, "mode": None, "unknown": 1}, parameters=None, unknown={}),
    {"request": {"messages": [USER]}, "policy": None, "unknown": []},
]


def test_the_plain_path_knows_every_field_it_reads_by_hand() -> None:
    """It checks the policy's fields itself and leaves any other field of the body or the request to the
    models: a field added to them needs a look at the plain path."""
    assert set(PolicyIn.model_fields) == {"mode", "max_budget_usd", "max_latency_ms", "min_weight"}
    assert set(ChatBody.model_fields) == {"request", "policy", "output_format", "capabilities"}
    assert set(RequestIn.model_fields) == {
        *("id", "messages", "model_hint", "estimated_input_tokens"),
        *("meta", "output_schema", "parameters", "stream"),
    }


@pytest.mark.parametrize("body", USUAL_BODIES)
def test_the_usual_bodies_take_the_plain_path_to_the_same_request_and_policy(body: dict[str, Any]) -> None:
    PATH.takes(body)


_POLICY = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "mode": st.sampled_from([None, "", "cheap", "thompson", "CHEAP", 7]),
            "max_budget_usd": st.one_of(NUMBER, st.floats(0, 100), st.integers(0, 101)),
            "max_latency_ms": st.one_of(NUMBER, st.integers(-1, 300_001)),
            "min_weight": st.one_of(NUMBER, st.integers(-1, 11)),
            "unknown": TEXT,
        },
    ),
    NUMBER,
)
_PLAIN_REQUEST = st.fixed_dictionaries(
    {"messages": good_messages(MAX_MESSAGES)},
    optional={
        "model_hint": st.sampled_from(["", "auto", " m ", "fake-gpt"]),
        "stream": st.booleans(),
        "parameters": st.one_of(st.none(), st.dictionaries(TEXT, NUMBER, max_size=2)),
    },
)
_ODD_REQUEST_FIELD = one_of(
    {
        "messages": odd_messages(MAX_MESSAGES),
        "model_hint": NUMBER,
        "stream": NUMBER,
        "parameters": st.one_of(NUMBER, st.lists(st.integers(), max_size=1)),
        "id": NUMBER,
        "estimated_input_tokens": NUMBER,
        "meta": st.one_of(st.fixed_dictionaries({"k": TEXT}), NUMBER),
        "output_schema": st.sampled_from([{"type": "object"}, 7, None]),
        "unknown": NUMBER,
    }
)
_ODD_BODY_FIELD = one_of(
    {
        "request": NUMBER,
        "output_format": st.one_of(st.fixed_dictionaries({"type": st.just("json")}), NUMBER),
        "capabilities": NUMBER,
        "unknown": NUMBER,
    }
)
_BODY = with_odd_fields(
    st.fixed_dictionaries(
        {"request": with_odd_fields(_PLAIN_REQUEST, _ODD_REQUEST_FIELD)}, optional={"policy": _POLICY}
    ),
    _ODD_BODY_FIELD,
    most=1,
)

# The edges a mutation of the plain path would cross, always tried (a random body reaches some of them rarely).
EDGES = [
    _plain(messages=[{"role": "r" * 65, "content": "x"}]),
    _plain(messages=[{"role": "user", "content": None}]),
    _plain(messages=[USER] * (MAX_MESSAGES + 1)),
    _plain(messages=[]),
    _plain(model_hint=None),
    _plain(stream=1),
    _plain(parameters=[]),
    _plain(id="r-1"),
    _plain(estimated_input_tokens=5),
    _plain({"mode": ""}),
    _plain({"mode": "nope"}),
    _plain({"mode": ["cheap"]}),
    _plain({"max_budget_usd": 100}),
    _plain({"max_budget_usd": 100.5}),
    _plain({"max_budget_usd": -0.5}),
    _plain({"max_budget_usd": True}),
    _plain({"max_budget_usd": None}),
    _plain({"max_latency_ms": 300_000}),
    _plain({"max_latency_ms": 300_001}),
    _plain({"max_latency_ms": 1.0}),
    _plain({"min_weight": 10}),
    _plain({"min_weight": 11}),
    _plain({"min_weight": -1}),
    _plain({"min_weight": False}),
    _plain([]),
    {**_plain(), "output_format": {"type": "json"}},
    {**_plain(), "capabilities": {}},
    {"request": [USER]},
    {"policy": {"mode": "cheap"}},
]


@settings(max_examples=1000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(_BODY)
def test_the_plain_path_accepts_only_what_the_models_accept_and_builds_the_same(body: dict[str, Any]) -> None:
    PATH.agrees(body)


@pytest.mark.parametrize("body", EDGES)
def test_the_plain_path_agrees_with_the_models_at_the_edges(body: dict[str, Any]) -> None:
    PATH.agrees(body)
