"""The provider contract: the registry keyed by provider type, what every built provider exposes through the
`Provider` protocol, the failure rules `classify` is written from, and the shared retry loop walking a Route."""

from __future__ import annotations

import json
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from adapters.anthropic_stream import AnthropicEventParser
from adapters.errors import ProviderError
from adapters.failures import FailureRules
from adapters.http import HttpClient, RetryPolicy
from adapters.openai import OpenAIAdapter
from adapters.provider import Capabilities, EmbeddingProvider, PooledProvider, Provider
from adapters.registry import PROVIDER_TYPES, build_provider, provider_type, provider_type_names
from adapters.sse import SseEvent
from pipeline.types import ChatRequest, ErrorClass, Message, ProviderInfo
from tests.fakes.openai_fake import Fail, FakeOpenAI

KEY = "sk-contract-0123456789"
BASE = {"openai": "https://api.example/v1/", "anthropic": "https://claude.example/v1", "vllm": "http://a:8000,http://b"}


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    client = HttpClient(rng=random.Random(7))
    yield client
    await client.close()


def record(type_: str, base_url: str = "") -> ProviderInfo:
    return ProviderInfo(id=f"p-{type_ or 'untyped'}", type=type_, base_url=base_url or BASE[type_], api_key=KEY)


def chat() -> ChatRequest:
    return ChatRequest(messages=[Message("user", "hi")], parameters={})


# --- the registry ----------------------------------------------------------------------------------------


def test_the_registry_names_every_type_in_order() -> None:
    assert provider_type_names() == ("openai", "anthropic", "vllm")
    assert tuple(PROVIDER_TYPES) == provider_type_names()
    assert all(PROVIDER_TYPES[name].name == name and PROVIDER_TYPES[name].summary for name in provider_type_names())
    with pytest.raises(TypeError):  # read-only: a type is added by a registry line, not at run time
        PROVIDER_TYPES["gemini"] = PROVIDER_TYPES["openai"]  # type: ignore[index]


def test_an_untyped_record_is_openai_and_an_unknown_type_is_refused(http: HttpClient) -> None:
    assert provider_type("") is PROVIDER_TYPES["openai"]
    assert build_provider(ProviderInfo("old", "", "http://h/v1"), http, RetryPolicy()).type == "openai"
    with pytest.raises(ValueError, match=r"unsupported provider type 'gemini' \(known: openai, anthropic, vllm\)"):
        build_provider(ProviderInfo("x", "gemini", "http://h"), http, RetryPolicy())


@pytest.mark.parametrize("name", ["openai", "anthropic", "vllm"])
def test_every_type_builds_a_provider_that_matches_its_description(name: str, http: HttpClient) -> None:
    described = PROVIDER_TYPES[name]
    provider = build_provider(record(name), http, RetryPolicy())
    assert isinstance(provider, Provider)
    assert (provider.id, provider.type, provider.provider) == (f"p-{name}", name, record(name))
    assert provider.capabilities == described.capabilities
    # the capabilities the admin and the policy read are exactly what the code can call
    assert isinstance(provider, EmbeddingProvider) is described.capabilities.embeddings
    assert isinstance(provider, PooledProvider) is described.capabilities.discovery
    first_base = BASE[name].split(",")[0].rstrip("/").removesuffix("/v1")
    assert provider.health_endpoint() == first_base + described.health_path
    assert KEY not in repr(provider)
    assert provider.headers("req-9")["X-Request-ID"] == "req-9"


def test_what_each_type_can_do() -> None:
    media = frozenset({"vision", "documents", "audio"})
    images_and_pdfs = frozenset({"vision", "documents"})
    assert PROVIDER_TYPES["openai"].capabilities == Capabilities(
        embeddings=True, inputs=media, default_inputs=images_and_pdfs, url_inputs=frozenset({"vision"})
    )
    assert PROVIDER_TYPES["anthropic"].capabilities == Capabilities(
        inputs=images_and_pdfs,
        default_inputs=images_and_pdfs,
        url_inputs=images_and_pdfs,
        media_tokens="anthropic",
        prefill=True,
    )
    assert PROVIDER_TYPES["vllm"].capabilities == Capabilities(
        embeddings=True, discovery=True, prefill=True, inputs=media, url_inputs=frozenset({"vision"})
    )


