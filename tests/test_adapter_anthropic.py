"""Anthropic adapter: payload mapping, classification, usage and stream parsing against a real local fake."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest

from adapters.anthropic import ANTHROPIC_VERSION, AnthropicAdapter
from adapters.anthropic_format import (
    anthropic_to_openai_completion,
    normalize_tool_call_ids,
    openai_to_anthropic_message,
)
from adapters.anthropic_payload import DEFAULT_MAX_TOKENS, PLACEHOLDER_USER_TURN, build_payload
from adapters.anthropic_stream import AnthropicEventParser
from adapters.errors import ProviderError
from adapters.http import HttpClient, RetryPolicy
from adapters.registry import build_provider
from adapters.sse import SseEvent
from adapters.stream import MalformedChunk, UpstreamStream
from pipeline.types import ChatRequest, ChatResult, ErrorClass, Message, ProviderInfo, StreamDelta, Usage
from tests.fakes.anthropic_fake import (
    ContextOverflow,
    Drop,
    Fail,
    FakeAnthropic,
    Hang,
    Malformed,
    Reply,
    StreamCut,
    StreamError,
    StreamStall,
    ToolUse,
    validate_request,
)

KEY = "sk-ant-test-0123456789abcdef"
FAST = RetryPolicy(base_delay=0.01)
NO_RETRY = RetryPolicy(max_retries=0)


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(api_key=KEY) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    client = HttpClient(rng=random.Random(7))
    yield client
    await client.close()


def make_adapter(base_url: str, http: HttpClient, retry: RetryPolicy = FAST, key: str = KEY) -> AnthropicAdapter:
    return AnthropicAdapter(ProviderInfo(id="a1", type="anthropic", base_url=base_url, api_key=key), http, retry)


def chat(*messages: Message, **parameters: Any) -> ChatRequest:
    return ChatRequest(messages=list(messages) or [Message("user", "hi")], parameters=parameters)


def call(call_id: str, name: str, arguments: Any) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


async def send(
    adapter: AnthropicAdapter, request: ChatRequest | None = None, *, timeout: float = 2.0, request_id: str = "req-1"
) -> ChatResult:
    return await adapter.send(
        "claude-x", request or chat(), request_id=request_id, deadline=time.monotonic() + 5, attempt_timeout=timeout
    )


async def expect_error(coro: Awaitable[Any]) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await coro
    return info.value


# ---- payload: messages -----------------------------------------------------------------------------------


def test_system_messages_are_lifted_and_joined() -> None:
    payload = build_payload(
        "m",
        chat(Message("system", "be brief"), Message("user", "hi"), Message("developer", "use metric units")),
    )
    assert payload["system"] == "be brief\nuse metric units"
    assert payload["messages"] == [{"role": "user", "content": "hi"}]
    assert "system" not in build_payload("m", chat(Message("user", "hi")))


def test_consecutive_same_role_messages_are_merged() -> None:
    payload = build_payload(
        "m",
        chat(Message("user", "one"), Message("user", "two"), Message("assistant", "a"), Message("assistant", "b")),
    )
    assert payload["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    ]


def test_first_turn_must_be_user_and_empty_text_is_skipped() -> None:
    payload = build_payload("m", chat(Message("assistant", "hello there"), Message("user", "  "), Message("user", "q")))
    assert payload["messages"] == [
        {"role": "user", "content": PLACEHOLDER_USER_TURN},
        {"role": "assistant", "content": "hello there"},
        {"role": "user", "content": "q"},
    ]
    only_system = build_payload("m", chat(Message("system", "s")))
    assert only_system["messages"] == [{"role": "user", "content": PLACEHOLDER_USER_TURN}]


def test_final_assistant_prefill_loses_trailing_whitespace() -> None:
    payload = build_payload("m", chat(Message("user", "q"), Message("assistant", "The answer is ")))
    assert payload["messages"][-1] == {"role": "assistant", "content": "The answer is"}
    blank = build_payload("m", chat(Message("user", "q"), Message("assistant", "   ")))
    assert blank["messages"] == [{"role": "user", "content": "q"}]


def test_tool_calls_and_results_map_to_blocks() -> None:
    calls = [call("call_1", "weather", '{"city": "Paris"}'), call("call_2", "time", "")]
    payload = build_payload(
        "m",
        chat(
            Message("user", "weather and time in Paris?"),
            Message("assistant", "Let me check.", tool_calls=calls),
            Message("tool", "18C", tool_call_id="call_1", name="weather"),
            Message("tool", "", tool_call_id="call_2"),
            Message("user", "thanks"),
        ),
    )
    assert payload["messages"] == [
        {"role": "user", "content": "weather and time in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "time", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "call_2"},
                {"type": "text", "text": "thanks"},
            ],
        },
    ]
    assert validate_request(payload | {"max_tokens": 10}) == ""


def test_tool_arguments_that_are_not_an_object_are_kept_raw() -> None:
    calls = [call("c1", "f", "{not json"), call("c2", "g", "[1, 2]"), call("c3", "h", {"already": "object"})]
    payload = build_payload("m", chat(Message("user", "q"), Message("assistant", "", tool_calls=calls)))
    inputs = [block["input"] for block in payload["messages"][1]["content"]]
    assert inputs == [{"raw_arguments": "{not json"}, {"raw_arguments": "[1, 2]"}, {"already": "object"}]


def test_tool_results_are_moved_before_text_and_ids_sanitised() -> None:
    payload = build_payload(
        "m",
        chat(
            Message("user", "q"),
            Message("assistant", "", tool_calls=[call("call:abc/1", "f", "{}")]),
            Message("user", "also this"),
            Message("tool", "done", tool_call_id="call:abc/1"),
        ),
    )
    assert payload["messages"][1]["content"][0]["id"] == "call_abc_1"
    assert payload["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_abc_1", "content": "done"},
        {"type": "text", "text": "also this"},
    ]
    assert validate_request(payload) == ""


def test_unanswered_tool_call_gets_an_error_result_and_orphan_result_becomes_text() -> None:
    payload = build_payload(
        "m",
        chat(
            Message("user", "q"),
            Message("assistant", "", tool_calls=[call("call_1", "f", "{}"), call("call_2", "g", "{}")]),
            Message("tool", "ok", tool_call_id="call_1"),
            Message("assistant", "done"),
            Message("tool", "late", tool_call_id="call_9"),
        ),
    )
    assert payload["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "ok"},
        {
            "type": "tool_result",
            "tool_use_id": "call_2",
            "content": "interrupted: no result was provided for this tool call",
            "is_error": True,
        },
    ]
    assert payload["messages"][4] == {"role": "user", "content": "[result of tool call call_9]: late"}
    assert validate_request(payload) == ""


# ---- payload: parameters ---------------------------------------------------------------------------------


def test_max_tokens_default_and_mapping() -> None:
    assert build_payload("m", chat())["max_tokens"] == DEFAULT_MAX_TOKENS == 4096
    assert build_payload("m", chat(max_tokens=50))["max_tokens"] == 50
    assert build_payload("m", chat(max_tokens=50, max_completion_tokens=70))["max_tokens"] == 70
    assert build_payload("m", chat(max_tokens="lots"))["max_tokens"] == 4096


def test_sampling_stop_and_user_parameters() -> None:
    payload = build_payload(
        "m", chat(temperature=1.6, top_p=0.9, top_k=40, stop=["END", "\n", "END"], stop_sequences=["STOP"], user="u-1")
    )
    assert payload["temperature"] == 1.0  # OpenAI's 0..2 range clamped to Anthropic's 0..1
    assert "top_p" not in payload  # current models reject temperature and top_p together
    assert payload["top_k"] == 40
    assert build_payload("m", chat(top_p=0.9))["top_p"] == 0.9
    assert payload["stop_sequences"] == ["END", "STOP"]  # whitespace-only "\n" dropped, duplicates removed
    assert payload["metadata"] == {"user_id": "u-1"}
    assert build_payload("m", chat(stop="END"))["stop_sequences"] == ["END"]
    assert build_payload("m", chat(metadata={"user_id": "a", "tag": "x"}, user="b"))["metadata"] == {"user_id": "a"}
    assert "metadata" not in build_payload("m", chat(metadata={"tag": "x"}))


def test_unsupported_parameters_are_dropped() -> None:
    dropped = {
        "seed": 1,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.5,
        "n": 2,
        "logit_bias": {"1": 2},
        "logprobs": True,
        "top_logprobs": 2,
        "response_format": {"type": "json_object"},
        "stream_options": {"include_usage": True},
        "reasoning_effort": "high",
        "service_tier": "flex",
        "model": "evil",
        "messages": [],
        "system": "ignored: system comes from system messages",
        "stream": True,
        "tool_choice": "required",  # without tools
        "parallel_tool_calls": False,
    }
    payload = build_payload("m", chat(**dropped))
    assert payload == {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4096}


def test_thinking_passes_through_without_the_sampling_it_forbids() -> None:
    thinking = {"type": "enabled", "budget_tokens": 2048}
    payload = build_payload("m", chat(thinking=thinking, temperature=0.2, top_p=0.5, top_k=3))
    assert payload["thinking"] == thinking
    assert not {"temperature", "top_p", "top_k"} & set(payload)


TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_tools_are_mapped() -> None:
    bare = {"type": "function", "function": {"name": "now"}}
    native = {"name": "native", "input_schema": {"type": "object"}}
    payload = build_payload("m", chat(tools=[TOOL, bare, native, "junk"]))
    assert payload["tools"] == [
        {
            "name": "weather",
            "description": "Weather for a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
        native,
    ]
    assert "tool_choice" not in payload


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("none", None, {"type": "none"}),
        ({"type": "function", "function": {"name": "weather"}}, None, {"type": "tool", "name": "weather"}),
        ({"type": "tool", "name": "weather"}, None, {"type": "tool", "name": "weather"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),
        ("bogus", None, None),
        (None, True, None),
    ],
)
def test_tool_choice_mapping(choice: Any, parallel: bool | None, expected: dict[str, Any] | None) -> None:
    params: dict[str, Any] = {"tools": [TOOL]}
    if choice is not None:
        params["tool_choice"] = choice
    if parallel is not None:
        params["parallel_tool_calls"] = parallel
    assert build_payload("m", chat(**params)).get("tool_choice") == expected


# ---- over HTTP: success ----------------------------------------------------------------------------------


async def test_send_headers_payload_and_result(fake: FakeAnthropic, http: HttpClient) -> None:
    adapter = make_adapter(fake.base_url + "/v1/", http)
    request = chat(Message("system", "be brief"), Message("user", "hi"), temperature=0.3, seed=7, max_tokens=64)
    result = await send(adapter, request, request_id="req-42")

    recorded = fake.requests[0]
    assert recorded["headers"]["x-api-key"] == KEY
    assert recorded["headers"]["anthropic-version"] == ANTHROPIC_VERSION
    assert recorded["headers"]["X-Request-ID"] == "req-42"
    assert recorded["headers"]["Content-Type"] == "application/json"
    assert "Authorization" not in recorded["headers"]
    assert recorded["json"] == {
        "model": "claude-x",
        "messages": [{"role": "user", "content": "hi"}],
        "system": "be brief",
        "max_tokens": 64,
        "temperature": 0.3,
    }
    assert result.format == "anthropic"
    assert result.body["content"] == [{"type": "text", "text": "reply from claude-x"}]
    assert result.usage == Usage(12, 6)
    assert result.raw.startswith(b"{")
    assert adapter.url == fake.base_url + "/v1/messages"


async def test_a_full_tool_conversation_is_accepted_upstream(fake: FakeAnthropic, http: HttpClient) -> None:
    fake.script("claude-x", Reply(text="", tool_uses=(ToolUse("weather", {"city": "Paris"}, id="toolu_01"),)))
    adapter = make_adapter(fake.base_url, http)
    first = await send(adapter, chat(Message("user", "weather?"), tools=[TOOL], tool_choice="auto"))
    assert first.body["stop_reason"] == "tool_use"
    tool_use = first.body["content"][0]
    # The client replays the call in OpenAI vocabulary, with the id an OpenAI client was given.
    replay = chat(
        Message("user", "weather?"),
        Message("assistant", "", tool_calls=[call("call_toolu_01", "weather", json.dumps(tool_use["input"]))]),
        Message("tool", "18C", tool_call_id="call_toolu_01"),
        tools=[TOOL],
        parallel_tool_calls=False,
        user="u-1",
        stop=["\n\n"],
        presence_penalty=1.0,
        response_format={"type": "json_object"},
    )
    second = await send(adapter, replay)
    assert second.body["stop_reason"] == "end_turn"
    sent = fake.requests[1]["json"]
    assert sent["messages"][2]["content"] == [{"type": "tool_result", "tool_use_id": "call_toolu_01", "content": "18C"}]
    assert sent["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


async def test_usage_missing_is_none(fake: FakeAnthropic, http: HttpClient) -> None:
    fake.script("claude-x", Reply(usage=None), Reply(usage={"input_tokens": 0, "output_tokens": 3}))
    adapter = make_adapter(fake.base_url, http)
    assert (await send(adapter)).usage is None
    assert (await send(adapter)).usage == Usage(0, 3)


async def test_health_endpoint_answers_405_to_get(fake: FakeAnthropic, http: HttpClient) -> None:
    adapter = make_adapter(fake.base_url, http)
    async with http.session.get(adapter.health_endpoint()) as resp:
        assert resp.status == 405 and resp.headers["Allow"] == "POST"  # the API answers: it is up


def test_registry_builds_the_anthropic_adapter(http: HttpClient) -> None:
    provider = ProviderInfo(id="claude", type="anthropic", base_url="https://api.anthropic.com/v1/", api_key=KEY)
    adapter = build_provider(provider, http, FAST)
    assert isinstance(adapter, AnthropicAdapter)
    assert (adapter.type, adapter.id, adapter.base_url) == ("anthropic", "claude", "https://api.anthropic.com")
    assert KEY not in repr(adapter)
    with pytest.raises(ValueError, match="unsupported provider type"):
        build_provider(ProviderInfo(id="x", type="gemini", base_url="https://x"), http, FAST)


# ---- over HTTP: classification ---------------------------------------------------------------------------


async def test_429_is_rate_limited_with_retry_after_and_not_retried(fake: FakeAnthropic, http: HttpClient) -> None:
    fake.script("claude-x", Fail(429, headers={"Retry-After": "3"}))
    err = await expect_error(send(make_adapter(fake.base_url, http)))
    assert (err.error_class, err.status, err.retry_after) == (ErrorClass.RATE_LIMITED, 429, 3.0)
    assert err.message.startswith("anthropic HTTP 429: ")
    assert fake.calls("claude-x") == 1


async def test_529_overloaded_is_rate_limited(fake: FakeAnthropic, http: HttpClient) -> None:
    fake.script("claude-x", Fail(529, message="Overloaded"))
    err = await expect_error(send(make_adapter(fake.base_url, http)))
    assert (err.error_class, err.status) == (ErrorClass.RATE_LIMITED, 529)
    assert "overloaded_error" in err.message
    assert fake.calls("claude-x") == 1


async def test_500_is_transient_and_retried(fake: FakeAnthropic, http: HttpClient) -> None:
    fake.script("claude-x", Fail(500), Reply(text="second time lucky"))
    result = await send(make_adapter(fake.base_url, http))
    assert result.body["content"][0]["text"] == "second time lucky"
    fake.script("claude-x", Fail(500), Fail(503), Fail(500))
    err = await expect_error(send(make_adapter(fake.base_url, http)))
    assert (err.error_class, err.status) == (ErrorClass.TRANSIENT, 500)
    assert fake.calls("claude-x") == 5


async def test_prompt_too_long_is_context_overflow(fake: FakeAnthropic, http: HttpClient) -> None:
    limit_message = "input length and `max_tokens` exceed context limit: 197000 + 8192 > 200000"
    fake.script("claude-x", ContextOverflow(), Fail(400, message=limit_message))
    adapter = make_adapter(fake.base_url, http)
    for _ in range(2):
        err = await expect_error(send(adapter))
        assert (err.error_class, err.status) == (ErrorClass.CONTEXT_OVERFLOW, 400)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            400,
            '{"type":"error","error":{"type":"invalid_request_error","message":"prompt_too_long"}}',
            "context_overflow",
        ),
        (400, "messages: roles must alternate", "fatal"),
        (401, "invalid x-api-key", "fatal"),
        (403, "permission_error", "fatal"),
        (404, "model not found", "fatal"),
        (413, "request_too_large", "fatal"),
        (429, "", "rate_limited"),
        (529, "", "rate_limited"),
        (500, "", "transient"),
        (502, "prompt is too long", "transient"),  # a 5xx is transient whatever its body says
    ],
)
def test_classify(status: int, body: str, expected: str, http: HttpClient) -> None:
    err = make_adapter("http://x", http).classify(status, body, {})
    assert err.error_class == ErrorClass(expected)
    assert err.status == status


async def test_the_key_never_appears_in_errors(fake: FakeAnthropic, http: HttpClient) -> None:
    fake.script("claude-x", Fail(401, body=f"invalid x-api-key {KEY}"))
    err = await expect_error(send(make_adapter(fake.base_url, http)))
    assert err.error_class is ErrorClass.FATAL
    assert KEY not in str(err) and KEY not in repr(err)
    assert "[redacted]" in err.message


async def test_wrong_key_is_fatal_401(fake: FakeAnthropic, http: HttpClient) -> None:
    err = await expect_error(send(make_adapter(fake.base_url, http, key="sk-ant-wrong")))
    assert (err.error_class, err.status) == (ErrorClass.FATAL, 401)
    assert "authentication_error" in err.message


async def test_malformed_drop_and_hang_are_transient(fake: FakeAnthropic, http: HttpClient) -> None:
    fake.script("claude-x", Malformed(), Drop(), Hang(2.0))
    adapter = make_adapter(fake.base_url, http, NO_RETRY)
    malformed_err = await expect_error(send(adapter))
    assert malformed_err.message.startswith("malformed upstream response")
    drop_err = await expect_error(send(adapter))
    assert drop_err.status is None
    hang_err = await expect_error(send(adapter, timeout=0.2))
    assert hang_err.message == "timeout after 0.2s with no answer"
    assert {e.error_class for e in (malformed_err, drop_err, hang_err)} == {ErrorClass.TRANSIENT}


# ---- streaming over HTTP ---------------------------------------------------------------------------------


class Malformations:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


async def open_stream(
    adapter: AnthropicAdapter,
    request: ChatRequest | None = None,
    *,
    idle: float = 2.0,
    on_malformed: Malformations | None = None,
) -> UpstreamStream:
    return await adapter.open_stream(
        "claude-x",
        request or chat(),
        request_id="req-s",
        deadline=time.monotonic() + 5,
        attempt_timeout=2.0,
        idle_timeout=idle,
        on_malformed=on_malformed or Malformations(),
    )


async def collect(stream: UpstreamStream) -> list[StreamDelta]:
    deltas = [delta async for delta in stream]
    stream.release()
    return deltas


def assemble(deltas: list[StreamDelta]) -> dict[str, Any]:
    """What a client builds from the deltas: text, reasoning, tool calls by index, finish reason, usage."""
    tools: dict[int, dict[str, Any]] = {}
    usage = Usage()
    for delta in deltas:
        for piece in delta.tool_calls or ():
            entry = tools.setdefault(piece["index"], {"id": None, "name": None, "arguments": ""})
            entry["id"] = piece.get("id", entry["id"])
            function = piece.get("function", {})
            entry["name"] = function.get("name", entry["name"])
            entry["arguments"] += function.get("arguments", "")
        if delta.usage:
            usage.input_tokens = delta.usage.input_tokens or usage.input_tokens
            usage.output_tokens = delta.usage.output_tokens or usage.output_tokens
    return {
        "text": "".join(d.content for d in deltas),
        "reasoning": "".join(d.reasoning for d in deltas),
        "tools": [tools[i] for i in sorted(tools)],
        "finish": [d.finish_reason for d in deltas if d.finish_reason],
        "usage": usage,
    }


async def test_stream_text_usage_and_finish(fake: FakeAnthropic, http: HttpClient) -> None:
    fake.script("claude-x", Reply(text="Hello there, streaming world", usage={"input_tokens": 21, "output_tokens": 9}))
    stream = await open_stream(make_adapter(fake.base_url, http), chat(max_tokens=100))
    answer = assemble(await collect(stream))
    assert answer == {
        "text": "Hello there, streaming world",
        "reasoning": "",
        "tools": [],
        "finish": ["stop"],
        "usage": Usage(21, 9),
    }
    sent = fake.requests[0]["json"]
    assert sent["stream"] is True and sent["max_tokens"] == 100


async def test_stream_tool_use_and_thinking(fake: FakeAnthropic, http: HttpClient) -> None:
    reply = Reply(
        text="Checking.",
        thinking="The user wants weather.",
        tool_uses=(ToolUse("weather", {"city": "Paris", "days": 3}, id="toolu_01A"), ToolUse("now", {}, id="toolu_02")),
    )
    fake.script("claude-x", reply)
    answer = assemble(await collect(await open_stream(make_adapter(fake.base_url, http), chat(tools=[TOOL]))))
    assert answer["text"] == "Checking."
    assert answer["reasoning"] == "The user wants weather."
    assert answer["tools"] == [
        {"id": "call_toolu_01A", "name": "weather", "arguments": '{"city": "Paris", "days": 3}'},
        {"id": "call_toolu_02", "name": "now", "arguments": "{}"},
    ]
    assert answer["finish"] == ["tool_calls"]


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [("max_tokens", "length"), ("stop_sequence", "stop"), ("refusal", "content_filter"), ("pause_turn", "stop")],
)
async def test_stream_finish_reasons(fake: FakeAnthropic, http: HttpClient, stop_reason: str, finish: str) -> None:
    fake.script("claude-x", Reply(stop_reason=stop_reason))
    answer = assemble(await collect(await open_stream(make_adapter(fake.base_url, http))))
    assert answer["finish"] == [finish]


async def test_malformed_event_is_skipped_and_counted(fake: FakeAnthropic, http: HttpClient) -> None:
    fake.script("claude-x", Reply(text="abcdefgh", garbage=True))
    counter = Malformations()
    answer = assemble(await collect(await open_stream(make_adapter(fake.base_url, http), on_malformed=counter)))
    assert answer["text"] == "abcdefgh"
    assert counter.count == 1


async def test_drop_mid_stream_raises_transient(fake: FakeAnthropic, http: HttpClient) -> None:
    fake.script("claude-x", StreamCut(after=2))
    stream = await open_stream(make_adapter(fake.base_url, http))
    received: list[StreamDelta] = []
    with pytest.raises(ProviderError) as info:
        async for delta in stream:
            received.append(delta)
    stream.close()
    assert info.value.error_class is ErrorClass.TRANSIENT
    assert assemble(received)["text"] == "reply fr"  # two 4-character pieces, then the cut
    assert not assemble(received)["finish"]


async def test_in_stream_error_event_raises(fake: FakeAnthropic, http: HttpClient) -> None:
    fake.script("claude-x", StreamError(after=1), StreamError(after=1, error_type="api_error", message="Internal"))
    adapter = make_adapter(fake.base_url, http)
    for expected in (ErrorClass.RATE_LIMITED, ErrorClass.TRANSIENT):
        stream = await open_stream(adapter)
        with pytest.raises(ProviderError) as info:
            await collect(stream)
        stream.close()
        assert info.value.error_class is expected
        assert info.value.message.startswith("anthropic stream error: ")


async def test_stall_beyond_the_idle_limit_raises(fake: FakeAnthropic, http: HttpClient) -> None:
    fake.script("claude-x", StreamStall(after=1, seconds=3))
    stream = await open_stream(make_adapter(fake.base_url, http), idle=0.3)
    # The fake would close the connection after 3 s ("the upstream closed the stream..."): a stall error
    # naming 0.3 s proves the idle limit ended it first, with no clock in the test.
    with pytest.raises(ProviderError) as info:
        await collect(stream)
    stream.close()
    assert info.value.message == "stream stalled: no data from the upstream for 0.3s"
    assert info.value.error_class is ErrorClass.TRANSIENT


async def test_finished_stream_without_message_stop_ends_cleanly(fake: FakeAnthropic, http: HttpClient) -> None:
    fake.script("claude-x", Reply(text="done", stop_event=False))
    answer = assemble(await collect(await open_stream(make_adapter(fake.base_url, http))))
    assert (answer["text"], answer["finish"]) == ("done", ["stop"])


async def test_stream_open_errors_are_classified(fake: FakeAnthropic, http: HttpClient) -> None:
    fake.script("claude-x", Fail(529), ContextOverflow())
    adapter = make_adapter(fake.base_url, http)
    assert (await expect_error(open_stream(adapter))).error_class is ErrorClass.RATE_LIMITED
    assert (await expect_error(open_stream(adapter))).error_class is ErrorClass.CONTEXT_OVERFLOW


async def test_closing_the_stream_cancels_the_upstream(fake: FakeAnthropic, http: HttpClient) -> None:
    fake.script("claude-x", Reply(text="x" * 400, chunk_delay=0.05))
    stream = await open_stream(make_adapter(fake.base_url, http))
    deltas = aiter(stream)
    first = await anext(deltas)
    while not first.content:
        first = await anext(deltas)
    stream.close()
    await deltas.aclose()
    await asyncio.wait_for(fake.stream_cancelled.wait(), 2.0)
    assert fake.streams_cancelled == 1
    assert fake.chunks_written < 100


# ---- the event parser on its own ------------------------------------------------------------------------


def feed(parser: AnthropicEventParser, kind: str, data: dict[str, Any] | str) -> list[StreamDelta]:
    return parser.feed(SseEvent(kind, data if isinstance(data, str) else json.dumps(data)))


def test_parser_rejects_garbage_as_malformed() -> None:
    parser = AnthropicEventParser()
    for data in ("{nope", "[1]"):
        with pytest.raises(MalformedChunk):
            feed(parser, "content_block_delta", data)
    with pytest.raises(MalformedChunk):
        feed(parser, "content_block_delta", {"type": "content_block_delta", "index": 0})
    with pytest.raises(MalformedChunk):  # input for a block that never started as tool_use
        feed(parser, "", {"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta"}})
    with pytest.raises(MalformedChunk):
        feed(parser, "content_block_start", {"type": "content_block_start", "index": 0})


def test_parser_ignores_ping_stops_unknown_events_and_signatures() -> None:
    parser = AnthropicEventParser()
    assert feed(parser, "ping", {"type": "ping"}) == []
    assert feed(parser, "content_block_stop", {"type": "content_block_stop", "index": 0}) == []
    assert feed(parser, "future_event", {"type": "future_event"}) == []
    signature = {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "s"}}
    assert feed(parser, "content_block_delta", signature) == []
    assert not parser.done and not parser.finished


def test_parser_event_name_is_the_fallback_type() -> None:
    parser = AnthropicEventParser()
    deltas = feed(parser, "content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "hi"}})
    assert deltas == [StreamDelta(content="hi")]


def test_message_stop_without_a_stop_reason_still_finishes() -> None:
    parser = AnthropicEventParser()
    assert feed(parser, "message_stop", {"type": "message_stop"}) == [StreamDelta(finish_reason="stop")]
    assert parser.done and parser.finished


def test_message_delta_usage_without_stop_reason() -> None:
    parser = AnthropicEventParser()
    delta = {"type": "message_delta", "delta": {}, "usage": {"input_tokens": 30, "output_tokens": 4}}
    assert feed(parser, "message_delta", delta) == [StreamDelta(usage=Usage(30, 4))]
    assert feed(parser, "message_delta", {"type": "message_delta", "delta": {}, "usage": "x"}) == []
    assert not parser.finished


@pytest.mark.parametrize(
    ("error_type", "message", "expected"),
    [
        ("overloaded_error", "Overloaded", ErrorClass.RATE_LIMITED),
        ("rate_limit_error", "slow down", ErrorClass.RATE_LIMITED),
        ("invalid_request_error", "prompt is too long: 1 > 0", ErrorClass.CONTEXT_OVERFLOW),
        ("api_error", "Internal server error", ErrorClass.TRANSIENT),
        ("", "", ErrorClass.TRANSIENT),
    ],
)
def test_parser_error_event_classes(error_type: str, message: str, expected: ErrorClass) -> None:
    with pytest.raises(ProviderError) as info:
        feed(AnthropicEventParser(), "error", {"type": "error", "error": {"type": error_type, "message": message}})
    assert info.value.error_class is expected


def test_tool_start_carrying_its_input_whole() -> None:
    parser = AnthropicEventParser()
    start = {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "tool_use", "id": "tooluse_abc", "name": "f", "input": {"a": 1}},
    }
    [delta] = feed(parser, "content_block_start", start)
    assert delta.tool_calls == [
        {"index": 0, "id": "call_abc", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    ]
    assert feed(parser, "content_block_stop", {"type": "content_block_stop", "index": 1}) == []


# ---- response conversions for the edges -----------------------------------------------------------------

ANTHROPIC_BODY = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-upstream",
    "content": [
        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
        {"type": "text", "text": "Let me "},
        {"type": "text", "text": "check."},
        {"type": "tool_use", "id": "toolu_01", "name": "weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "tooluse_02", "name": "now", "input": {}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {"input_tokens": 20, "output_tokens": 7},
}


def test_anthropic_to_openai_completion() -> None:
    completion = anthropic_to_openai_completion(
        ANTHROPIC_BODY, model="claude-x", completion_id="chatcmpl-r1", created=5
    )
    assert completion == {
        "id": "chatcmpl-r1",
        "object": "chat.completion",
        "created": 5,
        "model": "claude-x",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Let me check.",
                    "reasoning_content": "hmm",
                    "tool_calls": [
                        {
                            "id": "call_toolu_01",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                        },
                        {"id": "call_02", "type": "function", "function": {"name": "now", "arguments": "{}"}},
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27},
    }


@pytest.mark.parametrize(
    ("stop_reason", "content", "finish"),
    [
        ("end_turn", [{"type": "text", "text": "hi"}], "stop"),
        ("max_tokens", [{"type": "text", "text": "hi"}], "length"),
        ("refusal", [], "content_filter"),
        (None, [{"type": "tool_use", "id": "t", "name": "f", "input": None}], "tool_calls"),
        ("something_new", [], "stop"),
    ],
)
def test_anthropic_to_openai_finish_and_empty_content(stop_reason: Any, content: Any, finish: str) -> None:
    body = {"content": content, "stop_reason": stop_reason}
    completion = anthropic_to_openai_completion(body, model="m", completion_id="c")
    choice = completion["choices"][0]
    assert choice["finish_reason"] == finish
    assert "usage" not in completion
    if not any(block["type"] == "text" for block in content):
        assert choice["message"]["content"] is None
    if content and content[0]["type"] == "tool_use":
        assert choice["message"]["tool_calls"][0]["function"]["arguments"] == "{}"


OPENAI_BODY = {
    "id": "chatcmpl-up",
    "object": "chat.completion",
    "model": "gpt-upstream",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
                    },
                    {"id": "", "type": "function", "function": {"name": "broken", "arguments": "{oops"}},
                ],
            },
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15},
}


def test_openai_to_anthropic_message() -> None:
    message = openai_to_anthropic_message(OPENAI_BODY, model="gpt-x", message_id="msg_r1")
    assert message == {
        "id": "msg_r1",
        "type": "message",
        "role": "assistant",
        "model": "gpt-x",
        "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "call_a", "name": "weather", "input": {"city": "Oslo"}},
            {"type": "tool_use", "id": "call_1", "name": "broken", "input": {"raw_arguments": "{oops"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 11, "output_tokens": 4},
    }


@pytest.mark.parametrize(
    ("finish", "stop_reason"),
    [("stop", "end_turn"), ("length", "max_tokens"), ("content_filter", "refusal"), (None, "end_turn")],
)
def test_openai_to_anthropic_stop_reasons(finish: Any, stop_reason: str) -> None:
    body = {"choices": [{"index": 0, "message": {"content": "x"}, "finish_reason": finish}]}
    message = openai_to_anthropic_message(body, model="m", message_id="i")
    assert message["stop_reason"] == stop_reason
    assert message["usage"] == {"input_tokens": 0, "output_tokens": 0}


def test_openai_to_anthropic_refusal_parts_and_garbage() -> None:
    refusal = {"choices": [{"message": {"content": None, "refusal": "I can't help"}, "finish_reason": "stop"}]}
    assert openai_to_anthropic_message(refusal, model="m", message_id="i")["content"] == [
        {"type": "text", "text": "I can't help"}
    ]
    parts = {"choices": [{"message": {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}}]}
    assert openai_to_anthropic_message(parts, model="m", message_id="i")["content"] == [{"type": "text", "text": "ab"}]
    empty = openai_to_anthropic_message({"choices": "nope"}, model="m", message_id="i")
    assert (empty["content"], empty["stop_reason"]) == ([], "end_turn")


def test_round_trip_keeps_text_tools_and_usage() -> None:
    message = openai_to_anthropic_message(OPENAI_BODY, model="m", message_id="i")
    back = anthropic_to_openai_completion(message, model="m", completion_id="c")
    assert back["choices"][0]["message"]["content"] == "Checking."
    assert back["choices"][0]["message"]["tool_calls"][0] == OPENAI_BODY["choices"][0]["message"]["tool_calls"][0]
    assert back["choices"][0]["finish_reason"] == "tool_calls"
    assert back["usage"] == OPENAI_BODY["usage"]


def test_normalize_tool_call_ids() -> None:
    choices = [
        {
            "index": 0,
            "message": {
                "tool_calls": [
                    {"id": "tooluse_X", "function": {}},
                    {"id": "call_ok"},
                    {"id": "toolu_01"},
                    {"id": ""},
                    {"function": {}},
                    "junk",
                ]
            },
        },
        {
            "index": 1,
            "delta": {"tool_calls": [{"index": 0, "id": "abc"}, {"index": 0, "function": {"arguments": "x"}}]},
        },
        "junk",
    ]
    assert normalize_tool_call_ids(choices) is choices
    assert [c["id"] for c in choices[0]["message"]["tool_calls"][:5]] == [
        "call_X",
        "call_ok",
        "call_toolu_01",
        "call_3",
        "call_4",
    ]
    assert choices[1]["delta"]["tool_calls"] == [
        {"index": 0, "id": "call_abc"},
        {"index": 0, "function": {"arguments": "x"}},  # a continuation delta is not given an id
    ]
    assert normalize_tool_call_ids(None) is None
