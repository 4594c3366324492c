"""OpenAI adapter + shared HTTP helper, exercised against a real local fake provider."""

from __future__ import annotations

import asyncio
import json
import random
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable
from email.utils import formatdate
from typing import Any

import aiohttp
import pytest

from adapters.endpoints import normalize_base_url
from adapters.errors import ProviderError, excerpt, scrub
from adapters.http import HttpClient, RetryPolicy, parse_retry_after
from adapters.openai import OpenAIAdapter
from adapters.registry import build_provider
from adapters.usage import parse_usage
from pipeline.types import ChatRequest, ChatResult, ErrorClass, Message, ProviderInfo, Usage
from tests.fakes.openai_fake import ContextOverflow, Drop, Fail, FakeOpenAI, Hang, Malformed, Reply

KEY = "sk-test-0123456789abcdef"
FAST = RetryPolicy(base_delay=0.01)
NO_RETRY = RetryPolicy(max_retries=0)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(models=["preloaded"]) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    client = HttpClient(rng=random.Random(7))
    yield client
    await client.close()


def make_adapter(
    base_url: str, http: HttpClient, retry: RetryPolicy = FAST, key: str = KEY, type_: str = "openai"
) -> OpenAIAdapter:
    return OpenAIAdapter(ProviderInfo(id="p1", type=type_, base_url=base_url, api_key=key), http, retry)


def chat(*messages: Message, **parameters: Any) -> ChatRequest:
    return ChatRequest(messages=list(messages) or [Message("user", "hi")], parameters=parameters)


async def send(
    adapter: OpenAIAdapter, model: str = "m", *, timeout: float = 2.0, budget: float = 5.0, **kw: Any
) -> ChatResult:
    return await adapter.send(
        model,
        chat(),
        request_id=kw.pop("request_id", "req-1"),
        deadline=time.monotonic() + budget,
        attempt_timeout=timeout,
        **kw,
    )


async def expect_error(coro: Awaitable[Any]) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await coro
    return info.value


# ---- success path -------------------------------------------------------------------------------------


async def test_success_payload_shape_and_result(fake: FakeOpenAI, http: HttpClient) -> None:
    adapter = make_adapter(fake.base_url, http)
    tool_calls = [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    request = chat(
        Message("system", "be brief"),
        Message("assistant", "", tool_calls=tool_calls),
        Message("tool", "42", tool_call_id="call_1", name="f"),
        Message("user", "hi", tool_call_id="", name=""),
        temperature=0.2,
        max_tokens=7,
        model="evil-override",
        messages=[],
        stream=True,
    )
    result = await adapter.send("gpt-x", request, request_id="r", deadline=time.monotonic() + 5, attempt_timeout=2)

    assert fake.requests[0]["json"] == {
        "model": "gpt-x",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "assistant", "content": "", "tool_calls": tool_calls},
            {"role": "tool", "content": "42", "tool_call_id": "call_1", "name": "f"},
            {"role": "user", "content": "hi"},
        ],
        "temperature": 0.2,
        "max_tokens": 7,
    }
    assert result.body["choices"][0]["message"]["content"] == "reply from gpt-x"
    assert result.usage == Usage(input_tokens=10, output_tokens=5)
    assert result.latency_ms > 0


async def test_headers_auth_and_request_id(fake: FakeOpenAI, http: HttpClient) -> None:
    await send(make_adapter(fake.base_url, http), request_id="req-42")
    headers = fake.requests[0]["headers"]
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert headers["X-Request-ID"] == "req-42"
    assert headers["Content-Type"] == "application/json"


async def test_no_auth_header_without_key_and_no_request_id_when_empty(fake: FakeOpenAI, http: HttpClient) -> None:
    await send(make_adapter(fake.base_url, http, key=""), request_id="")
    headers = fake.requests[0]["headers"]
    assert "Authorization" not in headers
    assert "X-Request-ID" not in headers


