"""A model's tool_name_map (model-facing name -> client-facing name) over HTTP: tool definitions, a forced
tool_choice, assistant tool calls and tool results are renamed for the model; tool calls in answers and
streams are renamed back, on /v1/chat/completions, /v1/messages and /v1/chat, against OpenAI and Anthropic
upstreams; the admin API validates, shows and clears the map."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import openai
import pytest

from tests.conftest import Hub
from tests.fakes.anthropic_fake import FakeAnthropic, ToolUse
from tests.fakes.anthropic_fake import Reply as ClaudeReply
from tests.fakes.openai_fake import Fail, Reply

MAP = {"shell": "bash", "read": "read_file"}  # model-facing -> client-facing
TOOLS = [
    {"type": "function", "function": {"name": "bash", "parameters": {"type": "object", "properties": {}}}},
    {"type": "function", "function": {"name": "read_file", "parameters": {"type": "object", "properties": {}}}},
    {"type": "function", "function": {"name": "other", "parameters": {"type": "object", "properties": {}}}},
]
HISTORY: Any = [
    {"role": "user", "content": "list files"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "bash", "arguments": '{"c":"ls"}'}}],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "a.txt"},
    {"role": "user", "content": "now read it"},
]
MODEL_CALL = {"id": "call_9", "type": "function", "function": {"name": "read", "arguments": '{"path":"a.txt"}'}}


@pytest.fixture
async def claude() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(api_key="sk-test-secret") as server:
        yield server


async def _setup(hub: Hub, **model: Any) -> str:
    await hub.add_provider()
    await hub.add_model("mapped", weight=9, tool_name_map=MAP, **model)
    return await hub.new_key()


def _client(hub: Hub, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(hub.client.make_url("/v1")), api_key=key, max_retries=0)


def _sent(hub: Hub) -> dict[str, Any]:
    return hub.fake.requests[-1]["json"]


async def test_completions_rename_every_tool_reference_both_ways(hub: Hub) -> None:
    key = await _setup(hub)
    hub.fake.script("mapped", Reply(content="", tool_calls=[MODEL_CALL], finish_reason="tool_calls"))
    async with _client(hub, key) as client:
        answer = await client.chat.completions.create(
            model="mapped",
            messages=HISTORY,
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "read_file"}},
        )
    sent = _sent(hub)
    assert [t["function"]["name"] for t in sent["tools"]] == ["shell", "read", "other"]  # unmapped stays
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "read"}}
    assert sent["messages"][1]["tool_calls"][0]["function"]["name"] == "shell"
    call = answer.choices[0].message.tool_calls[0]
    assert (call.function.name, call.function.arguments) == ("read_file", '{"path":"a.txt"}')
    assert answer.choices[0].finish_reason == "tool_calls"


async def test_a_stream_renames_tool_call_deltas(hub: Hub) -> None:
    key = await _setup(hub)
    hub.fake.script("mapped", Reply(content="ok", tool_calls=[MODEL_CALL], finish_reason="tool_calls"))
    async with _client(hub, key) as client:
        stream = await client.chat.completions.create(model="mapped", messages=HISTORY, tools=TOOLS, stream=True)
        names = [
            call.function.name
            async for chunk in stream
            for call in (chunk.choices[0].delta.tool_calls or [] if chunk.choices else [])
            if call.function and call.function.name
        ]
    assert names == ["read_file"]
    assert [t["function"]["name"] for t in _sent(hub)["tools"]][:2] == ["shell", "read"]


async def test_native_chat_and_a_failover_start_from_the_clients_names(hub: Hub) -> None:
    """The request is copied per model: an unmapped fallback gets the client's names, not the first model's."""
    key = await _setup(hub)
    await hub.add_model("plain", weight=1)
    hub.fake.script("mapped", Fail(500), Fail(500), Fail(500))
    hub.fake.script(
        "plain", Reply(content="", tool_calls=[{**MODEL_CALL, "function": {"name": "bash", "arguments": "{}"}}])
    )
    status, body, _ = await hub.chat(key, HISTORY, model_hint="mapped", parameters={"tools": TOOLS})
    assert status == 200, body
    assert body["negotiated_model"] == "plain"
    mapped_sent = [r["json"] for r in hub.fake.requests if r["model"] == "mapped"]
    assert mapped_sent and all(s["tools"][0]["function"]["name"] == "shell" for s in mapped_sent)
    plain_sent = next(r["json"] for r in hub.fake.requests if r["model"] == "plain")
    assert plain_sent["tools"][0]["function"]["name"] == "bash"
    assert plain_sent["messages"][1]["tool_calls"][0]["function"]["name"] == "bash"
    assert body["response"]["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "bash"


async def test_messages_endpoint_renames_for_an_openai_upstream(hub: Hub) -> None:
    key = await _setup(hub)
    hub.fake.script("mapped", Reply(content="", tool_calls=[MODEL_CALL], finish_reason="tool_calls"))
    tool = {"name": "read_file", "input_schema": {"type": "object", "properties": {}}}
    history: Any = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "done"}]},
    ]
    async with anthropic.AsyncAnthropic(
        base_url=str(hub.client.make_url("")).rstrip("/"), api_key=key, max_retries=0
    ) as client:
        message = await client.messages.create(
            model="mapped",
            max_tokens=100,
            messages=history,
            tools=[tool],
            tool_choice={"type": "tool", "name": "read_file"},
        )
    sent = _sent(hub)
    assert sent["tools"][0]["function"]["name"] == "read"
    assert sent["tool_choice"]["function"]["name"] == "read"
    assert sent["messages"][1]["tool_calls"][0]["function"]["name"] == "shell"
    uses = [b for b in message.content if b.type == "tool_use"]
    assert [(u.name, u.input) for u in uses] == [("read_file", {"path": "a.txt"})]


async def test_an_anthropic_upstream_is_sent_and_answers_in_model_names(hub: Hub, claude: FakeAnthropic) -> None:
    await hub.add_provider("claude", base_url=claude.base_url, type="anthropic")
    await hub.add_model("claude-mapped", "claude", weight=9, tool_name_map=MAP)
    key = await hub.new_key()
    claude.script("claude-mapped", ClaudeReply(text="", tool_uses=(ToolUse("shell", {"c": "pwd"}),)))
    claude.script("claude-mapped", ClaudeReply(text="", tool_uses=(ToolUse("shell", {"c": "pwd"}),)))
    async with _client(hub, key) as client:
        answer = await client.chat.completions.create(model="claude-mapped", messages=HISTORY, tools=TOOLS)
        assert answer.choices[0].message.tool_calls[0].function.name == "bash"
        stream = await client.chat.completions.create(model="claude-mapped", messages=HISTORY, tools=TOOLS, stream=True)
        names = [
            call.function.name
            async for chunk in stream
            for call in (chunk.choices[0].delta.tool_calls or [] if chunk.choices else [])
            if call.function and call.function.name
        ]
    assert names == ["bash"]
    sent = claude.requests[-1]["json"]
    assert [t["name"] for t in sent["tools"]] == ["shell", "read", "other"]
    assert sent["messages"][1]["content"][0]["name"] == "shell"  # the history's tool_use block


async def test_admin_validates_shows_and_clears_the_map(hub: Hub) -> None:
    await hub.add_provider()
    created = await hub.admin("POST", "/models", {"id": "m", "provider_id": "fake", "tool_name_map": MAP}, expect=201)
    assert created["model"]["tool_name_map"] == MAP and created["model"]["gemma4_output"] is False
    for bad, needle in (
        ({"a": "x", "b": "x"}, "ambiguous"),
        ({"bad name": "x"}, "tool_name_map"),
        ({"a": ""}, "tool_name_map"),
        (["a"], "tool_name_map"),
    ):
        error = (await hub.admin("PATCH", "/models/m", {"tool_name_map": bad}, expect=400))["error"]
        assert needle in error["message"] and error["request_id"], error
    assert (await hub.admin("GET", "/models"))["items"][0]["tool_name_map"] == MAP  # nothing changed
    patched = await hub.admin("PATCH", "/models/m", {"tool_name_map": {"x": "y"}}, expect=200)
    assert patched["model"]["tool_name_map"] == {"x": "y"}
    cleared = await hub.admin("PATCH", "/models/m", {"tool_name_map": {}}, expect=200)
    assert cleared["model"]["tool_name_map"] == {}
    key = await hub.new_key()
    await hub.chat_ok(key, model_hint="m", parameters={"tools": TOOLS})
    assert json.dumps(_sent(hub)["tools"]).count('"bash"') == 1  # no map left: the client's names
