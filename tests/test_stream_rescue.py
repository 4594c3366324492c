"""Stream rescue through the real server: a stream that breaks after its first token (cut, stall, error event)
continues on a model that continues a prefill, spliced into the client's stream, in every wire format."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stages.stream_splice import splice_offset
from tests.conftest import Hub
from tests.fakes import anthropic_fake as claude_fake
from tests.fakes import openai_fake as oai
from tests.fakes.anthropic_fake import FakeAnthropic, ToolUse

ANSWER = "The quick brown fox jumps over the lazy dog, then it runs far away into the quiet green forest."
PRICES = {"openai": (0.01, 0.02), "claude": (0.03, 0.06), "vllm": (0.001, 0.002)}  # $ per 1k input, output
PROMPT = "tell me about the fox"


def _price(kind: str, tokens_in: int, tokens_out: int) -> float:
    per_in, per_out = PRICES[kind]
    return tokens_in / 1000 * per_in + tokens_out / 1000 * per_out


@pytest.fixture
async def claude() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as server:
        server.responder = lambda model, body: ANSWER
        yield server


async def _setup(hub: Hub, claude: FakeAnthropic, *kinds: str) -> str:
    """Providers and one model each, ranked in the order given: gpt-main (openai), claude-main / claude-fb
    (anthropic), llama-fb (vllm, on the OpenAI fake: continue_final_message)."""
    hub.fake.responder = lambda model, body: ANSWER
    models = {
        "gpt-main": ("fake", "openai"),
        "gpt-other": ("fake", "openai"),
        "claude-main": ("claude", "claude"),
        "claude-fb": ("claude", "claude"),
        "llama-fb": ("vllm", "vllm"),
    }
    providers = {models[k][0] for k in kinds}
    if "fake" in providers:
        await hub.add_provider("fake")
    if "claude" in providers:
        await hub.add_provider("claude", base_url=claude.base_url, type="anthropic")
    if "vllm" in providers:
        await hub.add_provider("vllm", base_url=hub.fake.base_url.removesuffix("/v1"), type="vllm")
    for rank, model_id in enumerate(kinds):
        provider, prices = models[model_id]
        per_in, per_out = PRICES[prices]
        await hub.add_model(
            model_id, provider, weight=9 - rank, input_per_1k=per_in, output_per_1k=per_out, max_context_tokens=8000
        )
    return await hub.new_key()


async def _row(hub: Hub) -> dict[str, Any]:
    await hub.services.records.flush()
    return (await hub.logs())[0]


async def _rescues(hub: Hub) -> dict[str, float]:
    text = await (await hub.client.get("/metrics")).text()
    return {
        s.labels["outcome"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "tokenhub_stream_rescues_total"
    }


def _openai_client(hub: Hub, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(hub.client.make_url("/v1")), api_key=key, max_retries=0)


def _anthropic_client(hub: Hub, key: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=str(hub.client.make_url("")), api_key=key, max_retries=0)


async def _openai_stream(hub: Hub, key: str, model: str = "gpt-main") -> tuple[str, list[Any]]:
    """A stream asking for `model` (tried first; the other models stay candidates)."""
    async with _openai_client(hub, key) as client:
        stream = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def _breaks(kind: str) -> dict[str, Any]:
    return {
        "cut": oai.StreamCut(after=3),
        "stall": oai.StreamStall(after=3, seconds=5),
        "error": oai.StreamError(after=3),
    }[kind]


@pytest.mark.parametrize("kind", ["cut", "stall", "error"])
async def test_openai_sdk_stream_rescued_on_anthropic(make_hub: Any, claude: FakeAnthropic, kind: str) -> None:
    hub = await make_hub(stream_idle_secs=0.3)
    key = await _setup(hub, claude, "gpt-main", "gpt-other", "claude-fb")
    hub.fake.script("gpt-main", _breaks(kind))
    text, chunks = await _openai_stream(hub, key)
    assert text == ANSWER
    usages = [c.usage for c in chunks if c.usage is not None]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"] and len(usages) == 1
    # The fallback continued from the delivered text ("The quick br"), sent as the assistant's prefill.
    sent = claude.requests[-1]["json"]
    assert sent["messages"][-1] == {"role": "assistant", "content": "The quick br"}
    assert hub.fake.calls("gpt-other") == 0  # OpenAI models do not continue a prefill: never asked
    row = await _row(hub)
    assert (row["status"], row["model_id"]) == (200, "claude-fb")
    assert row["attempts"] == "gpt-main=transient, claude-fb=rescued"
    assert "rescued: claude-fb continued the answer" in row["routing_reason"]
    # Both calls are charged: the broken one (input estimate 5, "The quick br" = 3 tokens), the fallback's usage.
    first = _price("openai", 5, 3)
    assert (row["input_tokens"], row["output_tokens"]) == (5 + 12, 3 + 6)
    assert row["cost_usd"] == pytest.approx(first + _price("claude", 12, 6))
    assert (usages[0].prompt_tokens, usages[0].completion_tokens) == (17, 9)
    assert (await _rescues(hub))["rescued"] == 1


@pytest.mark.parametrize("kind", ["cut", "error"])
async def test_anthropic_sdk_stream_rescued_mid_word_on_vllm(hub: Hub, claude: FakeAnthropic, kind: str) -> None:
    key = await _setup(hub, claude, "claude-main", "llama-fb")
    claude.script("claude-main", claude_fake.StreamCut(after=3) if kind == "cut" else claude_fake.StreamError(after=3))
    events = []
    async with (
        _anthropic_client(hub, key) as client,
        client.messages.stream(
            model="claude-main", max_tokens=200, messages=[{"role": "user", "content": PROMPT}]
        ) as stream,
    ):
        async for event in stream:
            events.append(event.type)
        message = await stream.get_final_message()
    assert "".join(b.text for b in message.content if b.type == "text") == ANSWER
    assert events.count("message_start") == 1 and events.count("message_stop") == 1
    assert message.stop_reason == "end_turn"
    sent = hub.fake.requests[-1]["json"]
    assert sent["continue_final_message"] is True and sent["add_generation_prompt"] is False
    assert sent["messages"][-1] == {"role": "assistant", "content": "The quick br"}
    assert sent["max_tokens"] == 200 - 3  # what is left of the client's cap
    row = await _row(hub)
    broke = "transient" if kind == "cut" else "rate_limited"  # Anthropic's overloaded_error
    assert row["attempts"] == f"claude-main={broke}, llama-fb=rescued" and row["model_id"] == "llama-fb"
    # The broken stream: Anthropic's input count (12) + 3 tokens relayed; the continuation: the fake's usage.
    assert row["cost_usd"] == pytest.approx(_price("claude", 12, 3) + _price("vllm", 10, 5))
    assert message.usage.output_tokens == 3 + 5


async def test_native_stream_rescue_drops_a_repeated_tail(make_hub: Any, claude: FakeAnthropic) -> None:
    hub = await make_hub(stream_idle_secs=0.3)
    key = await _setup(hub, claude, "gpt-main", "claude-fb")
    hub.fake.script("gpt-main", oai.StreamStall(after=5, seconds=5))  # "The quick brown fox "
    claude.script("claude-fb", claude_fake.Reply(text=ANSWER, repeat_words=3))  # "brown fox jumps ..." again
    body = {"request": {"messages": [{"role": "user", "content": PROMPT}], "stream": True, "model_hint": "gpt-main"}}
    resp = await hub.client.post("/v1/chat", json=body, headers={"Authorization": f"Bearer {key}"})
    events = [e for e in (await resp.text()).split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == ANSWER
    assert claude.requests[-1]["json"]["messages"][-1]["content"] == "The quick brown fox"  # stripped
    assert [c["usage"]["total_tokens"] for c in chunks if c.get("usage")] == [5 + 5 + 12 + 6]


async def test_no_capable_fallback_ends_with_the_error_event(hub: Hub, claude: FakeAnthropic) -> None:
    key = await _setup(hub, claude, "gpt-main", "gpt-other")
    hub.fake.script("gpt-main", oai.StreamCut(after=2))
    with pytest.raises(openai.APIError, match="no other model that continues a prefill"):
        await _openai_stream(hub, key)
    assert hub.fake.calls("gpt-other") == 0
    row = await _row(hub)
    assert (row["status"], row["error_class"], row["model_id"]) == (502, "stream_error", "gpt-main")
    assert "not rescued: no other model that continues a prefill" in row["routing_reason"]
    assert (await _rescues(hub))["no_capable_fallback"] == 1


async def test_an_openai_model_marked_supports_prefill_is_used(hub: Hub, claude: FakeAnthropic) -> None:
    key = await _setup(hub, claude, "gpt-main", "gpt-other")
    models = {m["id"]: m for m in (await hub.admin("GET", "/models"))["items"]}
    assert (models["gpt-other"]["supports_prefill"], models["gpt-other"]["prefill"]) == (None, False)
    await hub.admin("PATCH", "/models/gpt-other", {"supports_prefill": True}, expect=200)
    hub.fake.script("gpt-main", oai.StreamCut(after=2))
    # A plain OpenAI-compatible host answers a trailing assistant turn afresh; this fake then repeats the whole
    # answer, which the splice recognises as a restart and drops.
    text, _ = await _openai_stream(hub, key)
    assert text == ANSWER
    assert "continue_final_message" not in hub.fake.requests[-1]["json"]
    patched = await hub.admin("PATCH", "/models/gpt-other", {"supports_prefill": None}, expect=200)
    assert (patched["model"]["supports_prefill"], patched["model"]["prefill"]) == (None, False)
    error = await hub.admin("PATCH", "/models/gpt-other", {"supports_prefill": "yes"}, expect=400)
    assert error["error"]["request_id"]


async def test_a_tool_call_stream_is_not_spliced(hub: Hub, claude: FakeAnthropic) -> None:
    key = await _setup(hub, claude, "claude-main", "llama-fb")
    tool_only = claude_fake.Reply(text="", tool_uses=(ToolUse("lookup", {"city": "Paris"}),))
    claude.script("claude-main", claude_fake.StreamCut(reply=tool_only))  # cut after the tool_use block
    payload = {
        "model": "claude-main",
        "max_tokens": 100,
        "stream": True,
        "messages": [{"role": "user", "content": PROMPT}],
    }
    resp = await hub.client.post("/v1/messages", json=payload, headers={"x-api-key": key})
    text = await resp.text()
    assert '"tool_use"' in text and "event: error" in text and "message_stop" not in text
    assert "tool-call stream cannot be continued" in text
    assert hub.fake.calls("llama-fb") == 0
    assert (await _rescues(hub))["tool_calls"] == 1


async def test_max_stream_rescues_zero_disables_it(hub: Hub, claude: FakeAnthropic) -> None:
    key = await _setup(hub, claude, "gpt-main", "claude-fb")
    definition = [
        {"stage": "auth"},
        {"stage": "policy"},
        {"stage": "escalate"},
        {"stage": "dispatch", "with": {"max_stream_rescues": 0}},
    ]
    await hub.admin("PUT", "/tenants/default/pipeline", definition, expect=200)
    hub.fake.script("gpt-main", oai.StreamCut(after=2))
    with pytest.raises(openai.APIError, match="stream rescue is off"):
        await _openai_stream(hub, key)
    assert claude.calls("claude-fb") == 0
    assert (await _rescues(hub))["disabled"] == 1
    bad = [{"stage": "auth"}, {"stage": "policy"}, {"stage": "dispatch", "with": {"max_stream_rescues": -1}}]
    await hub.admin("PUT", "/tenants/default/pipeline", bad, expect=400)


@pytest.mark.parametrize("refusal", [claude_fake.PrefillRejected(), claude_fake.ContentPolicy()])
async def test_a_refused_continuation_ends_with_the_error_event(hub: Hub, claude: FakeAnthropic, refusal: Any) -> None:
    key = await _setup(hub, claude, "gpt-main", "claude-fb")
    hub.fake.script("gpt-main", oai.StreamCut(after=3))
    claude.script("claude-fb", refusal)
    received = ""
    async with _openai_client(hub, key) as client:
        stream = await client.chat.completions.create(
            model="gpt-main", messages=[{"role": "user", "content": PROMPT}], stream=True
        )
        with pytest.raises(openai.APIError, match="the rescue failed") as raised:
            async for chunk in stream:
                received += chunk.choices[0].delta.content or "" if chunk.choices else ""
    assert received == "The quick br"  # what the broken stream delivered, nothing repeated or added
    assert "claude-fb" in str(raised.value)
    row = await _row(hub)
    assert row["attempts"] == "gpt-main=transient, claude-fb=fatal" and row["status"] == 502
    assert row["cost_usd"] == pytest.approx(_price("openai", 5, 3))  # the refusal cost nothing
    assert (await _rescues(hub))["failed"] == 1


async def test_a_stalled_continuation_moves_to_the_next_capable_model(make_hub: Any, claude: FakeAnthropic) -> None:
    hub = await make_hub(stream_first_token_secs=1)  # room for the other first tokens on a loaded machine
    key = await _setup(hub, claude, "gpt-main", "claude-fb", "llama-fb")
    hub.fake.script("gpt-main", oai.StreamCut(after=4))
    hub.fake.script("llama-fb", oai.Reply(first_token_delay=5))  # the cheapest capable model: tried first
    text, _ = await _openai_stream(hub, key)
    assert text == ANSWER
    row = await _row(hub)
    assert row["attempts"] == "gpt-main=transient, llama-fb=transient, claude-fb=rescued"


@pytest.mark.parametrize(
    ("delivered", "head", "joined"),
    [
        ("The quick brown ", " fox", "The quick brown fox"),  # stripped prefill: whitespace not doubled
        ("Hello wo", "rld", "Hello world"),  # continues mid-word
        ("The quick brown fox", "quick brown fox jumps", "The quick brown fox jumps"),  # restarted sentence
        ("The quick bro", "quick brown fox", "The quick brown fox"),  # restart that finishes the last word
        ("Hi there", "Hi there, friend", "Hi there, friend"),  # the whole answer again
        ("I said no", " no way", "I said no no way"),  # one word said twice is kept
        ("bookkee", "eper", "bookkeeeper"),  # a one-letter coincidence is not a repeat
        ("Hello", "Helloween", "HelloHelloween"),
    ],
)
def test_splice_offset(delivered: str, head: str, joined: str) -> None:
    offset = splice_offset(delivered, head, final=True)
    assert offset is not None and delivered + head[offset:] == joined


def test_splice_waits_while_the_start_could_still_be_a_repeat() -> None:
    assert splice_offset("The quick brown", " quick", final=False) is None
    assert splice_offset("The quick brown", "", final=False) is None
    assert splice_offset("The quick brown", " fox", final=False) == 0


async def test_a_malformed_event_in_the_continuation_is_skipped(hub: Hub, claude: FakeAnthropic) -> None:
    key = await _setup(hub, claude, "gpt-main", "llama-fb")
    hub.fake.script("gpt-main", oai.StreamError(after=2))
    hub.fake.script("llama-fb", oai.Reply(garbage=True))
    text, _ = await _openai_stream(hub, key)
    assert text == ANSWER
    row = await _row(hub)
    assert row["attempts"] == "gpt-main=transient, llama-fb=rescued"
