"""Streaming through the real server: relay, failover before the first token, integrity, cancellation, and the
charging of streams that end early (cut, stall, client gone)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.context import RequestContext
from pipeline.types import RequestRecord
from tests.conftest import Hub
from tests.fakes.anthropic_fake import FakeAnthropic
from tests.fakes.anthropic_fake import StreamCut as AnthropicStreamCut
from tests.fakes.openai_fake import Fail, Hang, Reply, StreamCut, StreamStall

# Prices for the charging tests: a few tokens cost well over the 1e-6 the budget error rounds to, and the
# routing estimate (512 output tokens) stays under the default per-request budget of $0.05.
PRICES = {"input_per_1k": 0.1, "output_per_1k": 0.05}
PROMPT = "0123456789" * 4  # 40 characters: the input estimate is 10 tokens


def priced(input_tokens: int, output_tokens: int) -> float:
    return input_tokens / 1000 * PRICES["input_per_1k"] + output_tokens / 1000 * PRICES["output_per_1k"]


def parse_sse(text: str) -> list[str]:
    """The data payloads of an SSE body, in order."""
    events = []
    for block in text.split("\n\n"):
        data = [line[6:] for line in block.split("\n") if line.startswith("data: ")]
        if data:
            events.append("\n".join(data))
    return events


def content_of(events: list[str]) -> str:
    text = ""
    for data in events:
        if data == "[DONE]":
            continue
        for choice in json.loads(data).get("choices", []):
            text += choice["delta"].get("content") or ""
    return text


async def _setup(hub: Hub, *models: str, prices: dict[str, float] | None = None, **key_fields: Any) -> str:
    await hub.add_provider()
    for index, model in enumerate(models or ("gpt-test",)):
        price = prices or {"input_per_1k": 0.001, "output_per_1k": 0.002}
        await hub.add_model(model, weight=9 - index, max_context_tokens=8000, **price)
    return await hub.new_key(**key_fields)


async def _stream(
    hub: Hub, key: str, path: str = "/v1/chat/completions", *, content: str = "hi", **body: Any
) -> tuple[Any, list[str]]:
    messages = [{"role": "user", "content": content}]
    if path == "/v1/chat":
        payload: dict[str, Any] = {"request": {"messages": messages, "stream": True}}
    else:
        payload = {"model": "auto", "messages": messages, "stream": True, **body}
    resp = await hub.client.post(path, json=payload, headers={"Authorization": f"Bearer {key}"})
    return resp, parse_sse(await resp.text())


async def _record(hub: Hub) -> dict[str, Any]:
    await hub.services.records.flush()
    return (await hub.logs())[0]


async def test_native_stream_relays_chunks_and_records_usage(hub: Hub) -> None:
    key = await _setup(hub)
    hub.fake.script("gpt-test", Reply(content="hello streaming world"))
    resp, events = await _stream(hub, key, "/v1/chat")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["X-Negotiated-Model"] == "gpt-test" and resp.headers["X-Provider"] == "fake"
    assert resp.headers["X-Request-Id"]
    assert events[-1] == "[DONE]"
    assert content_of(events) == "hello streaming world"
    first = json.loads(events[0])
    assert first["model"] == "gpt-test" and first["choices"][0]["delta"]["role"] == "assistant"
    usage_chunk = json.loads(events[-2])
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["total_tokens"] == 15
    sent = hub.fake.requests[-1]["json"]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    record = await _record(hub)
    assert record["status"] == 200 and record["input_tokens"] == 10 and record["output_tokens"] == 5
    assert record["cost_usd"] == pytest.approx(10 / 1000 * 0.001 + 5 / 1000 * 0.002)
    assert 0 < record["ttft_ms"] <= record["latency_ms"]


async def test_completions_stream_sends_usage_only_when_asked(hub: Hub) -> None:
    key = await _setup(hub)
    _, plain = await _stream(hub, key)
    assert all(json.loads(e)["choices"] for e in plain[:-1])
    _, with_usage = await _stream(hub, key, stream_options={"include_usage": True})
    assert json.loads(with_usage[-2])["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


async def test_usage_is_estimated_when_the_upstream_reports_none(hub: Hub) -> None:
    key = await _setup(hub)
    hub.fake.script("gpt-test", Reply(content="x" * 40, usage=None))
    resp, events = await _stream(hub, key)
    assert resp.status == 200 and content_of(events) == "x" * 40
    record = await _record(hub)
    assert record["output_tokens"] == 10 and record["input_tokens"] == 0  # "hi": 2 chars // 4


async def test_tool_call_deltas_are_relayed(hub: Hub) -> None:
    key = await _setup(hub)
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": 1}'}}
    hub.fake.script("gpt-test", Reply(content="", tool_calls=[call], finish_reason="tool_calls"))
    _, events = await _stream(hub, key)
    chunks = [json.loads(e) for e in events[:-1]]
    tool_deltas = [c["choices"][0]["delta"]["tool_calls"] for c in chunks if "tool_calls" in c["choices"][0]["delta"]]
    assert tool_deltas == [[{"index": 0, **call}]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_late_first_token_fails_over_before_anything_is_sent(make_hub: Any) -> None:
    hub = await make_hub(stream_first_token_secs=1)  # room for fast's first token on a loaded machine
    key = await _setup(hub, "slow", "fast")
    hub.fake.script("slow", Reply(first_token_delay=5))
    resp, events = await _stream(hub, key)
    assert resp.status == 200 and resp.headers["X-Negotiated-Model"] == "fast"
    assert content_of(events) == "reply from fast" and events[-1] == "[DONE]"
    assert json.loads(events[0])["model"] == "fast"
    # slow's opening was prepared while its first token was awaited: none of it reached the client
    assert resp.headers["X-Provider"] == "fake" and resp.headers["X-TokenHub-Attempts"] == "slow=transient, fast=ok"
    record = await _record(hub)
    assert record["model_id"] == "fast" and record["escalations"] == 1


async def test_upstream_error_before_the_stream_fails_over(hub: Hub) -> None:
    key = await _setup(hub, "broken", "fine")
    hub.fake.script("broken", Fail(429, headers={"Retry-After": "3"}))
    resp, events = await _stream(hub, key)
    assert resp.status == 200 and content_of(events) == "reply from fine"


async def test_every_candidate_failing_gives_a_json_error_not_a_stream(hub: Hub) -> None:
    key = await _setup(hub)
    hub.fake.script("gpt-test", Fail(429, headers={"Retry-After": "7"}))
    payload = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    resp = await hub.client.post("/v1/chat/completions", json=payload, headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 429 and resp.headers["Retry-After"] == "7"
    body = await resp.json()
    assert body["error"]["type"] == "rate_limit_error" and body["error"]["request_id"]


async def test_hang_before_headers_fails_over_within_the_first_token_limit(make_hub: Any) -> None:
    # A long provider timeout: only the first-token limit (1 s) can end the silent call before it answers.
    hub = await make_hub(stream_first_token_secs=1, provider_timeout_secs=30)
    key = await _setup(hub, "silent", "fine")
    hub.fake.script("silent", Hang(20))
    started = time.monotonic()
    resp, _events = await _stream(hub, key)
    assert resp.status == 200 and resp.headers["X-Negotiated-Model"] == "fine"
    assert time.monotonic() - started < 10  # not its 20 s answer, nor the 30 s timeout: a wide margin over 1 s


@pytest.mark.parametrize("path", ["/v1/chat", "/v1/chat/completions"])
async def test_upstream_cut_mid_stream_ends_with_an_error_event_and_no_done(hub: Hub, path: str) -> None:
    key = await _setup(hub, "gpt-test", "other", prices=PRICES)
    hub.fake.script("gpt-test", StreamCut(after=2))
    resp, events = await _stream(hub, key, path, content=PROMPT)
    assert resp.status == 200 and "[DONE]" not in events
    assert content_of(events[:-1]) == "reply fr"  # two 4-character chunks made it
    error = json.loads(events[-1])["error"]
    assert error["code"] == "stream_error" and "dropped" in error["message"]
    assert hub.fake.calls("other") == 0  # no failover once tokens reached the client
    record = await _record(hub)
    assert record["status"] == 502 and record["error_class"] == "stream_error" and record["model_id"] == "gpt-test"
    # Charged for what the provider produced: the input estimate plus "reply fr" (8 chars = 2 tokens).
    assert (record["input_tokens"], record["output_tokens"]) == (10, 2)
    assert record["cost_usd"] == pytest.approx(priced(10, 2))
    # The spend counters agree with the row (they counted successes only before).
    metrics = await (await hub.client.get("/metrics")).text()
    samples = {
        (s.name, s.labels.get("direction", "")): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name in ("tokenhub_cost_usd_total", "tokenhub_tokens_total") and s.labels.get("model") == "gpt-test"
    }
    assert samples[("tokenhub_cost_usd_total", "")] == pytest.approx(priced(10, 2))
    assert (samples[("tokenhub_tokens_total", "input")], samples[("tokenhub_tokens_total", "output")]) == (10, 2)


async def test_stalled_stream_ends_with_an_error_after_the_idle_limit(make_hub: Any) -> None:
    hub = await make_hub(stream_idle_secs=0.3)
    key = await _setup(hub, prices=PRICES)
    hub.fake.script("gpt-test", StreamStall(after=1, seconds=5))
    _resp, events = await _stream(hub, key, content=PROMPT)
    assert "[DONE]" not in events and "stalled" in json.loads(events[-1])["error"]["message"]
    assert content_of(events[:-1]) == "repl"
    record = await _record(hub)
    assert record["status"] == 502 and record["error_class"] == "stream_error"
    assert (record["input_tokens"], record["output_tokens"]) == (10, 1)
    assert record["cost_usd"] == pytest.approx(priced(10, 1))


async def test_a_cut_anthropic_stream_is_charged_the_providers_input_count(hub: Hub) -> None:
    """Anthropic reports input tokens when the stream starts: a stream cut later is charged that count, plus
    chars/4 of the text relayed (its output count only comes at the end)."""
    async with FakeAnthropic() as claude:
        await hub.add_provider("claude", base_url=claude.base_url, type="anthropic")
        await hub.add_model("claude-test", "claude", **PRICES)
        key = await hub.new_key()
        claude.script("claude-test", AnthropicStreamCut(after=2))
        payload = {
            "model": "claude-test",
            "max_tokens": 50,
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        }
        resp = await hub.client.post("/v1/messages", json=payload, headers={"x-api-key": key})
        text = await resp.text()
    assert resp.status == 200 and "event: error" in text and "message_stop" not in text
    record = await _record(hub)
    assert (record["status"], record["error_class"], record["model_id"]) == (502, "stream_error", "claude-test")
    assert (record["input_tokens"], record["output_tokens"]) == (12, 2)  # "repl" + "y fr"
    assert record["cost_usd"] == pytest.approx(priced(12, 2))


@pytest.mark.parametrize("ending", ["cut", "stall"])
async def test_streams_that_end_early_spend_the_keys_budget(make_hub: Any, ending: str) -> None:
    """The audit's case: mid-answer failures on a key with a small budget. Each is charged, so the third,
    whose estimate (max_tokens=2) no longer fits in what is left, is refused before reaching the provider."""
    hub = await make_hub(stream_idle_secs=0.3)
    cost = priced(10, 2)  # 10 input tokens (the estimate), 2 output ("reply fr")
    key = await _setup(hub, prices=PRICES, monthly_budget_usd=2.5 * cost)
    early_end = StreamCut(after=2) if ending == "cut" else StreamStall(after=2, seconds=5)
    hub.fake.script("gpt-test", early_end, early_end, early_end)
    for _ in range(2):
        resp, events = await _stream(hub, key, content=PROMPT, max_tokens=2)
        assert resp.status == 200 and json.loads(events[-1])["error"]["code"] == "stream_error"
    served = len(hub.fake.requests)
    resp, _ = await _stream(hub, key, content=PROMPT, max_tokens=2)
    body = await resp.json()
    assert resp.status == 429 and body["error"]["code"] == "monthly_budget_exceeded", body
    assert f"spent ${2 * cost:.6f}" in body["error"]["message"], body
    assert len(hub.fake.requests) == served  # refused before any provider call
    await hub.services.records.flush()
    rows = sorted(await hub.logs(), key=lambda row: row["timestamp"])
    assert [(r["status"], r["input_tokens"], r["output_tokens"]) for r in rows] == [
        (502, 10, 2),
        (502, 10, 2),
        (429, 0, 0),
    ]
    assert [r["cost_usd"] for r in rows] == pytest.approx([cost, cost, 0.0])


async def test_malformed_chunk_is_skipped_and_counted(hub: Hub) -> None:
    key = await _setup(hub)
    hub.fake.script("gpt-test", Reply(content="abcdefgh", garbage=True))
    _resp, events = await _stream(hub, key)
    assert content_of(events) == "abcdefgh" and events[-1] == "[DONE]"
    metrics = await (await hub.client.get("/metrics")).text()
    counts = {
        s.labels["provider"]: s.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "tokenhub_stream_malformed_chunks"
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert counts == {"fake": 1.0}


async def test_finished_stream_without_done_marker_ends_cleanly(hub: Hub) -> None:
    key = await _setup(hub)
    hub.fake.script("gpt-test", Reply(content="complete", done_marker=False))
    _resp, events = await _stream(hub, key)
    assert content_of(events) == "complete" and events[-1] == "[DONE]"
    assert (await _record(hub))["status"] == 200


def _next_record(hub: Hub) -> asyncio.Future[RequestRecord]:
    """Resolves with the next record the hub's Recorder emits: a request cut short by its client is
    recorded when the server notices, after the client has already gone."""
    future: asyncio.Future[RequestRecord] = asyncio.get_running_loop().create_future()

    class Catch:
        name = "test_catch"

        def __call__(self, record: RequestRecord, ctx: RequestContext) -> None:
            if not future.done():
                future.set_result(record)

    hub.services.recorder.add(Catch())
    return future


async def test_client_disconnect_cancels_the_upstream_stream_and_is_charged(hub: Hub) -> None:
    # A budget for 1.5 requests of one output token: the first is admitted, and what it used refuses the next.
    key = await _setup(hub, prices=PRICES, monthly_budget_usd=1.5 * priced(10, 1))
    hub.fake.script("gpt-test", Reply(content="word " * 200, chunk_delay=0.05))
    recorded = _next_record(hub)
    payload = {"model": "auto", "messages": [{"role": "user", "content": PROMPT}], "stream": True, "max_tokens": 1}
    resp = await hub.client.post("/v1/chat/completions", json=payload, headers={"Authorization": f"Bearer {key}"})
    first = json.loads((await resp.content.readline())[6:])  # the stream is flowing
    assert first["choices"][0]["delta"]["role"] == "assistant"
    resp.close()  # the client goes away mid-stream
    await asyncio.wait_for(hub.fake.stream_cancelled.wait(), 5)
    emitted = await asyncio.wait_for(recorded, 5)
    record = await _record(hub)
    assert record["request_id"] == emitted.request_id and record["status"] == 499
    assert record["error_class"] in ("cancelled", "client_disconnected")  # handler cancelled / write failed
    assert record["model_id"] == "gpt-test" and record["input_tokens"] == 10 and record["output_tokens"] >= 1
    assert record["cost_usd"] == pytest.approx(priced(10, record["output_tokens"]))
    resp, _ = await _stream(hub, key, content=PROMPT, max_tokens=1)
    error = (await resp.json())["error"]
    assert resp.status == 429 and error["code"] == "monthly_budget_exceeded"
    assert f"${record['cost_usd']:.6f}" in error["message"]


async def test_a_slow_client_holds_back_the_upstream_instead_of_buffering(hub: Hub) -> None:
    key = await _setup(hub)
    piece, pieces = 64 * 1024, 800  # ~52 MB: far more than the socket buffers on both sides can hold
    hub.fake.script("gpt-test", Reply(content="y" * (piece * pieces), piece_size=piece))
    payload = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    resp = await hub.client.post("/v1/chat/completions", json=payload, headers={"Authorization": f"Bearer {key}"})
    # The client reads nothing: the upstream's writes must stall (not run to the end into TokenHub's memory).
    written, steady_since = -1, 0
    for _ in range(100):
        await asyncio.sleep(0.05)
        if hub.fake.chunks_written != written:
            written, steady_since = hub.fake.chunks_written, 0
        elif (steady_since := steady_since + 1) >= 6:
            break
    assert written < pieces, "TokenHub kept reading upstream while its client did not"
    received = 0
    async for line in resp.content:
        if line.startswith(b"data: {"):
            received += sum(len(c["delta"].get("content") or "") for c in json.loads(line[6:])["choices"])
    assert received == piece * pieces and hub.fake.chunks_written == pieces