def test_model_list_urls_and_auth_per_type(http: HttpClient) -> None:
    openai, anthropic, vllm = (build_provider(record(name), http, RetryPolicy()) for name in provider_type_names())
    assert openai.model_list_urls() == ("https://api.example/v1/models",)
    assert openai.headers()["Authorization"] == f"Bearer {KEY}"
    assert anthropic.model_list_urls() == ("https://claude.example/v1/models?limit=1000",)
    assert anthropic.headers()["x-api-key"] == KEY and "Authorization" not in anthropic.headers()
    assert vllm.model_list_urls() == ("http://a:8000/v1/models", "http://b/v1/models")  # every endpoint, in order


def test_a_record_a_type_cannot_serve_is_a_value_error(http: HttpClient) -> None:
    with pytest.raises(ValueError, match="at least one base URL"):
        build_provider(ProviderInfo("v", "vllm", " , "), http, RetryPolicy())


async def test_a_new_type_is_one_class_and_its_description(fake: FakeOpenAI, http: HttpClient) -> None:
    """What adding a type takes besides the registry line: an adapter class; `describe` makes its entry."""

    class Gateway(OpenAIAdapter):
        type = "gateway"
        capabilities = Capabilities()
        health_path = "/healthz"

    described = Gateway.describe("an OpenAI-compatible gateway without embeddings")
    assert (described.name, described.capabilities, described.health_path) == ("gateway", Capabilities(), "/healthz")
    provider = described.factory(ProviderInfo("gw", "gateway", fake.base_url, True, KEY), http, RetryPolicy())
    result = await provider.send("m", chat(), request_id="r", deadline=time.monotonic() + 5, attempt_timeout=2.0)
    assert result.body["choices"][0]["message"]["content"] == "reply from m"
    fake.script("m", Fail(404))
    with pytest.raises(ProviderError) as caught:
        await provider.send("m", chat(), request_id="r", deadline=time.monotonic() + 5, attempt_timeout=2.0)
    assert caught.value.message.startswith("gateway HTTP 404: ")  # classify names the type


# --- classify, written once ------------------------------------------------------------------------------

RULES = FailureRules(
    overflow_phrases=("too long",),
    rate_limited_statuses=frozenset({429, 529}),
    budget_overflow_statuses=frozenset({400}),
)


@pytest.mark.parametrize(
    ("status", "body", "expected", "retry_after"),
    [
        (429, "", ErrorClass.RATE_LIMITED, 4.0),
        (529, "too long", ErrorClass.RATE_LIMITED, 4.0),  # the status decides before the body
        (503, "too long", ErrorClass.TRANSIENT, 4.0),
        (400, "Prompt TOO LONG", ErrorClass.CONTEXT_OVERFLOW, None),
        (413, "too long", ErrorClass.CONTEXT_OVERFLOW, None),
        (400, "max_tokens is too large", ErrorClass.CONTEXT_OVERFLOW, None),
        (422, "max_tokens is too large", ErrorClass.FATAL, None),  # not a budget status for these rules
        (401, "bad key", ErrorClass.FATAL, None),
    ],
)
def test_failure_rules(status: int, body: str, expected: ErrorClass, retry_after: float | None) -> None:
    error = RULES.classify("acme", status, f"{body} {KEY}", {"Retry-After": "4"}, KEY)
    assert (error.error_class, error.status, error.retry_after) == (expected, status, retry_after)
    assert error.message.startswith(f"acme HTTP {status}: ") and KEY not in error.message


