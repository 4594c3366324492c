"""Bad input gets a clear JSON error naming the field, with the request id; nothing is dispatched."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Hub


async def _post(hub: Hub, key: str, data: bytes | str, **headers: str) -> tuple[int, dict[str, Any]]:
    resp = await hub.client.post(
        "/v1/chat", data=data, headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", **headers}
    )
    return resp.status, await resp.json()


def _chat(messages: Any = None, **extra: Any) -> dict[str, Any]:
    request = {"messages": [{"role": "user", "content": "hi"}] if messages is None else messages}
    return {"request": request, **extra}


BAD_BODIES = [
    ("malformed json", b'{"request": {"messages": [', 400, "body"),
    ("not an object", b"[1, 2]", 400, "body"),
    ("missing request", {"policy": {}}, 400, "request"),
    ("missing messages", {"request": {}}, 400, "request.messages"),
    ("empty messages", _chat([]), 400, "request.messages"),
    ("messages not a list", _chat("hello"), 400, "request.messages"),
    ("message without role", _chat([{"content": "x"}]), 400, "request.messages.0.role"),
    ("content wrong type", _chat([{"role": "user", "content": 5}]), 400, "request.messages.0.content"),
    ("unknown mode", _chat(policy={"mode": "turbo"}), 400, "policy.mode"),
    ("negative budget", _chat(policy={"max_budget_usd": -1}), 400, "policy.max_budget_usd"),
    ("budget over 100", _chat(policy={"max_budget_usd": 101}), 400, "policy.max_budget_usd"),
    ("budget as string", _chat(policy={"max_budget_usd": "0.5"}), 400, "policy.max_budget_usd"),
    ("latency too large", _chat(policy={"max_latency_ms": 300_001}), 400, "policy.max_latency_ms"),
    ("min_weight too large", _chat(policy={"min_weight": 11}), 400, "policy.min_weight"),
    (
        "negative token estimate",
        {"request": {**_chat()["request"], "estimated_input_tokens": -1}},
        400,
        "request.estimated_input_tokens",
    ),
    ("parameters not an object", {"request": {**_chat()["request"], "parameters": [1]}}, 400, "request.parameters"),
    ("stream not a bool", {"request": {**_chat()["request"], "stream": "yes"}}, 400, "request.stream"),
    (
        "image content part without its image_url",
        {"request": {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}},
        400,
        "request.messages.0.content.0.image_url",
    ),
]


@pytest.mark.parametrize(("case", "body", "status", "field"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
async def test_bad_body_is_rejected_naming_the_field(
    ready_hub: tuple[Hub, str], case: str, body: Any, status: int, field: str
) -> None:
    hub, key = ready_hub
    import json

    raw = body if isinstance(body, bytes) else json.dumps(body)
    got_status, got = await _post(hub, key, raw, **{"X-Request-Id": "bad-1"})
    assert got_status == status, got
    assert got["error"]["type"] == "invalid_request"
    assert got["error"]["field"] == field
    assert got["error"]["request_id"].startswith("th-")  # ours; the client's "bad-1" is only echoed
    assert hub.fake.requests == []  # nothing dispatched


async def test_too_many_messages(make_hub) -> None:  # type: ignore[no-untyped-def]
    hub = await make_hub(max_messages=3)
    await hub.add_provider()
    await hub.add_model("gpt-test")
    key = await hub.new_key()
    status, body, _ = await hub.chat(key, [{"role": "user", "content": "x"}] * 4)
    assert status == 400
    assert body["error"]["field"] == "request.messages" and "too many messages" in body["error"]["message"]
    assert hub.fake.requests == []


async def test_body_over_the_limit_is_413(make_hub) -> None:  # type: ignore[no-untyped-def]
    hub = await make_hub(max_body_bytes=2048)
    await hub.add_provider()
    await hub.add_model("gpt-test")
    key = await hub.new_key()
    status, body, _ = await hub.chat(key, "x" * 5000)
    assert status == 413
    assert body["error"]["type"] == "payload_too_large" and body["error"]["request_id"]
    assert hub.fake.requests == []


async def test_chunked_body_over_the_limit_is_413(make_hub) -> None:  # type: ignore[no-untyped-def]
    hub = await make_hub(max_body_bytes=2048)
    key = await hub.new_key()

    async def chunks():  # no Content-Length: the limit must hold while reading
        for _ in range(10):
            yield b"x" * 512

    resp = await hub.client.post("/v1/chat", data=chunks(), headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 413
    assert (await resp.json())["error"]["type"] == "payload_too_large"


async def test_unknown_route_and_method_are_json(hub: Hub) -> None:
    resp = await hub.client.get("/v1/nope")
    assert resp.status == 404
    body = await resp.json()
    assert body["error"]["type"] == "not_found" and body["error"]["request_id"]
    resp = await hub.client.get("/v1/chat")
    assert resp.status == 405
    assert (await resp.json())["error"]["type"] == "method_not_allowed"


async def test_bad_input_changes_nothing_but_is_recorded_once(ready_hub: tuple[Hub, str]) -> None:
    hub, key = ready_hub
    status, _ = await _post(hub, key, b"{oops", **{"X-Request-Id": "bad-json-1"})
    assert status == 400
    logs = [row for row in await hub.logs() if row["client_request_id"] == "bad-json-1"]
    assert len(logs) == 1
    assert logs[0]["status"] == 400 and logs[0]["model_id"] == ""
