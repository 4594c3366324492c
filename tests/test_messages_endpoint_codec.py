"""The /v1/messages codec on its own: Anthropic request bodies decoded into the normalized request, and the
plain body's path against the models' (it may decline a body, never decode one differently)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.context import Policy
from pipeline.edge.anthropic import (
    MessageIn,
    anthropic_error,
    decode_messages,
    plain_messages_request,
    validated_messages,
)
from pipeline.errors import InvalidRequest, NoEligibleModel, RateLimited, StreamBroken, TokenHubError
from pipeline.types import ChatRequest, Message
from tests.support.plain_bodies import NUMBER, TEXT, PlainPath, odd_messages, one_of, with_odd_fields, without_policy


def decode(**body: Any) -> tuple[ChatRequest, Policy]:
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return decode_messages(orjson.dumps(body), max_messages=100)


def refused(**body: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        decode(**body)
    return info.value


def test_system_string_or_text_blocks_becomes_one_system_message() -> None:
    request, _ = decode(system="be brief")
    assert request.messages[0] == Message("system", "be brief")
    blocks = [{"type": "text", "text": "one"}, {"type": "text", "text": "two", "cache_control": {"type": "ephemeral"}}]
    request, _ = decode(system=blocks)
    assert request.messages == [Message("system", "one\ntwo"), Message("user", "hi")]
    request, _ = decode(system="")
    assert request.messages == [Message("user", "hi")]


def test_tool_use_and_tool_result_blocks_become_openai_vocabulary() -> None:
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}},
                {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "here you go"},
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C"}]},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "boom", "is_error": True},
            ],
        },
    ]
    request, _ = decode(messages=messages)
    assert request.messages == [
        Message("user", "weather?"),
        Message(
            "assistant",
            "Checking.",
            [
                {"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}},
                {"id": "toolu_2", "type": "function", "function": {"name": "now", "arguments": "{}"}},
            ],
        ),
        Message("tool", "18C", tool_call_id="toolu_1"),
        Message("tool", "Error: boom", tool_call_id="toolu_2"),
        Message("user", "here you go"),
    ]


def test_a_turn_of_only_tool_results_adds_no_empty_user_message() -> None:
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]},
    ]
    request, _ = decode(messages=messages)
    assert [m.role for m in request.messages] == ["user", "assistant", "tool"]
    assert request.messages[2].content == ""


def test_parameters_in_openai_vocabulary_and_policy() -> None:
    request, policy = decode(
        model="claude-x",
        max_tokens=256,
        temperature=0.5,
        top_p=0.9,
        top_k=10,
        stop_sequences=["END"],
        metadata={"user_id": "u-1"},
        thinking={"type": "enabled", "budget_tokens": 1024},
        tools=[{"name": "f", "description": "d", "input_schema": {"type": "object"}}, {"name": "g", "type": "custom"}],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        stream=True,
        tokenhub={"mode": "cheap", "max_budget_usd": 0.5},
        container="ignored",
    )
    assert request.model_hint == "claude-x" and request.stream is True
    assert request.parameters == {
        "max_tokens": 256,
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 10,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "stop": ["END"],
        "user": "u-1",
        "tools": [
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "description": "d"}},
            {"type": "function", "function": {"name": "g", "parameters": {"type": "object"}}},
        ],
        "tool_choice": "required",
        "parallel_tool_calls": False,
    }
    assert (policy.mode, policy.max_budget_usd) == ("cheap", 0.5)


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}}),
    ],
)
def test_tool_choice(choice: dict[str, Any], expected: Any) -> None:
    request, _ = decode(tools=[{"name": "f", "input_schema": {}}], tool_choice=choice)
    assert request.parameters["tool_choice"] == expected


@pytest.mark.parametrize("model", ["", "auto", "*", "  auto "])
def test_auto_models_route(model: str) -> None:
    assert decode(model=model)[0].model_hint == ""


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"messages": []}, "messages", "at least one message"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role", ""),
        ({"temperature": 1.5}, "temperature", ""),
        ({"max_tokens": 0}, "max_tokens", ""),
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
            "messages.0.content.0.source",
            "image source type None is not supported",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]},
            "messages.0.content.0",
            "not supported in user turns",
        ),
        (
            {
                "messages": [
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": 3}]}
                ]
            },
            "messages.0.content.0.input",
            "must be an object",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages.0.content.0.text", ""),
        ({"system": [{"type": "image"}]}, "system.0", "image blocks are accepted in user turns only"),
        ({"tools": [{"name": "web_search", "type": "web_search_20250305"}]}, "tools.0", "server tools"),
        ({"tools": [{"name": "f"}], "tool_choice": {"type": "tool"}}, "tool_choice.name", "required"),
    ],
)
def test_invalid_bodies_name_the_field(body: dict[str, Any], field: str, message: str) -> None:
    error = refused(**body)
    assert error.field == field
    assert message in error.message


def test_bad_json_and_too_many_messages() -> None:
    with pytest.raises(InvalidRequest, match="malformed JSON"):
        decode_messages(b"{nope", max_messages=10)
    body = orjson.dumps({"messages": [{"role": "user", "content": "x"}] * 3})
    with pytest.raises(InvalidRequest, match="too many messages"):
        decode_messages(body, max_messages=2)


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (InvalidRequest("bad"), 400, "invalid_request_error"),
        (NoEligibleModel("budget", client_constraint=True), 422, "invalid_request_error"),
        (NoEligibleModel("none up", client_constraint=False), 503, "overloaded_error"),
        (RateLimited("slow down", retry_after=1), 429, "rate_limit_error"),
        (StreamBroken("cut", cause_class="transient"), 502, "api_error"),
        (TokenHubError("boom"), 500, "api_error"),
    ],
)
def test_error_types_per_status(error: TokenHubError, status: int, kind: str) -> None:
    assert error.status == status
    assert anthropic_error(error, "r1") == {
        "type": "error",
        "error": {"type": kind, "message": error.message},
        "request_id": "r1",
    }


# --- the plain body, decoded without the models ----------------------------------------------------------------

MAX_MESSAGES = 3
TURN = {"role": "user", "content": "x"}
PATH = PlainPath(without_policy(plain_messages_request), validated_messages, MAX_MESSAGES)


SDK_BODIES = [
    {"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": [{"role": "user", "content": "Hello, Claude"}]},
    {
        "model": " auto ",
        "max_tokens": 64,
        "system": "be brief",
        "stream": True,
        "messages": [TURN, {"role": "assistant", "content": "é😀"}, TURN],
    },
    {"model": "m", "max_tokens": 5, "system": "", "messages": [TURN], "stream": False},
    {"messages": [{**TURN, "unknown": 1}], "system": None, "max_tokens": None, "unknown": 1},
]


def test_the_plain_path_knows_every_field_of_a_turn() -> None:
    """It reads a turn's role and content and ignores the rest, as the model does: a new field needs a look."""
    assert set(MessageIn.model_fields) == {"role", "content"}