def test_an_anthropic_stream_error_uses_the_same_overflow_words_as_its_http_answers() -> None:
    parser = AnthropicEventParser()
    error = {"type": "invalid_request_error", "message": "input would exceed context limit"}
    event = json.dumps({"type": "error", "error": error})
    with pytest.raises(ProviderError) as caught:
        parser.feed(SseEvent("error", event))
    assert caught.value.error_class is ErrorClass.CONTEXT_OVERFLOW


# --- the shared retry loop along a Route --------------------------------------------------------------------


class ListRoute:
    """A Route over fixed URLs in turn, recording what the retry loop tells it."""

    def __init__(self, *urls: str) -> None:
        self.urls = urls
        self.picks = 0
        self.failures: list[tuple[str, int | None]] = []

    def pick(self) -> str:
        url = self.urls[self.picks % len(self.urls)]
        self.picks += 1
        return url

    def failed(self, url: str, error: ProviderError) -> None:
        self.failures.append((url, error.status))


async def post(http: HttpClient, route: ListRoute, retry: RetryPolicy, **kw: Any) -> dict[str, Any]:
    body, _raw, _latency = await http.post_json(
        route,
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Content-Type": "application/json"},
        deadline=time.monotonic() + kw.pop("budget", 5.0),
        attempt_timeout=2.0,
        classify=lambda status, body, headers: FailureRules(("too long",)).classify("t", status, body, headers, ""),
        retry=retry,
        **kw,
    )
    return body


async def test_a_route_retry_goes_to_the_next_url_at_once(http: HttpClient) -> None:
    async with FakeOpenAI() as a, FakeOpenAI() as b:
        a.script("m", Fail(500))
        route = ListRoute(a.base_url + "/chat/completions", b.base_url + "/chat/completions")
        delays: list[float] = []
        slow = RetryPolicy(base_delay=60.0)  # a backoff would sleep a minute: the fresh URL is tried at once
        body = await post(http, route, slow, on_retry=lambda k, err, delay: delays.append(delay))
        assert body["choices"][0]["message"]["content"] == "reply from m"
        assert route.failures == [(a.base_url + "/chat/completions", 500)] and delays == [0.0]
        assert (a.calls("m"), b.calls("m")) == (1, 1)


async def test_a_route_is_not_asked_for_a_url_it_will_not_get(http: HttpClient) -> None:
    async with FakeOpenAI() as a, FakeOpenAI() as b:
        a.script("m", Fail(429))  # rate limited: never retried, so the rotation does not move on
        route = ListRoute(a.base_url + "/chat/completions", b.base_url + "/chat/completions")
        with pytest.raises(ProviderError) as caught:
            await post(http, route, RetryPolicy())
        assert caught.value.error_class is ErrorClass.RATE_LIMITED
        assert route.picks == 1 and route.failures == [(a.base_url + "/chat/completions", 429)]


async def test_an_expired_deadline_is_not_reported_to_the_route(http: HttpClient) -> None:
    async with FakeOpenAI() as a:
        route = ListRoute(a.base_url + "/chat/completions")
        with pytest.raises(ProviderError, match="deadline exceeded before the upstream call"):
            await post(http, route, RetryPolicy(), budget=-1.0)
        assert route.failures == [] and a.calls("m") == 0


async def test_back_on_a_failed_url_the_backoff_applies_and_attempts_stay_bounded(http: HttpClient) -> None:
    async with FakeOpenAI() as a:
        a.script("m", Fail(500), Fail(500), Fail(500))
        route = ListRoute(a.base_url + "/chat/completions")
        delays: list[float] = []
        with pytest.raises(ProviderError):
            await post(http, route, RetryPolicy(base_delay=0.001), on_retry=lambda k, e, d: delays.append(d))
        assert a.calls("m") == 3 and len(route.failures) == 3  # one call and max_retries=2 retries
        assert len(delays) == 2 and all(d > 0 for d in delays)