async def test_usage_alternate_shape_and_missing(fake: FakeOpenAI, http: HttpClient) -> None:
    fake.script("m", Reply(usage={"input_tokens": 7, "output_tokens": 3}), Reply(usage=None))
    adapter = make_adapter(fake.base_url, http)
    assert (await send(adapter)).usage == Usage(7, 3)
    assert (await send(adapter)).usage is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"usage": {"prompt_tokens": 3, "completion_tokens": 0}}, Usage(3, 0)),
        (
            {"usage": {"prompt_tokens": 0, "completion_tokens": 0, "input_tokens": 4, "output_tokens": 2}},
            Usage(4, 2),
        ),
        ({"usage": {"prompt_tokens": "12", "completion_tokens": None}}, None),
        ({"usage": {"prompt_tokens": True, "completion_tokens": -4}}, None),
        ({"usage": {"prompt_tokens": 2.0, "completion_tokens": float("inf")}}, Usage(2, 0)),
        ({"usage": "lots"}, None),
        ({"usage": None}, None),
        ({}, None),
    ],
)
def test_parse_usage_shapes_and_garbage(body: dict[str, Any], expected: Usage | None) -> None:
    assert parse_usage(body) == expected


# ---- error classification and retries -----------------------------------------------------------------


async def test_429_is_rate_limited_with_retry_after_and_not_retried(fake: FakeOpenAI, http: HttpClient) -> None:
    fake.script("m", Fail(429, headers={"Retry-After": "1"}))
    err = await expect_error(send(make_adapter(fake.base_url, http)))
    assert err.error_class is ErrorClass.RATE_LIMITED
    assert err.status == 429
    assert err.retry_after == 1.0
    assert str(err).startswith("openai HTTP 429: ")
    assert fake.calls("m") == 1


async def test_500_then_success_is_retried(fake: FakeOpenAI, http: HttpClient) -> None:
    fake.script("m", Fail(500))
    retries: list[tuple[int, ErrorClass, float]] = []
    result = await send(
        make_adapter(fake.base_url, http), on_retry=lambda k, e, d: retries.append((k, e.error_class, d))
    )
    assert result.body["model"] == "m"
    assert fake.calls("m") == 2
    assert [(k, cls) for k, cls, _ in retries] == [(0, ErrorClass.TRANSIENT)]


async def test_500_three_times_raises_transient_after_three_calls(fake: FakeOpenAI, http: HttpClient) -> None:
    fake.script("m", Fail(500), Fail(502), Fail(500), Reply())
    err = await expect_error(send(make_adapter(fake.base_url, http)))
    assert err.error_class is ErrorClass.TRANSIENT
    assert err.status == 500
    assert fake.calls("m") == 3


async def test_503_retry_after_is_honoured(fake: FakeOpenAI, http: HttpClient) -> None:
    fake.script("m", Fail(503, headers={"Retry-After": "0.3"}))
    retries: list[tuple[int, float]] = []
    result = await send(make_adapter(fake.base_url, http), on_retry=lambda k, e, delay: retries.append((k, delay)))
    assert result.body["model"] == "m" and fake.calls("m") == 2
    assert len(retries) == 1 and retries[0][1] >= 0.3  # the wait before the retry is at least Retry-After


async def test_retry_after_above_cap_is_not_retried(fake: FakeOpenAI, http: HttpClient) -> None:
    fake.script("m", Fail(503, headers={"Retry-After": "60"}))
    retries: list[float] = []
    adapter = make_adapter(fake.base_url, http, RetryPolicy(max_retry_after=10))
    err = await expect_error(send(adapter, on_retry=lambda k, e, delay: retries.append(delay)))
    assert err.error_class is ErrorClass.TRANSIENT
    assert (err.status, err.retry_after) == (503, 60.0)
    assert fake.calls("m") == 1 and retries == []  # raised at once: no wait was scheduled


async def test_no_retry_sleep_past_the_deadline(fake: FakeOpenAI, http: HttpClient) -> None:
    # A 2 s budget leaves a loaded machine room for the calls, and is short of both waits.
    fake.script("m", Fail(500), Fail(503, headers={"Retry-After": "5"}))
    retries: list[float] = []
    slow = make_adapter(fake.base_url, http, RetryPolicy(base_delay=5.0))  # backoff at least 2.5 s
    first = await expect_error(send(slow, budget=2, on_retry=lambda k, e, delay: retries.append(delay)))
    # Retry-After 5 s (under the 10 s cap) > the 2 s budget
    fast = make_adapter(fake.base_url, http)
    second = await expect_error(send(fast, budget=2, on_retry=lambda k, e, delay: retries.append(delay)))
    assert (first.status, second.status, second.retry_after) == (500, 503, 5.0)
    assert fake.calls("m") == 2 and retries == []  # neither waited: a wait past the deadline is not begun


