"""output_format shaping and output_schema validation on /v1/chat, through the real server."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.output_format import OutputFormat, shape_text
from tests.conftest import Hub
from tests.fakes.openai_fake import Reply

SCHEMA = {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}


async def _setup(hub: Hub, answer: str) -> str:
    await hub.add_provider()
    await hub.add_model("gpt-test", weight=5)
    hub.fake.script("gpt-test", Reply(content=answer))
    return await hub.new_key()


async def _chat(hub: Hub, key: str, body: dict[str, Any]) -> tuple[int, Any]:
    resp = await hub.client.post("/v1/chat", json=body, headers={"Authorization": f"Bearer {key}"})
    return resp.status, await resp.json()


def _content(body: dict[str, Any]) -> str:
    return body["response"]["choices"][0]["message"]["content"]


async def test_json_format_extracts_the_fenced_json_and_keeps_usage(hub: Hub) -> None:
    key = await _setup(hub, 'Sure!\n```json\n{"city": "Oslo"}\n```\nAnything else?')
    body = {"request": {"messages": [{"role": "user", "content": "q"}]}, "output_format": {"type": "json"}}
    status, answer = await _chat(hub, key, body)
    assert status == 200 and _content(answer) == '{"city": "Oslo"}'
    assert answer["response"]["usage"]["total_tokens"] == 15


async def test_strip_think_and_text_format(hub: Hub) -> None:
    key = await _setup(hub, "<think>hmm, let me see</think>\n# Title\nSome **bold** and `code`")
    body = {
        "request": {"messages": [{"role": "user", "content": "q"}]},
        "output_format": {"type": "text", "strip_think": True},
    }
    status, answer = await _chat(hub, key, body)
    assert status == 200 and _content(answer) == "Title\nSome bold and code"


async def test_output_schema_accepts_a_matching_answer(hub: Hub) -> None:
    key = await _setup(hub, '{"city": "Oslo"}')
    body = {"request": {"messages": [{"role": "user", "content": "q"}], "output_schema": SCHEMA}}
    status, answer = await _chat(hub, key, body)
    assert status == 200 and _content(answer) == '{"city": "Oslo"}'  # unshaped: the provider's body


@pytest.mark.parametrize(
    ("answer", "message"),
    [('{"town": "Oslo"}', "'city' is a required property"), ("Oslo, I think", "not JSON"), ('{"city": 7}', "city")],
)
async def test_output_schema_mismatch_is_502_and_recorded(hub: Hub, answer: str, message: str) -> None:
    key = await _setup(hub, answer)
    body = {"request": {"messages": [{"role": "user", "content": "q"}], "output_schema": SCHEMA}}
    status, error = await _chat(hub, key, body)
    assert status == 502 and error["error"]["type"] == "output_schema_mismatch"
    assert message in error["error"]["message"]
    await hub.services.records.flush()
    row = (await hub.logs())[0]
    assert row["status"] == 502 and row["error_class"] == "output_schema_validation_failed"


async def test_schema_from_a_directive(hub: Hub) -> None:
    key = await _setup(hub, '{"town": "Oslo"}')
    content = '@@tokenhub output_schema={"type":"object","required":["city"]}\nWhere?'
    status, error = await _chat(hub, key, {"request": {"messages": [{"role": "user", "content": content}]}})
    assert status == 502 and error["error"]["type"] == "output_schema_mismatch"


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"output_schema": {"type": "nonsense"}}, "request.output_schema"),
        ({"output_schema": [1, 2]}, "request.output_schema"),
    ],
)
async def test_an_invalid_schema_is_400_before_dispatch(hub: Hub, request_fields: Any, field: str) -> None:
    key = await _setup(hub, "x")
    body = {"request": {"messages": [{"role": "user", "content": "q"}], **request_fields}}
    status, error = await _chat(hub, key, body)
    assert status == 400 and error["error"]["field"] == field
    assert hub.fake.requests == []


def test_shaping_rules() -> None:
    assert shape_text("a" * 10 + "é", OutputFormat(max_tokens=2)) == "a" * 8 + "..."
    assert shape_text("  # Head\n*x*  ", OutputFormat(type="markdown")) == "# Head\n*x*"
    assert shape_text("<think>a\nb</think>  answer", OutputFormat(strip_think=True)) == "answer"
    assert shape_text("no fence here ", OutputFormat(type="json")) == "no fence here"
    assert shape_text("<x/>", OutputFormat(type="xml")) == "<x/>"
