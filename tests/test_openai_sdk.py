"""The official openai SDK, sync and async, as the client of /v1/chat/completions and /v1/models."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
import pytest

from tests.conftest import Hub
from tests.fakes.openai_fake import Fail, Reply, StreamCut

TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "weather", "parameters": {"type": "object"}},
}


async def _setup(hub: Hub, *models: str) -> str:
    await hub.add_provider()
    for index, model in enumerate(models or ("gpt-test",)):
        await hub.add_model(model, weight=9 - index, input_per_1k=0.001, output_per_1k=0.002, max_context_tokens=8000)
    return await hub.new_key()


def _async_client(hub: Hub, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(hub.client.make_url("/v1")), api_key=key, max_retries=0)


def _sync_client(hub: Hub, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=str(hub.client.make_url("/v1")), api_key=key, max_retries=0)


MESSAGES: Any = [{"role": "user", "content": "hello"}]


async def test_async_completion_names_the_model_that_answered(hub: Hub) -> None:
    key = await _setup(hub, "primary", "backup")
    hub.fake.script("primary", Fail(500), Fail(500), Fail(500))  # transient, retried twice, then fail over
    async with _async_client(hub, key) as client:
        raw = await client.chat.completions.with_raw_response.create(model="auto", messages=MESSAGES)
        completion = raw.parse()
    assert completion.model == "backup" and completion.choices[0].message.content == "reply from backup"
    assert completion.id.startswith("chatcmpl-") and completion.object == "chat.completion"
    assert completion.usage is not None and completion.usage.total_tokens == 15
    assert raw.headers["x-negotiated-model"] == "backup" and raw.headers["x-provider"] == "fake"
    assert completion.id == f"chatcmpl-{raw.headers['x-request-id']}"


async def test_sync_completion_with_a_named_model_and_forwarded_parameters(hub: Hub) -> None:
    key = await _setup(hub, "cheap", "named")

    def call() -> Any:
        with _sync_client(hub, key) as client:
            return client.chat.completions.create(
                model="named", messages=MESSAGES, temperature=0.3, max_tokens=20, seed=7, stop=["\n"], user="u-1"
            )

    completion = await asyncio.to_thread(call)
    assert completion.model == "named"
    sent = hub.fake.requests[-1]["json"]
    assert sent["model"] == "named" and sent["temperature"] == 0.3 and sent["max_tokens"] == 20
    assert sent["seed"] == 7 and sent["stop"] == ["\n"] and sent["user"] == "u-1"


async def test_async_stream_yields_chunks_and_usage(hub: Hub) -> None:
    key = await _setup(hub)
    hub.fake.script("gpt-test", Reply(content="streamed answer"))
    async with _async_client(hub, key) as client:
        stream = await client.chat.completions.create(
            model="gpt-test", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "streamed answer"
    assert {c.model for c in chunks} == {"gpt-test"}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


async def test_sync_stream(hub: Hub) -> None:
    key = await _setup(hub)

    def call() -> str:
        with _sync_client(hub, key) as client:
            stream = client.chat.completions.create(model="auto", messages=MESSAGES, stream=True)
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    assert await asyncio.to_thread(call) == "reply from gpt-test"


async def test_tool_calls_round_trip(hub: Hub) -> None:
    key = await _setup(hub)
    call = {"id": "call_w1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
    hub.fake.script("gpt-test", Reply(content=None, tool_calls=[call], finish_reason="tool_calls"))
    async with _async_client(hub, key) as client:
        first = await client.chat.completions.create(model="auto", messages=MESSAGES, tools=[TOOL], tool_choice="auto")
        tool_call = first.choices[0].message.tool_calls[0]
        assert first.choices[0].finish_reason == "tool_calls"
        assert tool_call.id == "call_w1" and tool_call.function.name == "get_weather"
        assert json.loads(tool_call.function.arguments) == {"city": "Oslo"}
        follow_up = [
            *MESSAGES,
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": "call_w1", "content": "sunny"},
        ]
        second = await client.chat.completions.create(model="auto", messages=follow_up, tools=[TOOL])
    assert second.choices[0].message.content == "reply from gpt-test"
    sent = hub.fake.requests[-1]["json"]
    assert sent["tools"] == [TOOL]
    assert sent["messages"][1]["tool_calls"][0]["id"] == "call_w1"
    assert sent["messages"][2] == {"role": "tool", "content": "sunny", "tool_call_id": "call_w1"}


async def test_streamed_tool_call(hub: Hub) -> None:
    key = await _setup(hub)
    call = {"id": "call_s1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    hub.fake.script("gpt-test", Reply(content="", tool_calls=[call], finish_reason="tool_calls"))
    async with _async_client(hub, key) as client:
        stream = await client.chat.completions.create(model="auto", messages=MESSAGES, tools=[TOOL], stream=True)
        calls = [tc async for chunk in stream if chunk.choices for tc in chunk.choices[0].delta.tool_calls or []]
    assert [(c.id, c.function.name) for c in calls] == [("call_s1", "get_weather")]


async def test_models_list(hub: Hub) -> None:
    key = await _setup(hub, "alpha", "beta")
    await hub.add_model("off", enabled=False)
    async with _async_client(hub, key) as client:
        models = await client.models.list()
    assert [m.id for m in models.data] == ["alpha", "beta"]
    assert {m.owned_by for m in models.data} == {"fake"}


@pytest.mark.parametrize(
    ("setup", "exception", "status"),
    [
        ("no_key", openai.AuthenticationError, 401),
        ("unknown_model", openai.NotFoundError, 404),
        ("bad_request", openai.BadRequestError, 400),
        ("rate_limited", openai.RateLimitError, 429),
        ("upstream_5xx", openai.InternalServerError, 502),
    ],
)
async def test_errors_surface_as_the_sdk_exception_types(hub: Hub, setup: str, exception: type, status: int) -> None:
    key = await _setup(hub)
    kwargs: dict[str, Any] = {"model": "auto", "messages": MESSAGES}
    if setup == "no_key":
        key = "tokenhub_not_a_real_key"
    elif setup == "unknown_model":
        kwargs["model"] = "gpt-nonexistent"
    elif setup == "bad_request":
        kwargs["temperature"] = 9
    elif setup == "rate_limited":
        hub.fake.script("gpt-test", Fail(429, headers={"Retry-After": "30"}))
    else:
        hub.fake.script("gpt-test", *[Fail(503)] * 3)
    async with _async_client(hub, key) as client:
        with pytest.raises(exception) as caught:
            await client.chat.completions.create(**kwargs)
    err = caught.value
    assert err.status_code == status
    assert err.body["request_id"] == err.response.headers["x-request-id"]
    assert isinstance(err.body["message"], str) and err.body["message"]


async def test_a_stream_cut_mid_way_raises_in_the_sdk(hub: Hub) -> None:
    key = await _setup(hub)
    hub.fake.script("gpt-test", StreamCut(after=1))
    async with _async_client(hub, key) as client:
        stream = await client.chat.completions.create(model="auto", messages=MESSAGES, stream=True)
        received = []
        with pytest.raises(openai.APIError, match="stream"):
            async for chunk in stream:
                received.append(chunk)
    assert received  # the first token arrived before the cut


async def test_x_api_key_header_is_accepted(hub: Hub) -> None:
    key = await _setup(hub)
    resp = await hub.client.post("/v1/chat/completions", json={"messages": MESSAGES}, headers={"x-api-key": key})
    assert resp.status == 200 and (await resp.json())["model"] == "gpt-test"


async def test_tokenhub_policy_in_the_body_is_applied(hub: Hub) -> None:
    key = await _setup(hub)
    body = {"messages": MESSAGES, "tokenhub": {"max_budget_usd": 0.0000001}}
    resp = await hub.client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
    error = (await resp.json())["error"]
    assert resp.status == 422 and error["code"] == "no_eligible_model" and "budget" in error["message"]


async def test_non_openai_tool_call_ids_are_rewritten(hub: Hub) -> None:
    key = await _setup(hub)
    calls = [
        {"id": "tooluse_abc", "type": "function", "function": {"name": "a", "arguments": "{}"}},
        {"id": "", "type": "function", "function": {"name": "b", "arguments": "{}"}},
    ]
    hub.fake.script("gpt-test", Reply(content=None, tool_calls=calls, finish_reason="tool_calls"))
    async with _async_client(hub, key) as client:
        completion = await client.chat.completions.create(model="auto", messages=MESSAGES, tools=[TOOL])
    assert [c.id for c in completion.choices[0].message.tool_calls] == ["call_abc", "call_1"]