async def test_expired_deadline_fails_without_calling(fake: FakeOpenAI, http: HttpClient) -> None:
    err = await expect_error(send(make_adapter(fake.base_url, http), budget=-1))
    assert err.error_class is ErrorClass.TRANSIENT
    assert fake.calls("m") == 0


async def test_attempt_timeout_is_transient(fake: FakeOpenAI, http: HttpClient) -> None:
    fake.script("m", Hang(2.0))  # would answer after 2 s: the error below comes from the 0.2 s timeout
    err = await expect_error(send(make_adapter(fake.base_url, http, NO_RETRY), timeout=0.2))
    assert err.error_class is ErrorClass.TRANSIENT
    assert err.status is None
    assert err.message == "timeout after 0.2s with no answer" and not err.retryable


async def test_a_silent_provider_is_not_retried(fake: FakeOpenAI, http: HttpClient) -> None:
    # It accepted the call and said nothing: the router fails over at once rather than retry that route.
    fake.script("m", Hang(2.0), Hang(2.0), Hang(2.0))
    retries: list[float] = []
    adapter = make_adapter(fake.base_url, http)
    err = await expect_error(send(adapter, timeout=0.2, on_retry=lambda k, e, delay: retries.append(delay)))
    assert err.error_class is ErrorClass.TRANSIENT and not err.retryable
    # No retry was begun; the fake's count alone would depend on the call reaching it within the 0.2 s.
    assert retries == [] and fake.calls("m") <= 1


async def test_deadline_caps_the_attempt_timeout(fake: FakeOpenAI, http: HttpClient) -> None:
    fake.script("m", Hang(2.0))
    err = await expect_error(send(make_adapter(fake.base_url, http), timeout=5.0, budget=0.3))
    waited = float(re.fullmatch(r"timeout after ([\d.]+)s with no answer", err.message).group(1))  # type: ignore[union-attr]
    assert 0 < waited <= 0.3  # the attempt got what was left of the deadline, not its own 5 s


async def test_connection_refused_is_transient(http: HttpClient) -> None:
    with socket.socket() as sock:  # reserve then release a port so nothing listens on it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    adapter = make_adapter(f"http://127.0.0.1:{port}/v1", http, NO_RETRY)
    err = await expect_error(send(adapter))
    assert err.error_class is ErrorClass.TRANSIENT
    assert err.status is None
    assert err.message.startswith("connection failed: ")


async def test_dropped_connection_is_transient(fake: FakeOpenAI, http: HttpClient) -> None:
    fake.script("m", Drop(), Drop(), Drop())
    err = await expect_error(send(make_adapter(fake.base_url, http)))
    assert err.error_class is ErrorClass.TRANSIENT
    assert err.status is None
    assert fake.calls("m") == 3


async def test_malformed_body_is_transient(fake: FakeOpenAI, http: HttpClient) -> None:
    fake.script("m", Malformed(), Malformed(text="[1, 2]", content_type="application/json"))
    adapter = make_adapter(fake.base_url, http, NO_RETRY)
    for _ in range(2):
        err = await expect_error(send(adapter))
        assert err.error_class is ErrorClass.TRANSIENT
        assert err.status == 200
        assert "malformed" in err.message


async def test_context_overflow(fake: FakeOpenAI, http: HttpClient) -> None:
    fake.script("m", ContextOverflow())
    err = await expect_error(send(make_adapter(fake.base_url, http)))
    assert err.error_class is ErrorClass.CONTEXT_OVERFLOW
    assert err.status == 400
    assert fake.calls("m") == 1


async def test_401_is_fatal_and_not_retried(fake: FakeOpenAI, http: HttpClient) -> None:
    fake.script("m", Fail(401))
    err = await expect_error(send(make_adapter(fake.base_url, http)))
    assert err.error_class is ErrorClass.FATAL
    assert err.status == 401
    assert fake.calls("m") == 1


