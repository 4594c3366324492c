"""vLLM through the real server: round-robin over endpoints, down/up by failure and probe, model discovery,
streaming, embeddings, and the adapter's error classification."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import openai
import pytest

from adapters.endpoints import parse_endpoints
from adapters.errors import ProviderError
from adapters.http import HttpClient, RetryPolicy
from adapters.registry import build_provider
from adapters.vllm import VLLMAdapter
from adapters.vllm_prober import DiscoveredModel, parse_model_list
from pipeline.types import ChatRequest, ErrorClass, Message, ProviderInfo
from tests.conftest import Hub
from tests.fakes.openai_fake import Drop, Fail, FakeOpenAI, Hang

# A long interval: the prober's first cycle runs at start-up, then tests drive cycles with run_once().
QUIET = 3600


@asynccontextmanager
async def endpoints(*models: str, count: int = 2) -> AsyncIterator[list[FakeOpenAI]]:
    fakes = [FakeOpenAI(list(models)) for _ in range(count)]
    for fake in fakes:
        await fake.start()
    try:
        yield fakes
    finally:
        for fake in fakes:
            await fake.stop()


def dead_url() -> str:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


async def start(make_hub: Callable[..., Any], urls: list[str], **overrides: Any) -> tuple[Hub, str]:
    hub = await make_hub(vllm_endpoints=",".join(urls), vllm_probe_interval_secs=QUIET, **overrides)
    await hub.services.vllm_prober.run_once()
    return hub, await hub.new_key()


async def complete(hub: Hub, key: str, model: str = "auto", **extra: Any) -> tuple[int, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    resp = await hub.client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
    return resp.status, await resp.json()


async def served(hub: Hub, key: str, model: str = "auto", *, by: str = "llama") -> None:
    """Asking for ``model`` gets a 200 chat.completion from ``by``, with its answer."""
    status, body = await complete(hub, key, model)
    assert status == 200 and body["model"] == by and body["choices"][0]["message"]["content"], body


def chat_calls(fake: FakeOpenAI) -> int:
    return sum(1 for r in fake.requests if r.get("path") == "/v1/chat/completions")


def adapter_of(hub: Hub, provider_id: str = "vllm") -> VLLMAdapter:
    adapter = hub.services.adapters[provider_id]
    assert isinstance(adapter, VLLMAdapter)
    return adapter


# --- round robin and endpoint health -------------------------------------------------------------------


async def test_calls_spread_round_robin_over_the_endpoints(make_hub: Any) -> None:
    async with endpoints("llama") as (a, b):
        hub, key = await start(make_hub, [a.base_url, b.base_url])
        for _ in range(6):
            status, body = await complete(hub, key)
            assert status == 200 and body["model"] == "llama"
        assert (chat_calls(a), chat_calls(b)) == (3, 3)
        assert all("Authorization" not in r["headers"] for r in a.requests + b.requests)  # no key: no header


async def test_bearer_sent_only_when_a_key_is_configured(make_hub: Any) -> None:
    async with endpoints("llama", count=1) as (a,):
        hub, key = await start(make_hub, [a.base_url], vllm_api_key="sk-vllm-secret")
        assert (await complete(hub, key))[0] == 200
        assert a.requests[-1]["headers"]["Authorization"] == "Bearer sk-vllm-secret"
        providers = await hub.admin("GET", "/providers")
        vllm = next(p for p in providers["items"] if p["id"] == "vllm")
        assert vllm["type"] == "vllm" and vllm["source"] == "env"
        assert "sk-vllm-secret" not in json.dumps(providers)


async def test_failed_endpoint_is_skipped_until_its_probe_succeeds(make_hub: Any) -> None:
    async with endpoints("llama") as (a, b):
        hub, key = await start(make_hub, [a.base_url, b.base_url])
        assert (await complete(hub, key))[0] == 200  # a
        b.script("llama", Fail(503))
        b.healthy = False
        status, body = await complete(hub, key)  # b answers 503: marked down, the retry goes to a at once
        assert status == 200 and body["model"] == "llama"
        assert (chat_calls(a), chat_calls(b)) == (2, 1)
        for _ in range(4):
            await served(hub, key)
        assert chat_calls(b) == 1  # skipped while down
        await hub.services.vllm_prober.run_once()
        assert chat_calls(b) == 1 and not adapter_of(hub).endpoints[1].healthy  # its probe still fails
        b.healthy = True
        await hub.services.vllm_prober.run_once()
        assert adapter_of(hub).endpoints[1].healthy
        for _ in range(4):
            await served(hub, key)
        assert (chat_calls(a), chat_calls(b)) == (8, 3)  # shared again


async def test_unreachable_endpoint_fails_over_to_the_next_one(make_hub: Any) -> None:
    async with endpoints("llama", count=1) as (a,):
        dead = dead_url()
        hub = await make_hub(vllm_endpoints=f"{dead},{a.base_url}", vllm_probe_interval_secs=QUIET)
        await hub.add_model("llama", "vllm")
        key = await hub.new_key()
        adapter = adapter_of(hub)
        await hub.services.vllm_prober.run_once()  # the dead endpoint's probe fails: down before any call
        assert [e.healthy for e in adapter.endpoints] == [False, True]
        adapter.pool.mark_up(adapter.endpoints[0])  # as if it had just been up: a call must find out itself
        for _ in range(3):
            status, body = await complete(hub, key)
            assert status == 200 and body["model"] == "llama"
        assert chat_calls(a) == 3
        assert not adapter.endpoints[0].healthy and "connection failed" in adapter.endpoints[0].last_error


async def test_every_endpoint_down_is_tried_anyway(make_hub: Any) -> None:
    async with endpoints("llama") as (a, b):
        hub, key = await start(make_hub, [a.base_url, b.base_url])
        a.healthy = b.healthy = False
        await hub.services.vllm_prober.run_once()
        assert not any(e.healthy for e in adapter_of(hub).endpoints)
        for _ in range(4):
            await served(hub, key)
        assert (chat_calls(a), chat_calls(b)) == (2, 2)


async def test_endpoint_5xx_everywhere_is_a_502_after_bounded_attempts(make_hub: Any) -> None:
    async with endpoints("llama") as (a, b):
        hub, key = await start(make_hub, [a.base_url, b.base_url], provider_max_retries=2)
        a.script("llama", *[Fail(500)] * 5)
        b.script("llama", *[Fail(500)] * 5)
        status, body = await complete(hub, key)
        assert status == 502 and body["error"]["code"] == "upstream_error"
        assert chat_calls(a) + chat_calls(b) == 3  # one call and two retries, alternating endpoints


async def test_prober_loop_survives_dead_endpoints_and_keeps_cycling(make_hub: Any) -> None:
    async with endpoints("llama", count=1) as (a,):
        hub = await make_hub(vllm_endpoints=f"{dead_url()},{a.base_url}", vllm_probe_interval_secs=0.05)
        prober = hub.services.vllm_prober
        await a.wait_until(lambda: a.health_checks >= 4)  # one probe a cycle: the 4th means 3 cycles are done
        assert prober.cycles >= 3
        assert [e.healthy for e in adapter_of(hub).endpoints] == [False, True]
        assert "llama" in hub.services.snapshot.models  # discovered from the live endpoint


# --- discovery -------------------------------------------------------------------------------------------


async def test_discovered_models_are_routable_and_listed(make_hub: Any) -> None:
    async with endpoints("llama-3-8b", "qwen-7b") as (a, b):
        a.max_model_len["llama-3-8b"] = 8192
        b.max_model_len["llama-3-8b"] = 8192
        hub, key = await start(make_hub, [a.base_url, b.base_url])
        listed = await (await hub.client.get("/v1/models")).json()
        entries = {m["id"]: m for m in listed["data"]}
        assert entries["llama-3-8b"]["owned_by"] == "vllm" and entries["llama-3-8b"]["max_model_len"] == 8192
        assert entries["qwen-7b"]["owned_by"] == "vllm" and "context_length" not in entries["qwen-7b"]
        model = hub.services.snapshot.models["llama-3-8b"]
        assert (model.weight, model.input_per_1k, model.output_per_1k, model.kind) == (5, 0.0, 0.0, "chat")
        status, body = await complete(hub, key, "qwen-7b")
        assert status == 200 and body["model"] == "qwen-7b"
        # in memory only: the admin model list (SQLite) does not hold them
        stored = await hub.admin("GET", "/models")
        assert stored["items"] == [] and set(hub.services.discovered_models) == {"llama-3-8b", "qwen-7b"}
        health = await (await hub.client.get("/healthz")).json()
        assert health["status"] == "ok" and health["routable_models"] == 2


async def test_sdk_lists_discovered_models(make_hub: Any) -> None:
    async with endpoints("llama-3-8b", count=1) as (a,):
        a.max_model_len["llama-3-8b"] = 4096
        hub, key = await start(make_hub, [a.base_url])
        client = openai.AsyncOpenAI(base_url=str(hub.client.make_url("/v1")), api_key=key, max_retries=0)
        async with client:
            models = [m async for m in client.models.list()]
        assert [(m.id, m.owned_by) for m in models] == [("llama-3-8b", "vllm")]
        assert models[0].model_extra == {"context_length": 4096, "max_model_len": 4096}


async def test_discovery_follows_the_upstream_model_list(make_hub: Any) -> None:
    async with endpoints(count=1) as (a,):
        a.script("old-model")  # scripting a model id adds it to the fake's /v1/models
        hub, key = await start(make_hub, [a.base_url])
        assert "old-model" in hub.services.snapshot.models
        a.reset()
        a.script("new-model")  # the deployment now serves another model
        await hub.services.vllm_prober.run_once()
        assert "new-model" in hub.services.snapshot.models and "old-model" not in hub.services.snapshot.models
        status, body = await complete(hub, key, "old-model")
        assert status == 404 and body["error"]["type"] == "not_found_error"


async def test_stored_model_wins_over_a_discovered_one(make_hub: Any, fake: FakeOpenAI) -> None:
    async with endpoints("llama", "shared-id", count=1) as (a,):
        hub, key = await start(make_hub, [a.base_url])
        await hub.add_model("llama", "vllm", weight=9, max_context_tokens=1000, input_per_1k=0.5)
        await hub.add_provider()  # "fake": an OpenAI provider that also has a model called "shared-id"
        await hub.add_model("shared-id", "fake", weight=2)
        await hub.services.vllm_prober.run_once()
        models = hub.services.snapshot.models
        assert (models["llama"].weight, models["llama"].max_context_tokens, models["llama"].input_per_1k) == (
            9,
            1000,
            0.5,
        )
        assert models["shared-id"].provider_id == "fake"
        status, _body = await complete(hub, key, "shared-id")
        assert status == 200 and fake.calls("shared-id") == 1 and chat_calls(a) == 0
        await hub.admin("DELETE", "/models/shared-id", expect=200)  # deleted: the discovered one shows again
        assert hub.services.snapshot.models["shared-id"].provider_id == "vllm"


async def test_admin_registered_vllm_provider_with_several_urls(make_hub: Any) -> None:
    async with endpoints("mistral") as (a, b):
        hub = await make_hub(vllm_probe_interval_secs=QUIET)
        body = {"id": "gpu-pool", "type": "vllm", "base_url": f"{a.base_url},{b.base_url}"}
        await hub.admin("POST", "/providers", body, expect=201)
        adapter = adapter_of(hub, "gpu-pool")
        assert [e.base_url for e in adapter.endpoints] == [a.base_url[:-3], b.base_url[:-3]]
        assert adapter.health_endpoint() == a.base_url[:-3] + "/health"
        assert "Authorization" not in adapter.headers()
        await hub.services.vllm_prober.run_once()
        key = await hub.new_key()
        for _ in range(2):
            await served(hub, key, "mistral", by="mistral")
        assert (chat_calls(a), chat_calls(b)) == (1, 1)


# --- wire format -------------------------------------------------------------------------------------------


async def test_streaming_through_vllm_spreads_and_fails_over(make_hub: Any) -> None:
    async with endpoints("llama") as (a, b):
        hub, key = await start(make_hub, [a.base_url, b.base_url])
        b.script("llama", Fail(502))
        for _ in range(2):
            resp = await hub.client.post(
                "/v1/chat/completions",
                json={"model": "llama", "messages": [{"role": "user", "content": "hi"}], "stream": True},
                headers={"Authorization": f"Bearer {key}"},
            )
            text = await resp.text()
            assert resp.status == 200 and resp.headers["X-Provider"] == "vllm"
            events = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
            assert events[-1] == "[DONE]"
            content = "".join(
                c["choices"][0]["delta"].get("content") or "" for c in map(json.loads, events[:-1]) if c.get("choices")
            )
            assert content == "reply from llama"
        assert (chat_calls(a), chat_calls(b)) == (2, 1)  # the second stream's 502 on b went to a
        assert a.requests[-1]["json"]["stream_options"] == {"include_usage": True}


async def test_vllm_specific_parameters_are_forwarded(make_hub: Any) -> None:
    async with endpoints("llama", count=1) as (a,):
        hub, key = await start(make_hub, [a.base_url])
        params = {"top_k": 40, "temperature": 0.2, "thinking": {"type": "enabled"}}
        status, _body, _ = await hub.chat(key, model_hint="llama", parameters=params)
        assert status == 200
        sent = a.requests[-1]["json"]
        assert sent["top_k"] == 40 and sent["temperature"] == 0.2 and "thinking" not in sent


async def test_context_overflow_phrase_escalates_to_a_larger_model(make_hub: Any) -> None:
    async with endpoints("small", "large", count=1) as (a,):
        hub, key = await start(make_hub, [a.base_url])
        await hub.add_model("small", "vllm", weight=9, max_context_tokens=4096)
        await hub.add_model("large", "vllm", weight=1, max_context_tokens=32768)
        overflow = Fail(400, body="This model's maximum context length is 4096 tokens")
        a.script("small", overflow, overflow)  # also with max_tokens lowered to fit its window
        status, body = await complete(hub, key)
        assert status == 200 and body["model"] == "large"


async def test_embeddings_through_vllm_round_robin(make_hub: Any) -> None:
    async with endpoints("bge-m3") as (a, b):
        hub = await make_hub(vllm_endpoints=f"{a.base_url},{b.base_url}", vllm_probe_interval_secs=QUIET)
        await hub.add_model("bge-m3", "vllm", kind="embedding", max_context_tokens=8192)
        key = await hub.new_key(scopes=["embeddings"])
        await hub.services.vllm_prober.run_once()  # the start-up cycle is done: it cannot flip `a` back up
        a.script("bge-m3", Drop())
        for text in ("one", "two", "three"):
            resp = await hub.client.post(
                "/v1/embeddings",
                json={"model": "bge-m3", "input": text},
                headers={"Authorization": f"Bearer {key}"},
            )
            body = await resp.json()
            assert resp.status == 200 and body["model"] == "bge-m3"
            assert body["data"][0]["embedding"] == FakeOpenAI.embedding_of("bge-m3", text)
        paths = [r["path"] for r in a.requests + b.requests]
        assert paths.count("/v1/embeddings") == 4  # the dropped one was retried on the other endpoint
        assert not adapter_of(hub).endpoints[0].healthy


# --- the shared retry loop over the endpoints --------------------------------------------------------------


async def _send(adapter: VLLMAdapter, budget: float = 5.0, **kw: Any) -> Any:
    request = ChatRequest(messages=[Message("user", "hi")], parameters={})
    deadline = time.monotonic() + budget
    # 1 s per attempt: a silent endpoint costs that much, and a loaded machine's answering one gets it too
    return await adapter.send("llama", request, request_id="r", deadline=deadline, attempt_timeout=1.0, **kw)


async def test_a_silent_endpoint_is_left_for_the_next_one_at_once() -> None:
    async with endpoints("llama") as (a, b):
        a.script("llama", Hang(5.0))
        http = HttpClient()
        adapter = VLLMAdapter(ProviderInfo("v", "vllm", f"{a.base_url},{b.base_url}"), http, RetryPolicy(base_delay=60))
        delays: list[float] = []
        result = await _send(adapter, on_retry=lambda k, err, delay: delays.append(delay))
        await http.close()
        assert result.body["model"] == "llama" and delays == [0.0]  # another endpoint: no backoff
        assert (chat_calls(a), chat_calls(b)) == (1, 1)
        assert [e.healthy for e in adapter.endpoints] == [False, True]
        assert adapter.endpoints[0].last_error == "timeout after 1.0s with no answer"


async def test_a_silent_single_endpoint_is_not_called_again() -> None:
    # It accepted the call and said nothing: like any provider, the router fails over rather than wait again.
    async with endpoints("llama", count=1) as (a,):
        a.script("llama", Hang(5.0), Hang(5.0), Hang(5.0))
        http = HttpClient()
        adapter = VLLMAdapter(ProviderInfo("v", "vllm", a.base_url), http, RetryPolicy(base_delay=0.001))
        with pytest.raises(ProviderError) as caught:
            await _send(adapter)
        await http.close()
        assert caught.value.error_class is ErrorClass.TRANSIENT and not caught.value.retryable
        assert chat_calls(a) == 1


async def test_an_expired_deadline_marks_no_endpoint_down() -> None:
    async with endpoints("llama") as (a, b):
        adapter = VLLMAdapter(ProviderInfo("v", "vllm", f"{a.base_url},{b.base_url}"), HttpClient(), RetryPolicy())
        with pytest.raises(ProviderError, match="deadline exceeded before the upstream call"):
            await _send(adapter, budget=-1.0)
        assert all(e.healthy for e in adapter.endpoints) and chat_calls(a) + chat_calls(b) == 0


# --- adapter units ---------------------------------------------------------------------------------------


def _adapter(base_url: str = "http://a:8000/v1, http://b:8000/,http://a:8000", key: str = "k") -> VLLMAdapter:
    provider = ProviderInfo("v", "vllm", base_url, True, key)
    adapter = build_provider(provider, HttpClient(), RetryPolicy())
    assert isinstance(adapter, VLLMAdapter)
    return adapter


def test_endpoints_are_parsed_normalized_and_deduplicated() -> None:
    adapter = _adapter()
    assert [e.base_url for e in adapter.endpoints] == ["http://a:8000", "http://b:8000"]
    assert adapter.provider.base_url.startswith("http://a:8000/v1,")  # the record as configured
    with pytest.raises(ValueError):
        parse_endpoints(" , ")


def test_round_robin_skips_endpoints_marked_down() -> None:
    pool = _adapter("http://a,http://b,http://c").pool
    assert [pool.pick().base_url for _ in range(3)] == ["http://a", "http://b", "http://c"]
    pool.mark_down(pool.endpoints[1], "boom")
    picks = [pool.pick().base_url for _ in range(4)]
    assert "http://b" not in picks and picks.count("http://a") == picks.count("http://c") == 2
    for endpoint in pool.endpoints:
        pool.mark_down(endpoint, "boom")
    assert {pool.pick().base_url for _ in range(3)} == {"http://a", "http://b", "http://c"}


@pytest.mark.parametrize(
    "body",
    [
        "This model's maximum context length is 4096 tokens",
        '{"error": "context_length_exceeded"}',
        "Prompt is too long for this model",
        "INPUT IS TOO LONG",
        "exceeds the maximum context window",
        "request exceeds token limit",
        "Too many tokens in the request",
        "max_tokens is too large: 9000",
    ],
)
def test_context_overflow_phrases(body: str) -> None:
    assert _adapter().classify(400, body, {}).error_class is ErrorClass.CONTEXT_OVERFLOW


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (429, "slow down", ErrorClass.RATE_LIMITED),
        (500, "context length", ErrorClass.TRANSIENT),  # a status class wins over the body
        (503, "", ErrorClass.TRANSIENT),
        (400, "bad request", ErrorClass.FATAL),
        (401, "invalid key k", ErrorClass.FATAL),
        (404, "model not found", ErrorClass.FATAL),
    ],
)
def test_classification_by_status(status: int, body: str, expected: ErrorClass) -> None:
    error = _adapter(key="sk-secret-123").classify(status, body + " sk-secret-123", {"Retry-After": "2"})
    assert error.error_class is expected and "sk-secret-123" not in error.message
    assert error.message.startswith(f"vllm HTTP {status}")
    if status == 429:
        assert error.retry_after == 2


def test_model_list_parsing_skips_malformed_entries() -> None:
    body = {
        "data": [
            {"id": "a", "max_model_len": 4096},
            {"id": "b", "max_model_len": True},
            {"id": ""},
            {"nope": 1},
            "junk",
            {"id": "a", "max_model_len": 1},
        ]
    }
    assert parse_model_list(body) == (DiscoveredModel("a", 4096), DiscoveredModel("b", 0))
    with pytest.raises(ValueError):
        parse_model_list({"data": None})


async def test_unchanged_discovery_keeps_the_snapshot(make_hub: Any) -> None:
    async with endpoints("llama", count=1) as (a,):
        hub, _key = await start(make_hub, [a.base_url])
        before = hub.services.snapshot
        await hub.services.vllm_prober.run_once()
        assert hub.services.snapshot is before  # nothing changed: no swap
        hub.services.set_discovered_models("no-such-provider", (DiscoveredModel("x"),))
        assert "x" not in hub.services.snapshot.models


async def test_a_flapping_endpoint_follows_its_probes_and_requests_keep_being_served(make_hub: Any) -> None:
    async with endpoints("llama") as (a, b):
        b.health_flap = 1  # its /health flips after every check: up, down, up, ...
        hub, key = await start(make_hub, [a.base_url, b.base_url])
        states = []
        for _ in range(4):
            await hub.services.vllm_prober.run_once()
            states.append(adapter_of(hub).endpoints[1].healthy)
            await served(hub, key)
        assert states in ([True, False, True, False], [False, True, False, True]), states
        assert all(e.healthy for e in adapter_of(hub).endpoints[:1])  # the steady one is never marked down
