"""Idempotency-Key on every public POST endpoint, over HTTP: a repeat gets the stored answer without a second
provider call or charge; another body is 422; a repeat while the first runs waits for it; streams replay."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import openai
import pytest

from store.idempotency import InFlight, StoredResponse
from tests.conftest import Hub
from tests.fakes.openai_fake import Fail, Gated, Reply, StreamCut

MESSAGES = [{"role": "user", "content": "hello there"}]
CHAT_BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat": {"request": {"messages": MESSAGES}},
    "/v1/chat/completions": {"model": "auto", "messages": MESSAGES},
    "/v1/messages": {"model": "gpt-test", "max_tokens": 50, "messages": MESSAGES},
    "/v1/embeddings": {"model": "emb", "input": ["one", "two"]},
    "/v1/plan": {"request": {"messages": MESSAGES}},
}


async def _setup(hub: Hub) -> tuple[str, str]:
    await hub.add_provider()
    await hub.add_model("gpt-test", weight=5, input_per_1k=0.001, output_per_1k=0.002, max_context_tokens=8000)
    await hub.add_model("emb", kind="embedding", input_per_1k=0.001, max_context_tokens=8000)
    data = await hub.admin(
        "POST", "/apikeys", {"name": "idem", "scopes": ["chat", "plan", "embeddings"], "monthly_budget_usd": 10.0}
    )
    return data["key"], data["id"]


async def _post(
    hub: Hub, path: str, key: str, body: dict[str, Any], idempotency_key: str | None = "k-1"
) -> tuple[int, bytes, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    resp = await hub.client.post(path, json=body, headers=headers)
    return resp.status, await resp.read(), resp.headers


def _spent(hub: Hub, key_id: str) -> float:
    return hub.services.key_ledger.spent(key_id, time.time())


@pytest.mark.parametrize("path", list(CHAT_BODIES))
async def test_a_repeat_replays_the_answer_without_calling_or_charging(hub: Hub, path: str) -> None:
    key, key_id = await _setup(hub)
    status, body, headers = await _post(hub, path, key, CHAT_BODIES[path])
    assert status == 200, body
    assert "Idempotent-Replayed" not in headers
    calls, spent = len(hub.fake.requests), _spent(hub, key_id)
    assert calls >= 1 and spent > 0
    again, replayed, replay_headers = await _post(hub, path, key, CHAT_BODIES[path])
    assert (again, replayed) == (status, body)
    assert replay_headers["Idempotent-Replayed"] == "true" and replay_headers["Idempotency-Replay"] == "true"
    assert replay_headers["X-Idempotent-Request-Id"] == headers["X-Request-Id"] != replay_headers["X-Request-Id"]
    assert replay_headers["Content-Type"] == headers["Content-Type"]
    assert len(hub.fake.requests) == calls and _spent(hub, key_id) == spent  # no provider call, no charge
    await hub.services.records.flush()
    rows = [r for r in await hub.logs() if r["routing_reason"].startswith("idempotent-replay")]
    assert len(rows) == 1 and rows[0]["cost_usd"] == 0 and rows[0]["status"] == 200
    assert headers["X-Request-Id"] in rows[0]["routing_reason"]
    metrics = await (await hub.client.get("/metrics")).text()
    assert "tokenhub_idempotent_replays_total{endpoint=" in metrics


async def test_feedback_is_idempotent_too(hub: Hub) -> None:
    key, _ = await _setup(hub)
    _, _chat, headers = await _post(hub, "/v1/chat", key, CHAT_BODIES["/v1/chat"], idempotency_key=None)
    rating = {"request_id": headers["X-Request-Id"], "score": 0.9}
    first = await _post(hub, "/v1/feedback", key, rating)
    again = await _post(hub, "/v1/feedback", key, rating)
    assert first[0] == again[0] == 200 and first[1] == again[1] and again[2]["Idempotent-Replayed"] == "true"
    status, body, _ = await _post(hub, "/v1/feedback", key, {**rating, "score": 0.1})
    assert status == 422 and b"idempotency_key_reused" in body


async def test_the_same_key_with_another_body_is_422_in_the_endpoints_shape(hub: Hub) -> None:
    key, _ = await _setup(hub)
    assert (await _post(hub, "/v1/chat/completions", key, CHAT_BODIES["/v1/chat/completions"]))[0] == 200
    other = {"model": "auto", "messages": [{"role": "user", "content": "something else"}]}
    resp = await hub.client.post(
        "/v1/chat/completions", json=other, headers={"Authorization": f"Bearer {key}", "Idempotency-Key": "k-1"}
    )
    error = (await resp.json())["error"]
    assert resp.status == 422 and error["code"] == "idempotency_key_reused" and error["param"] == "Idempotency-Key"
    # the same key on another endpoint is another request too
    status, body, _ = await _post(hub, "/v1/chat", key, CHAT_BODIES["/v1/chat"])
    assert status == 422 and b"idempotency_key_reused" in body
    assert len(hub.fake.requests) == 1


async def test_a_repeat_while_the_first_runs_waits_for_its_answer(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    key, _key_id = await _setup(hub)
    answer, repeat_waits = asyncio.Event(), asyncio.Event()
    store = hub.services.idempotency
    find = store.find

    def spy(scope: bytes, now: float) -> StoredResponse | InFlight | None:
        found = find(scope, now)
        if isinstance(found, InFlight):  # the repeat found the first running: it waits for it from here
            repeat_waits.set()
        return found

    monkeypatch.setattr(store, "find", spy)
    hub.fake.script("gpt-test", Gated(answer))  # the first runs until the repeat is waiting for it
    first = asyncio.ensure_future(_post(hub, "/v1/chat", key, CHAT_BODIES["/v1/chat"]))
    await hub.fake.wait_until(lambda: hub.fake.in_flight == 1)
    repeat = asyncio.ensure_future(_post(hub, "/v1/chat", key, CHAT_BODIES["/v1/chat"]))
    await asyncio.wait_for(repeat_waits.wait(), 15)
    answer.set()
    second = await repeat
    original = await first
    assert second[0] == original[0] == 200 and second[1] == original[1]
    assert second[2]["Idempotent-Replayed"] == "true" and hub.fake.calls("gpt-test") == 1


async def test_a_repeat_that_cannot_wait_gets_409(make_hub: Callable[..., Any]) -> None:
    hub = await make_hub(idempotency_wait_secs=0)
    key, _ = await _setup(hub)
    answer = asyncio.Event()
    hub.fake.script("gpt-test", Gated(answer))
    first = asyncio.ensure_future(_post(hub, "/v1/chat", key, CHAT_BODIES["/v1/chat"]))
    await hub.fake.wait_until(lambda: hub.fake.in_flight == 1)
    status, body, headers = await _post(hub, "/v1/chat", key, CHAT_BODIES["/v1/chat"])
    assert status == 409 and b"idempotency_in_progress" in body and headers["Retry-After"]
    answer.set()
    assert (await first)[0] == 200
    assert (await _post(hub, "/v1/chat", key, CHAT_BODIES["/v1/chat"]))[2]["Idempotent-Replayed"] == "true"


async def test_a_stream_replays_as_the_same_stream_through_the_openai_sdk(hub: Hub) -> None:
    key, _key_id = await _setup(hub)
    hub.fake.script("gpt-test", Reply(content="a streamed answer in pieces"))
    client = openai.AsyncOpenAI(base_url=str(hub.client.make_url("/v1")), api_key=key, max_retries=0)
    texts = []
    for _ in range(2):
        stream = await client.chat.completions.create(
            model="auto",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"Idempotency-Key": "stream-1"},
        )
        chunks = [chunk async for chunk in stream]
        texts.append("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    assert texts == ["a streamed answer in pieces"] * 2
    assert hub.fake.calls("gpt-test") == 1
    await client.close()


async def test_another_api_key_with_the_same_idempotency_key_is_independent(hub: Hub) -> None:
    key, _ = await _setup(hub)
    other = await hub.new_key()
    first = await _post(hub, "/v1/chat", key, CHAT_BODIES["/v1/chat"])
    second = await _post(hub, "/v1/chat", other, CHAT_BODIES["/v1/chat"])
    assert first[0] == second[0] == 200 and "Idempotent-Replayed" not in second[2]
    assert hub.fake.calls("gpt-test") == 2


async def test_a_stored_answer_expires_after_the_window(make_hub: Callable[..., Any]) -> None:
    hub = await make_hub(idempotency_window_secs=1)
    key, _ = await _setup(hub)
    assert (await _post(hub, "/v1/chat", key, CHAT_BODIES["/v1/chat"]))[0] == 200
    await asyncio.sleep(1.05)
    status, _, headers = await _post(hub, "/v1/chat", key, CHAT_BODIES["/v1/chat"])
    assert status == 200 and "Idempotent-Replayed" not in headers and hub.fake.calls("gpt-test") == 2


async def test_failures_are_not_kept_so_a_retry_runs_for_real(hub: Hub) -> None:
    key, _ = await _setup(hub)
    hub.fake.script("gpt-test", Fail(401), StreamCut(after=1))
    assert (await _post(hub, "/v1/chat", key, CHAT_BODIES["/v1/chat"]))[0] == 502
    stream = {"model": "auto", "messages": MESSAGES, "stream": True}
    status, body, _ = await _post(hub, "/v1/chat/completions", key, stream, idempotency_key="k-2")
    assert status == 200 and b'"error"' in body and b"[DONE]" not in body  # cut: ended by an error event
    assert (await _post(hub, "/v1/chat", key, CHAT_BODIES["/v1/chat"]))[0] == 200  # ran again
    status, body, headers = await _post(hub, "/v1/chat/completions", key, stream, idempotency_key="k-2")
    assert status == 200 and b"[DONE]" in body and "Idempotent-Replayed" not in headers
    assert hub.fake.calls("gpt-test") == 4


async def test_a_rejection_on_its_merits_is_kept_and_replayed(hub: Hub) -> None:
    key, _ = await _setup(hub)
    hub.fake.script("gpt-test", Fail(400))  # the provider rejects the request itself: retrying cannot help
    first = await _post(hub, "/v1/chat", key, CHAT_BODIES["/v1/chat"])
    again = await _post(hub, "/v1/chat", key, CHAT_BODIES["/v1/chat"])
    assert first[0] == again[0] == 400 and first[1] == again[1] and again[2]["Idempotent-Replayed"] == "true"
    assert hub.fake.calls("gpt-test") == 1
    await hub.services.records.flush()
    replay = next(r for r in await hub.logs() if r["routing_reason"].startswith("idempotent-replay"))
    assert replay["status"] == 400 and replay["error_class"] == "idempotent_replay"


async def test_a_request_refused_before_it_ran_is_not_kept(hub: Hub) -> None:
    key, _ = await _setup(hub)
    body = {"model": "no-such-model", "messages": MESSAGES}  # 404 while decoding: the key is not used up
    assert (await _post(hub, "/v1/chat/completions", key, body))[0] == 404
    status, _, headers = await _post(hub, "/v1/chat/completions", key, CHAT_BODIES["/v1/chat/completions"])
    assert status == 200 and "Idempotent-Replayed" not in headers


@pytest.mark.parametrize("bad", ["", "has space", "x" * 256, "naïve"])
async def test_a_malformed_idempotency_key_is_400(hub: Hub, bad: str) -> None:
    key, _ = await _setup(hub)
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": bad}
    resp = await hub.client.post("/v1/chat", json=CHAT_BODIES["/v1/chat"], headers=headers)
    error = (await resp.json())["error"]
    assert resp.status == 400 and error["field"] == "Idempotency-Key" and error["request_id"]
    assert hub.fake.calls("gpt-test") == 0


async def test_without_a_valid_api_key_nothing_is_replayed(hub: Hub) -> None:
    key, _ = await _setup(hub)
    assert (await _post(hub, "/v1/chat", key, CHAT_BODIES["/v1/chat"]))[0] == 200
    status, _body, headers = await _post(hub, "/v1/chat", "tokenhub_not-a-key", CHAT_BODIES["/v1/chat"])
    assert status == 401 and "Idempotent-Replayed" not in headers


async def test_answers_beyond_the_byte_cap_are_evicted_oldest_first(make_hub: Callable[..., Any]) -> None:
    hub = await make_hub(idempotency_max_bytes=4000)
    key, _ = await _setup(hub)
    for n in range(4):
        assert (await _post(hub, "/v1/chat", key, CHAT_BODIES["/v1/chat"], idempotency_key=f"cap-{n}"))[0] == 200
    store = hub.services.idempotency
    assert store.bytes <= 4000 and 0 < len(store) < 4
    status, _, headers = await _post(hub, "/v1/chat", key, CHAT_BODIES["/v1/chat"], idempotency_key="cap-3")
    assert headers.get("Idempotent-Replayed") == "true"  # the newest is kept
    status, _, headers = await _post(hub, "/v1/chat", key, CHAT_BODIES["/v1/chat"], idempotency_key="cap-0")
    assert status == 200 and "Idempotent-Replayed" not in headers  # the oldest was evicted: it ran again