async def test_api_key_never_in_error_message(fake: FakeOpenAI, http: HttpClient) -> None:
    echo = {"error": {"message": f"Incorrect API key provided: {KEY}", "type": "invalid_request_error"}}
    fake.script("m", Fail(401, body=echo), Fail(500, body="x" * 280 + KEY), Malformed(text=f"<p>{KEY}</p>"))
    adapter = make_adapter(fake.base_url, http, NO_RETRY)
    for _ in range(3):
        err = await expect_error(send(adapter))
        for text in (str(err), err.message, repr(err), *map(str, err.args)):
            assert KEY not in text
            assert KEY[:12] not in text  # truncation must not leave a partial key either
        assert "[redacted]" in err.message


async def test_long_upstream_body_is_truncated(fake: FakeOpenAI, http: HttpClient) -> None:
    fake.script("m", Fail(400, body="y" * 5000))
    err = await expect_error(send(make_adapter(fake.base_url, http)))
    assert err.error_class is ErrorClass.FATAL
    assert len(err.message) < 400


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (429, "", ErrorClass.RATE_LIMITED),
        (500, "context length", ErrorClass.TRANSIENT),
        (529, "", ErrorClass.TRANSIENT),
        (400, '{"error":{"code":"context_length_exceeded"}}', ErrorClass.CONTEXT_OVERFLOW),
        (413, "maximum Context Length is 8k", ErrorClass.CONTEXT_OVERFLOW),
        (400, "max_tokens is too large: 9999", ErrorClass.CONTEXT_OVERFLOW),
        (422, "max_tokens is too large", ErrorClass.FATAL),
        (400, "budget_exceeded", ErrorClass.BUDGET_EXCEEDED),  # the account's money: the model is disabled
        (429, '{"error":{"code":"insufficient_quota"}}', ErrorClass.BUDGET_EXCEEDED),  # waiting will not help
        (402, "payment required", ErrorClass.BUDGET_EXCEEDED),
        (500, "budget_exceeded", ErrorClass.TRANSIENT),
        (403, "forbidden", ErrorClass.FATAL),
        (404, "no such model", ErrorClass.FATAL),
    ],
)
def test_classify_table(status: int, body: str, expected: ErrorClass) -> None:
    adapter = make_adapter("http://x", HttpClient())
    assert adapter.classify(status, body, {}).error_class is expected


def test_classify_retry_after_only_for_retryable_statuses() -> None:
    adapter = make_adapter("http://x", HttpClient())
    assert adapter.classify(502, "", {"Retry-After": "3"}).retry_after == 3.0
    assert adapter.classify(500, "", {}).retry_after is None
    assert adapter.classify(400, "", {"Retry-After": "3"}).retry_after is None


# ---- cancellation -------------------------------------------------------------------------------------


async def test_cancellation_propagates_and_does_not_retry(fake: FakeOpenAI, http: HttpClient) -> None:
    fake.script("m", Hang(5.0))
    task = asyncio.create_task(send(make_adapter(fake.base_url, http), timeout=10.0, budget=10.0))
    await fake.wait_until(lambda: fake.in_flight == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await fake.wait_until(lambda: fake.cancelled == 1)  # the upstream saw its connection go: generation stops
    assert fake.calls("m") == 1 and fake.cancelled == 1  # the task is over: no retry can follow


# ---- pure helpers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://api.openai.com", "https://api.openai.com"),
        ("https://api.openai.com/", "https://api.openai.com"),
        ("https://api.openai.com/v1", "https://api.openai.com"),
        ("https://api.openai.com/v1/", "https://api.openai.com"),
        ("https://host/v2//", "https://host"),
        ("https://host/openai/v1", "https://host/openai"),
        ("https://host/v1/v1", "https://host/v1"),
        ("https://host/v10", "https://host/v10"),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000"),
    ],
)
def test_normalize_base_url(url: str, expected: str) -> None:
    assert normalize_base_url(url) == expected


