"""Gemma-4 output parsing (gemma4_output): the parser on its own (arguments, thinking, trimming, tokens split
across stream chunks, malformed calls), then over HTTP against the fake OpenAI upstream, answered and streamed,
with a tool_name_map on top, and the admin's refusal for an Anthropic provider."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from adapters.gemma4 import Gemma4Parser, parse_call, rewrite_gemma4_choices
from tests.conftest import Hub
from tests.fakes.openai_fake import Reply

Q = '<|"|>'
ANSWER = (
    f"<|channel>thought\nThe user wants weather.<channel|>  Let me check.\n"
    f"<|tool_call>call:get_weather{{city:{Q}Paris, FR{Q},days:3,metric:true,extra:null}}<tool_call|>\n"
    f"<|tool_call>call:log{{tags:[{Q}a{Q},2],opts:{{deep:{Q}x{Q}}},note:unquoted words}}<tool_call|>  "
)


def _parse(*chunks: str) -> tuple[str, str, list[tuple[str, Any]]]:
    parser = Gemma4Parser()
    parts = [parser.feed(c) for c in chunks] + [parser.finish()]
    calls = [(c.name, json.loads(c.arguments)) for p in parts for c in p.calls]
    return "".join(p.text for p in parts), "".join(p.reasoning for p in parts), calls


def test_arguments_become_json() -> None:
    call = parse_call(f"call:f{{s:{Q}a, b: c{Q},n:-1.5,b:false,o:{{k:[1,{Q}x{Q}]}},raw:hello there}}")
    assert call is not None and call.name == "f"
    assert json.loads(call.arguments) == {
        "s": "a, b: c",
        "n": -1.5,
        "b": False,
        "o": {"k": [1, "x"]},
        "raw": "hello there",
    }
    assert json.loads(parse_call("call:noargs{}").arguments) == {}  # type: ignore[union-attr]
    assert json.loads(parse_call("bare").arguments) == {}  # type: ignore[union-attr]
    for broken in ("call:{a:1}", f"call:f{{a:{Q}open}}", "call:f{a:1", "call:f{a:1} trailing", "call:f{a 1}"):
        assert parse_call(broken) is None, broken


def test_thinking_is_moved_out_and_calls_extracted_and_text_trimmed() -> None:
    text, reasoning, calls = _parse(ANSWER)
    assert text == "Let me check."
    assert reasoning == "The user wants weather."
    assert calls == [
        ("get_weather", {"city": "Paris, FR", "days": 3, "metric": True, "extra": None}),
        ("log", {"tags": ["a", 2], "opts": {"deep": "x"}, "note": "unquoted words"}),
    ]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 11])
def test_tokens_split_across_chunks_parse_the_same(size: int) -> None:
    chunks = [ANSWER[i : i + size] for i in range(0, len(ANSWER), size)]
    assert _parse(*chunks) == _parse(ANSWER)


def test_plain_text_and_unfinished_tokens_are_kept() -> None:
    assert _parse("  just text <| not a token  ") == ("just text <| not a token", "", [])
    assert _parse("a <|tool_call>call:f{a:1") == ("a <|tool_call>call:f{a:1", "", [])  # never closed: text
    assert _parse("a <|tool_call>call:{oops}<tool_call|> b") == ("a <|tool_call>call:{oops}<tool_call|> b", "", [])
    assert _parse("<|channel>thought\nunfinished") == ("", "unfinished", [])
    assert _parse("x <|tool_ca", "ll>call:f{}<tool_call|>") == ("x", "", [("f", {})])


def test_choices_rewrite_keeps_other_fields() -> None:
    body = {
        "id": "x",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"},
            {"index": 1, "message": {"role": "assistant", "content": "  plain  "}, "finish_reason": "stop"},
            {"index": 2, "message": {"role": "assistant", "content": "<|channel>thought\nonly<channel|>"}},
        ],
    }
    out = rewrite_gemma4_choices(body)
    first, second, third = out["choices"]
    assert first["finish_reason"] == "tool_calls" and first["message"]["content"] == "Let me check."
    assert [c["id"] for c in first["message"]["tool_calls"]] == ["call_0_0", "call_0_1"]
    assert second == {"index": 1, "message": {"role": "assistant", "content": "plain"}, "finish_reason": "stop"}
    assert third["message"] == {"role": "assistant", "content": None, "reasoning_content": "only"}
    assert out["id"] == "x"


# --- over HTTP --------------------------------------------------------------------------------------------


async def _setup(hub: Hub, **fields: Any) -> str:
    await hub.add_provider()
    await hub.add_model("gemma-4", weight=9, gemma4_output=True, **fields)
    await hub.add_model("plain", weight=1)
    return await hub.new_key()


def _client(hub: Hub, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(hub.client.make_url("/v1")), api_key=key, max_retries=0)


async def test_an_answer_is_parsed_and_other_models_are_not(hub: Hub) -> None:
    key = await _setup(hub)
    hub.fake.script("gemma-4", Reply(content=ANSWER), Reply(content=ANSWER))
    hub.fake.script("plain", Reply(content=ANSWER))
    async with _client(hub, key) as client:
        answer = await client.chat.completions.create(model="gemma-4", messages=[{"role": "user", "content": "hi"}])
        untouched = await client.chat.completions.create(model="plain", messages=[{"role": "user", "content": "hi"}])
    choice = answer.choices[0]
    assert choice.message.content == "Let me check." and choice.finish_reason == "tool_calls"
    calls = [(c.id, c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls or []]
    assert calls[0] == ("call_0_0", "get_weather", {"city": "Paris, FR", "days": 3, "metric": True, "extra": None})
    assert len(calls) == 2
    assert untouched.choices[0].message.content == ANSWER  # the flag is per model

    status, body, _ = await hub.chat(key, "hi", model_hint="gemma-4")  # the native endpoint too
    assert status == 200 and body["response"]["choices"][0]["message"]["reasoning_content"] == "The user wants weather."


async def test_a_stream_is_parsed_as_it_flows(hub: Hub) -> None:
    key = await _setup(hub, tool_name_map={"get_weather": "weather"})
    hub.fake.script("gemma-4", Reply(content=ANSWER, piece_size=3))
    async with _client(hub, key) as client:
        stream = await client.chat.completions.create(
            model="gemma-4", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        chunks = [chunk async for chunk in stream]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    content = "".join(d.content or "" for d in deltas)
    reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    calls = [call for d in deltas for call in d.tool_calls or []]
    assert content == "Let me check." and reasoning == "The user wants weather."
    assert [(c.index, c.id, c.function.name) for c in calls] == [(0, "call_0_0", "weather"), (1, "call_0_1", "log")]
    assert json.loads(calls[1].function.arguments)["tags"] == ["a", 2]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    assert "<|" not in content


async def test_gemma4_output_needs_an_openai_compatible_provider(hub: Hub) -> None:
    await hub.add_provider("claude", base_url="http://127.0.0.1:9", type="anthropic")
    body = {"id": "g", "provider_id": "claude", "gemma4_output": True}
    error = (await hub.admin("POST", "/models", body, expect=400))["error"]
    assert error["message"].startswith("gemma4_output") and error["request_id"]
    assert (await hub.admin("GET", "/models"))["items"] == []
    await hub.add_provider()
    await hub.add_model("g2", gemma4_output=True)
    assert (await hub.admin("PATCH", "/models/g2", {"gemma4_output": False}, expect=200))["model"][
        "gemma4_output"
    ] is False