@pytest.mark.parametrize("body", SDK_BODIES)
def test_the_usual_sdk_bodies_take_the_plain_path_to_the_same_request(body: dict[str, Any]) -> None:
    PATH.takes(body)


_TURN = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": TEXT})
_PLAIN_BODY = st.fixed_dictionaries(
    {"model": st.sampled_from(["", "auto", " m ", "claude-x"]), "messages": st.lists(_TURN, min_size=1, max_size=3)},
    optional={"max_tokens": st.integers(1, 2**40), "system": st.one_of(st.none(), TEXT), "stream": st.booleans()},
)
# One field of a plain body set to something else: another type, a value out of range, a field left to the models.
_ODD_FIELD = one_of(
    {
        "model": st.one_of(st.integers(), st.none(), TEXT),
        "messages": odd_messages(MAX_MESSAGES),
        "max_tokens": NUMBER,
        "system": st.one_of(NUMBER, st.just([{"type": "text", "text": "s"}]), st.just([])),
        "stream": NUMBER,
        "temperature": NUMBER,
        "tokenhub": st.one_of(st.fixed_dictionaries({"mode": st.just("cheap")}), NUMBER),
        "unknown": NUMBER,
    }
)


def _plain(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 5, "messages": [TURN], **fields}


# The edges a mutation of the plain path would cross, always tried (a random body reaches some of them rarely).
EDGES = [
    _plain(messages=[{"role": "system", "content": "x"}]),
    _plain(messages=[{"role": "User", "content": "x"}]),
    _plain(messages=[{"role": ["user"], "content": "x"}]),
    _plain(messages=[{"role": "user", "content": None}]),
    _plain(messages=[{"role": "user", "content": [{"type": "text", "text": "x"}]}]),
    _plain(messages=[{"content": "x"}]),
    _plain(messages=[7]),
    _plain(messages="x"),
    _plain(messages=[TURN] * (MAX_MESSAGES + 1)),
    _plain(messages=[]),
    _plain(max_tokens=0),
    _plain(max_tokens=True),
    _plain(max_tokens=1.0),
    _plain(system=7),
    _plain(system=[]),
    _plain(system=""),
    _plain(model=None),
    _plain(stream=1),
    _plain(temperature=0.5),
]


@settings(max_examples=1000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(with_odd_fields(_PLAIN_BODY, _ODD_FIELD))
def test_the_plain_path_accepts_only_what_the_models_accept_and_builds_the_same_request(body: dict[str, Any]) -> None:
    PATH.agrees(body)


@pytest.mark.parametrize("body", EDGES)
def test_the_plain_path_agrees_with_the_models_at_the_edges(body: dict[str, Any]) -> None:
    PATH.agrees(body)