def test_urls_and_health_endpoint() -> None:
    adapter = make_adapter("https://host/v1/", HttpClient())
    assert adapter.url == "https://host/v1/chat/completions"
    assert adapter.health_endpoint() == "https://host/v1/models"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", 1.0),
        ("0", 0.0),
        (" 120 ", 120.0),
        ("0.3", 0.3),
        ("-1", None),
        ("nan", None),
        ("inf", None),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after_numbers_and_garbage(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30.0)
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:50 -0000", now=now) == pytest.approx(30.0)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) is None
    assert parse_retry_after("Tue, 99 Foo 2023 25:61:00 GMT", now=now) is None


def test_retry_policy_delay() -> None:
    policy = RetryPolicy(base_delay=0.1, multiplier=2.0, jitter=(1.0, 1.0))
    rng = random.Random(0)
    assert policy.delay(0, None, rng) == pytest.approx(0.1)
    assert policy.delay(2, None, rng) == pytest.approx(0.4)
    assert policy.delay(0, 2.5, rng) == 2.5
    jittered = RetryPolicy()
    assert all(0.05 <= jittered.delay(0, None, rng) <= 0.15 for _ in range(100))


def test_provider_error_scrubs_and_truncates() -> None:
    err = ProviderError(ErrorClass.FATAL, f"bad key {KEY}", status=401, secret=KEY)
    assert str(err) == "bad key [redacted]"
    assert scrub("nothing here", "") == "nothing here"
    assert excerpt("a  b\n c") == "a b c"
    assert len(excerpt("z" * 1000)) == 303


def test_build_adapter_types() -> None:
    http = HttpClient()
    for type_ in ("openai", ""):
        provider = ProviderInfo(id="p", type=type_, base_url="http://h/v1")
        assert isinstance(build_provider(provider, http, FAST), OpenAIAdapter)
    with pytest.raises(ValueError, match="unsupported provider type 'mystery'"):
        build_provider(ProviderInfo(id="p", type="mystery", base_url="http://h"), http, FAST)


# ---- the fake itself ----------------------------------------------------------------------------------


async def test_fake_lists_models_and_resets(fake: FakeOpenAI, http: HttpClient) -> None:
    fake.script("scripted", Reply())
    await http.start()
    async with http.session.get(fake.base_url + "/models") as resp:
        listed = [m["id"] for m in (await resp.json())["data"]]
    assert listed == ["preloaded", "scripted"]
    await send(make_adapter(fake.base_url, http))
    fake.reset()
    assert fake.requests == []
    assert fake.calls("m") == 0


async def test_http_client_restarts_after_close(fake: FakeOpenAI) -> None:
    client = HttpClient()
    adapter = make_adapter(fake.base_url, client)
    await send(adapter)
    await client.close()
    await client.close()  # idempotent
    await send(adapter)  # lazily reopens
    await client.close()
    assert fake.calls("m") == 2


async def test_http_client_can_post_without_adapter(fake: FakeOpenAI, http: HttpClient) -> None:
    def classify(status: int, body: str, headers: Any) -> ProviderError:
        return ProviderError(ErrorClass.FATAL, f"HTTP {status}", status=status)

    body, raw, latency = await http.post_json(
        fake.base_url + "/chat/completions",
        {"model": "raw", "messages": []},
        headers={"Content-Type": "application/json"},
        deadline=time.monotonic() + 2,
        attempt_timeout=1,
        classify=classify,
        retry=NO_RETRY,
    )
    assert body["model"] == "raw"
    assert json.loads(raw) == body  # the exact bytes, for pass-through without re-encoding
    assert latency > 0
    assert isinstance(http.session, aiohttp.ClientSession)


async def test_payload_drops_what_openai_rejects(http: HttpClient) -> None:
    adapter = make_adapter("http://127.0.0.1:1/v1", http)
    request = chat(stop=["a", "b", "c", "d", "e"], top_k=5, metadata={"user_id": "u"}, temperature=0.1, seed=3)
    payload = adapter.build_payload("m", request)
    assert payload["stop"] == ["a", "b", "c", "d"]  # OpenAI allows at most four
    assert "top_k" not in payload and "metadata" not in payload
    assert payload["temperature"] == 0.1 and payload["seed"] == 3
    stream = adapter.build_stream_payload("m", request)
    assert stream["stream"] is True and stream["stream_options"] == {"include_usage": True}
