"""POST /v1/messages with the official anthropic SDK as the client, served by a fake Anthropic upstream and by
a fake OpenAI upstream (and /v1/chat/completions with the openai SDK served by the Anthropic upstream)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import openai
import pytest

from tests.conftest import Hub
from tests.fakes.anthropic_fake import ContextOverflow, Fail, FakeAnthropic, Reply, StreamCut, StreamError, ToolUse
from tests.fakes.openai_fake import Fail as OpenAIFail
from tests.fakes.openai_fake import Reply as OpenAIReply

UPSTREAM_KEY = "sk-test-secret"  # what Hub.add_provider registers
TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
MESSAGES: Any = [{"role": "user", "content": "hello"}]


@pytest.fixture
async def claude() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(api_key=UPSTREAM_KEY) as server:
        yield server


async def _setup(hub: Hub, claude: FakeAnthropic, *, upstream: str = "anthropic") -> str:
    """One model on the chosen upstream ("claude-test" or "gpt-test"); "both": Claude first, GPT as fallback."""
    if upstream in ("anthropic", "both"):
        await hub.add_provider("claude", base_url=claude.base_url, type="anthropic")
        await hub.add_model("claude-test", "claude", weight=9, input_per_1k=0.003, output_per_1k=0.015)
    if upstream in ("openai", "both"):
        await hub.add_provider("fake")
        await hub.add_model("gpt-test", "fake", weight=5, input_per_1k=0.001, output_per_1k=0.002)
    return await hub.new_key()


def _base_url(hub: Hub) -> str:
    return str(hub.client.make_url("")).rstrip("/")


def _async_client(hub: Hub, key: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=_base_url(hub), api_key=key, max_retries=0)


def _sync_client(hub: Hub, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=_base_url(hub), api_key=key, max_retries=0)


# ---- non-streaming ---------------------------------------------------------------------------------------


async def test_async_message_from_an_anthropic_upstream(hub: Hub, claude: FakeAnthropic) -> None:
    key = await _setup(hub, claude)
    claude.script("claude-test", Reply(text="Hi from Claude", usage={"input_tokens": 14, "output_tokens": 4}))
    async with _async_client(hub, key) as client:
        raw = await client.messages.with_raw_response.create(
            model="claude-test",
            max_tokens=256,
            system="be brief",
            messages=[{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
            stop_sequences=["END"],
            metadata={"user_id": "u-1"},
            extra_body={"temperature": 0.2, "top_k": 5},
        )
        message = await raw.parse()
    assert message.model == "claude-test"
    assert message.id == f"msg_{raw.headers['x-request-id']}"
    assert [(b.type, b.text) for b in message.content if b.type == "text"] == [("text", "Hi from Claude")]
    assert (message.stop_reason, message.usage.input_tokens, message.usage.output_tokens) == ("end_turn", 14, 4)
    assert raw.headers["x-negotiated-model"] == "claude-test" and raw.headers["x-provider"] == "claude"
    sent = claude.requests[-1]
    assert sent["json"] == {
        "model": "claude-test",
        "messages": [{"role": "user", "content": "hello"}],
        "system": "be brief",
        "max_tokens": 256,
        "temperature": 0.2,
        "top_k": 5,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-1"},
    }
    assert sent["headers"]["x-api-key"] == UPSTREAM_KEY  # TokenHub's provider key, never the client's


async def test_sync_message_from_an_openai_upstream(hub: Hub, claude: FakeAnthropic) -> None:
    key = await _setup(hub, claude, upstream="openai")

    def call() -> Any:
        with _sync_client(hub, key) as client:
            return client.messages.create(
                model="auto", max_tokens=64, system="be brief", messages=MESSAGES, stop_sequences=["END"]
            )

    message = await asyncio.to_thread(call)
    assert message.model == "gpt-test" and message.type == "message" and message.role == "assistant"
    assert message.content[0].text == "reply from gpt-test"
    assert (message.stop_reason, message.usage.input_tokens, message.usage.output_tokens) == ("end_turn", 10, 5)
    sent = hub.fake.requests[-1]["json"]
    assert sent["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    assert sent["max_tokens"] == 64 and sent["stop"] == ["END"]


async def test_tool_use_round_trip_through_an_anthropic_upstream(hub: Hub, claude: FakeAnthropic) -> None:
    key = await _setup(hub, claude)
    claude.script("claude-test", Reply(text="", tool_uses=(ToolUse("get_weather", {"city": "Oslo"}, id="toolu_9"),)))
    async with _async_client(hub, key) as client:
        first = await client.messages.create(
            model="claude-test", max_tokens=100, messages=MESSAGES, tools=[TOOL], tool_choice={"type": "auto"}
        )
        assert first.stop_reason == "tool_use"
        tool_use = next(b for b in first.content if b.type == "tool_use")
        assert (tool_use.name, tool_use.input) == ("get_weather", {"city": "Oslo"})
        history = [
            *MESSAGES,
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "sunny"}]},
        ]
        second = await client.messages.create(model="claude-test", max_tokens=100, messages=history, tools=[TOOL])
    assert second.content[0].text == "reply from claude-test"
    sent = claude.requests[-1]["json"]
    assert sent["tools"] == [TOOL]
    assert sent["messages"][1]["content"] == [
        {"type": "tool_use", "id": tool_use.id, "name": "get_weather", "input": {"city": "Oslo"}}
    ]
    assert sent["messages"][2]["content"] == [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "sunny"}]


async def test_tool_use_round_trip_through_an_openai_upstream(hub: Hub, claude: FakeAnthropic) -> None:
    key = await _setup(hub, claude, upstream="openai")
    call = {"id": "call_w1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
    hub.fake.script("gpt-test", OpenAIReply(content="", tool_calls=[call], finish_reason="tool_calls"))
    async with _async_client(hub, key) as client:
        first = await client.messages.create(
            model="auto",
            max_tokens=100,
            messages=MESSAGES,
            tools=[TOOL],
            tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        )
        assert first.stop_reason == "tool_use"
        [tool_use] = first.content
        assert (tool_use.type, tool_use.id, tool_use.input) == ("tool_use", "call_w1", {"city": "Oslo"})
        history = [
            *MESSAGES,
            {"role": "assistant", "content": [tool_use.model_dump(exclude_none=True)]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "call_w1", "content": [{"type": "text", "text": "sunny"}]},
                    {"type": "text", "text": "and tomorrow?"},
                ],
            },
        ]
        await client.messages.create(model="auto", max_tokens=100, messages=history, tools=[TOOL])
    first_sent, second_sent = (r["json"] for r in hub.fake.requests[-2:])
    assert first_sent["tools"] == [
        {
            "type": "function",
            "function": {"name": "get_weather", "parameters": TOOL["input_schema"], "description": TOOL["description"]},
        }
    ]
    assert first_sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert first_sent["parallel_tool_calls"] is False
    assert second_sent["messages"][1:] == [
        {"role": "assistant", "content": "", "tool_calls": [{**call, "function": {**call["function"]}}]},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_w1"},
        {"role": "user", "content": "and tomorrow?"},
    ]


async def test_failover_from_an_overloaded_anthropic_to_openai(hub: Hub, claude: FakeAnthropic) -> None:
    key = await _setup(hub, claude, upstream="both")
    claude.script("claude-test", Fail(529, message="Overloaded"))
    async with _async_client(hub, key) as client:
        # a named model is tried first; on failure TokenHub fails over to the next ranked one
        message = await client.messages.create(model="claude-test", max_tokens=50, messages=MESSAGES)
    assert message.model == "gpt-test" and message.content[0].text == "reply from gpt-test"
    assert claude.calls("claude-test") == 1


# ---- streaming -------------------------------------------------------------------------------------------


async def test_async_stream_from_an_anthropic_upstream(hub: Hub, claude: FakeAnthropic) -> None:
    key = await _setup(hub, claude)
    claude.script("claude-test", Reply(text="streaming from Claude", usage={"input_tokens": 30, "output_tokens": 7}))
    client = _async_client(hub, key)
    async with client, client.messages.stream(model="claude-test", max_tokens=100, messages=MESSAGES) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "streaming from Claude"
    assert final.model == "claude-test" and final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (30, 7)
    assert claude.requests[-1]["json"]["stream"] is True


async def test_sync_stream_events_from_an_openai_upstream(hub: Hub, claude: FakeAnthropic) -> None:
    key = await _setup(hub, claude, upstream="openai")
    hub.fake.script("gpt-test", OpenAIReply(content="streamed by gpt"))

    def call() -> list[Any]:
        with _sync_client(hub, key) as client:
            return list(client.messages.create(model="gpt-test", max_tokens=50, messages=MESSAGES, stream=True))

    events = await asyncio.to_thread(call)
    kinds = [e.type for e in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == "streamed by gpt"
    assert events[0].message.model == "gpt-test"
    assert events[-2].delta.stop_reason == "end_turn"
    assert (events[-2].usage.input_tokens, events[-2].usage.output_tokens) == (10, 5)


@pytest.mark.parametrize("upstream", ["anthropic", "openai"])
async def test_streamed_tool_use(hub: Hub, claude: FakeAnthropic, upstream: str) -> None:
    key = await _setup(hub, claude, upstream=upstream)
    claude.script("claude-test", Reply(text="Checking.", tool_uses=(ToolUse("get_weather", {"city": "Oslo"}),)))
    call = {"id": "call_s1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    hub.fake.script("gpt-test", OpenAIReply(content="Checking.", tool_calls=[call], finish_reason="tool_calls"))
    client = _async_client(hub, key)
    async with client, client.messages.stream(model="auto", max_tokens=100, messages=MESSAGES, tools=[TOOL]) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [b.type for b in final.content] == ["text", "tool_use"]
    assert final.content[0].text == "Checking."
    assert (final.content[1].name, final.content[1].input) == ("get_weather", {"city": "Oslo"})


async def test_a_mid_stream_error_raises_in_the_sdk(hub: Hub, claude: FakeAnthropic) -> None:
    key = await _setup(hub, claude)
    claude.script("claude-test", StreamError(after=2))
    received: list[Any] = []
    async with _async_client(hub, key) as client:
        stream = await client.messages.create(model="claude-test", max_tokens=50, messages=MESSAGES, stream=True)
        with pytest.raises(anthropic.APIStatusError) as caught:
            async for event in stream:
                received.append(event)
    assert "message_stop" not in [e.type for e in received]
    assert any(e.type == "content_block_delta" for e in received)
    assert caught.value.body["error"]["type"] == "api_error"
    assert "overloaded_error" in caught.value.body["error"]["message"]


async def test_a_cut_before_the_first_token_fails_over_and_a_cut_after_it_errors(
    hub: Hub, claude: FakeAnthropic
) -> None:
    key = await _setup(hub, claude, upstream="both")
    claude.script("claude-test", StreamCut(after=0), StreamCut(after=1))
    async with _async_client(hub, key) as client:
        async with client.messages.stream(model="claude-test", max_tokens=50, messages=MESSAGES) as stream:
            final = await stream.get_final_message()
        assert final.model == "gpt-test"  # nothing had reached the client: failed over
        stream_two = await client.messages.create(model="claude-test", max_tokens=50, messages=MESSAGES, stream=True)
        with pytest.raises(anthropic.APIStatusError, match="stream"):
            async for _ in stream_two:
                pass


async def test_a_client_that_disconnects_cancels_the_upstream(hub: Hub, claude: FakeAnthropic) -> None:
    key = await _setup(hub, claude)
    claude.script("claude-test", Reply(text="x" * 2000, chunk_delay=0.02))
    async with _async_client(hub, key) as client:
        stream = await client.messages.create(model="claude-test", max_tokens=50, messages=MESSAGES, stream=True)
        async for event in stream:
            if event.type == "content_block_delta":
                break
        await stream.close()
    await asyncio.wait_for(claude.stream_cancelled.wait(), 5)
    assert claude.streams_cancelled == 1
    assert claude.chunks_written < 500


# ---- errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "exception", "status", "error_type"),
    [
        ("no_key", anthropic.AuthenticationError, 401, "authentication_error"),
        ("bad_request", anthropic.BadRequestError, 400, "invalid_request_error"),
        ("image", anthropic.BadRequestError, 400, "invalid_request_error"),
        ("unknown_model", anthropic.NotFoundError, 404, "not_found_error"),
        ("rate_limited", anthropic.RateLimitError, 429, "rate_limit_error"),
        ("context_overflow", anthropic.InternalServerError, 502, "api_error"),
        ("upstream_5xx", anthropic.InternalServerError, 502, "api_error"),
    ],
)
async def test_errors_surface_as_the_sdk_exception_types(
    hub: Hub, claude: FakeAnthropic, setup: str, exception: type, status: int, error_type: str
) -> None:
    key = await _setup(hub, claude)
    kwargs: dict[str, Any] = {"model": "auto", "max_tokens": 50, "messages": MESSAGES}
    if setup == "no_key":
        key = "tokenhub_not_a_real_key"
    elif setup == "bad_request":
        kwargs["extra_body"] = {"temperature": 1.5}
    elif setup == "image":
        image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
        kwargs["messages"] = [{"role": "user", "content": [image, {"type": "text", "text": "what is this?"}]}]
    elif setup == "unknown_model":
        kwargs["model"] = "claude-nonexistent"
    elif setup == "rate_limited":
        claude.script("claude-test", Fail(429, headers={"Retry-After": "30"}))
    elif setup == "context_overflow":
        claude.script("claude-test", ContextOverflow())
    else:
        claude.script("claude-test", *[Fail(500)] * 3)
    async with _async_client(hub, key) as client:
        with pytest.raises(exception) as caught:
            await client.messages.create(**kwargs)
    err = caught.value
    assert err.status_code == status
    assert err.body["type"] == "error" and err.body["error"]["type"] == error_type
    assert err.body["request_id"] == err.response.headers["x-request-id"]
    assert isinstance(err.body["error"]["message"], str) and err.body["error"]["message"]
    assert UPSTREAM_KEY not in json.dumps(err.body)
    if setup == "image":
        assert err.body["error"]["message"] == "the image is not a PNG, JPEG, GIF or WebP file (declared image/png)"


async def test_error_shape_on_the_wire_and_x_api_key_auth(hub: Hub, claude: FakeAnthropic) -> None:
    key = await _setup(hub, claude)
    resp = await hub.client.post("/v1/messages", data=b"{nope", headers={"x-api-key": key})
    body = await resp.json()
    assert resp.status == 400
    assert body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": body["error"]["message"]},
        "request_id": resp.headers["X-Request-Id"],
    }
    ok = await hub.client.post(
        "/v1/messages", json={"model": "auto", "max_tokens": 5, "messages": MESSAGES}, headers={"x-api-key": key}
    )
    assert ok.status == 200 and (await ok.json())["model"] == "claude-test"


async def test_tokenhub_policy_in_the_body_and_the_request_log(hub: Hub, claude: FakeAnthropic) -> None:
    key = await _setup(hub, claude)
    async with _async_client(hub, key) as client:
        with pytest.raises(anthropic.UnprocessableEntityError) as caught:
            await client.messages.create(
                model="auto", max_tokens=5, messages=MESSAGES, extra_body={"tokenhub": {"max_budget_usd": 1e-9}}
            )
        assert "budget" in caught.value.body["error"]["message"]
        await client.messages.create(model="auto", max_tokens=5, messages=MESSAGES)
    await hub.services.records.flush()
    logs = [row for row in await hub.logs() if row["endpoint"] == "messages"]
    assert sorted(row["status"] for row in logs) == [200, 422]


# ---- the reverse: an openai client served by the Anthropic upstream ---------------------------------------


def _openai_client(hub: Hub, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=_base_url(hub) + "/v1", api_key=key, max_retries=0)


OPENAI_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather for a city", "parameters": TOOL["input_schema"]},
}


async def test_openai_client_tool_round_trip_through_an_anthropic_upstream(hub: Hub, claude: FakeAnthropic) -> None:
    key = await _setup(hub, claude)
    claude.script("claude-test", Reply(text="", tool_uses=(ToolUse("get_weather", {"city": "Oslo"}, id="toolu_7"),)))
    async with _openai_client(hub, key) as client:
        first = await client.chat.completions.create(
            model="claude-test",
            messages=[{"role": "system", "content": "be brief"}, *MESSAGES],
            tools=[OPENAI_TOOL],
            seed=3,
            presence_penalty=0.5,
        )
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls" and first.model == "claude-test"
        [tool_call] = choice.message.tool_calls
        assert tool_call.id == "call_toolu_7" and json.loads(tool_call.function.arguments) == {"city": "Oslo"}
        follow_up = [
            *MESSAGES,
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": tool_call.id, "content": "sunny"},
        ]
        second = await client.chat.completions.create(model="claude-test", messages=follow_up, tools=[OPENAI_TOOL])
    assert second.choices[0].message.content == "reply from claude-test"
    assert second.usage is not None and second.usage.total_tokens == 18
    first_sent, second_sent = (r["json"] for r in claude.requests[-2:])
    assert first_sent["system"] == "be brief" and "seed" not in first_sent and "presence_penalty" not in first_sent
    assert second_sent["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_toolu_7", "content": "sunny"}
    ]


async def test_openai_client_stream_from_an_anthropic_upstream(hub: Hub, claude: FakeAnthropic) -> None:
    key = await _setup(hub, claude)
    claude.script("claude-test", Reply(text="Checking.", tool_uses=(ToolUse("get_weather", {"city": "Oslo"}),)))
    async with _openai_client(hub, key) as client:
        stream = await client.chat.completions.create(
            model="auto", messages=MESSAGES, tools=[OPENAI_TOOL], stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == "Checking."
    calls = [tc for d in deltas for tc in d.tool_calls or []]
    assert calls[0].id.startswith("call_toolu_") and calls[0].function.name == "get_weather"
    assert json.loads("".join(tc.function.arguments or "" for tc in calls)) == {"city": "Oslo"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 12
    assert chunks[-1].usage.completion_tokens == 6


async def test_openai_upstream_failure_surfaces_for_an_openai_client_too(hub: Hub, claude: FakeAnthropic) -> None:
    key = await _setup(hub, claude, upstream="openai")
    hub.fake.script("gpt-test", OpenAIFail(429))
    async with _async_client(hub, key) as client:
        with pytest.raises(anthropic.RateLimitError):
            await client.messages.create(model="auto", max_tokens=5, messages=MESSAGES)


async def test_anthropic_provider_from_the_environment(make_hub: Any, claude: FakeAnthropic) -> None:
    hub = await make_hub(anthropic_api_key=UPSTREAM_KEY, anthropic_base_url=claude.base_url + "/v1")
    assert hub.services.adapters["anthropic"].type == "anthropic"
    await hub.add_model("claude-env", "anthropic")
    key = await hub.new_key()
    async with _async_client(hub, key) as client:
        message = await client.messages.create(model="claude-env", max_tokens=5, messages=MESSAGES)
    assert message.content[0].text == "reply from claude-env"
    assert claude.requests[-1]["headers"]["x-api-key"] == UPSTREAM_KEY
