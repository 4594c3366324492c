"""Fake OpenAI-compatible providers that behave like a small market: each model has a latency, a failure
rate and an answer quality, and one of them can degrade after a while.

Used by `make demo` (scripts/demo.py) and the routing evaluation (scripts/bench_routing.py). The test
suite's scriptable fake (tests/fakes/openai_fake.py) plays one exact call at a time; these play a
statistical world, so TokenHub's routing, failover, circuit breaker and bandit have something to learn.

Quality is carried by the answer: a request asking "What is A + B?" is answered correctly with the model's
`quality` as probability, and wrongly otherwise, so a client can grade answers (`grade`) and report the
grade through POST /v1/feedback.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = [
    "DEFAULT_PORT_BASE",
    "DemoProvider",
    "FakeModel",
    "FakeProvider",
    "demo_lineup",
    "grade",
    "question",
]

DEFAULT_PORT_BASE = 9101  # the demo's fakes listen on 9101-9105 (deploy/demo/tokenhub.yaml names them)
_QUESTION = re.compile(r"What is (\d+) \+ (\d+)\?")
_ANSWER = re.compile(r"= (-?\d+)\.")
STREAM_PIECE_CHARS = 6


def question(rng: random.Random) -> tuple[str, int]:
    """A question the fakes understand and its right answer."""
    a, b = rng.randint(10, 999), rng.randint(10, 999)
    return f"What is {a} + {b}? Answer in one sentence.", a + b


def grade(answer: str, expected: int) -> float:
    """1.0 for the right sum, 0.0 for a wrong or missing one."""
    found = _ANSWER.search(answer)
    return 1.0 if found is not None and int(found.group(1)) == expected else 0.0


@dataclass
class FakeModel:
    """One model's behaviour; mutable, so a harness can change it while the server runs."""

    name: str
    latency_ms: float
    failure_rate: float
    quality: float  # probability that an answer is right
    input_tokens: int = 20
    output_tokens: int = 60
    # After this many seconds from the model's first call it degrades (None = never).
    degrade_after_secs: float | None = None
    degraded_failure_rate: float = 0.9
    degraded_latency_factor: float = 3.0
    degraded_quality: float = 0.3
    stream_cut_rate: float = 0.0  # share of streams whose connection is closed half-way (after the first token)
    first_call: float | None = field(default=None, repr=False)
    degraded: bool = field(default=False, repr=False)

    def tick(self, now: float) -> bool:
        """Apply the degradation when its time has come; True on the call that degrades it."""
        if self.first_call is None:
            self.first_call = now
        if self.degraded or self.degrade_after_secs is None or now - self.first_call < self.degrade_after_secs:
            return False
        self.degraded = True
        self.failure_rate = self.degraded_failure_rate
        self.latency_ms *= self.degraded_latency_factor
        self.quality = self.degraded_quality
        return True


class FakeProvider:
    """A real aiohttp server speaking OpenAI's chat API for its models (streaming included).

    A failure is a 503 before any byte of the answer, so TokenHub can fail over (also for a stream).
    GET /v1/models answers 503 while a model is degraded, so TokenHub's health prober sees it too.
    A stream can also die half-way (`stream_cut_rate`): the connection closes after the first tokens.
    """

    def __init__(self, models: list[FakeModel], *, host: str = "127.0.0.1", port: int = 0, seed: int = 0) -> None:
        self.models = {m.name: m for m in models}
        self.host = host
        self.port = port
        self.calls = 0
        self.failures = 0
        self._rng = random.Random(seed)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._list_models)
        # handler_cancellation: a call TokenHub gave up on stops sleeping; shutdown does not wait for it.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def _list_models(self, request: web.Request) -> web.Response:
        if any(m.degraded for m in self.models.values()):
            return _error(503, "degraded")
        return web.json_response({"object": "list", "data": [{"id": name, "object": "model"} for name in self.models]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "body is not JSON")
        model = self.models.get(body.get("model", "")) if isinstance(body, dict) else None
        if model is None:
            return _error(404, "unknown model")
        self.calls += 1
        if model.tick(time.monotonic()):
            print(f"fake provider: {model.name} degraded: {model.failure_rate:.0%} errors from now on", flush=True)
        await asyncio.sleep(model.latency_ms / 1000 * self._rng.uniform(0.8, 1.2))
        if self._rng.random() < model.failure_rate:
            self.failures += 1
            return _error(503, f"{model.name} is overloaded")
        content = self._answer(model, body.get("messages"))
        usage = {
            "prompt_tokens": model.input_tokens,
            "completion_tokens": model.output_tokens,
            "total_tokens": model.input_tokens + model.output_tokens,
        }
        if body.get("stream"):
            with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            cut = model.stream_cut_rate > 0 and self._rng.random() < model.stream_cut_rate
            return await self._stream(request, model.name, content, usage, with_usage, cut=cut)
        message = {"role": "assistant", "content": content}
        return web.json_response(
            {
                "id": f"chatcmpl-demo-{self.calls}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model.name,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": usage,
            }
        )

    def _answer(self, model: FakeModel, messages: Any) -> str:
        text = ""
        if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
            text = str(messages[-1].get("content", ""))
        asked = _QUESTION.search(text)
        if asked is None:
            return f"{model.name} here: that is a fine question."
        a, b = int(asked.group(1)), int(asked.group(2))
        right = self._rng.random() < model.quality
        total = a + b if right else a + b + self._rng.choice((-10, -1, 1, 10))
        return f"{model.name} says {a} + {b} = {total}."

    async def _stream(
        self,
        request: web.Request,
        model: str,
        content: str,
        usage: dict[str, int],
        with_usage: bool,
        *,
        cut: bool = False,
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        head = {"id": f"chatcmpl-demo-{self.calls}", "object": "chat.completion.chunk", "created": 0, "model": model}

        async def send(delta: dict[str, Any], finish: str | None = None) -> None:
            chunk = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        try:
            await send({"role": "assistant", "content": ""})
            for start in range(0, len(content), STREAM_PIECE_CHARS):
                if cut and start >= len(content) // 2 > 0:
                    if request.transport is not None:
                        request.transport.close()  # the upstream dies mid-answer
                    return response
                await send({"content": content[start : start + STREAM_PIECE_CHARS]})
                await asyncio.sleep(0.005)
            await send({}, "stop")
            if with_usage:
                await response.write(f"data: {json.dumps({**head, 'choices': [], 'usage': usage})}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionError:
            pass  # TokenHub hung up (its client went away): nobody is left to write to
        return response


def _error(status: int, message: str) -> web.Response:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return web.json_response({"error": {"message": message, "type": kind, "param": None, "code": None}}, status=status)


@dataclass(frozen=True)
class DemoProvider:
    """One provider of the demo: its id in deploy/demo/tokenhub.yaml, its port offset and its model."""

    provider_id: str
    offset: int  # port = port base + offset
    model: FakeModel
    summary: str


def demo_lineup(degrade_after_secs: float) -> list[DemoProvider]:
    """The demo's five providers; prices are TokenHub's side (deploy/demo/tokenhub.yaml)."""
    return [
        DemoProvider("budget", 0, FakeModel("budget-mini", 120, 0.02, 0.5), "cheapest, fast, often wrong"),
        DemoProvider("steady", 1, FakeModel("steady-pro", 350, 0.01, 0.85), "mid-price, reliable, good"),
        DemoProvider("premium", 2, FakeModel("premium-max", 900, 0.005, 0.97), "expensive, slow, nearly always right"),
        DemoProvider("flaky", 3, FakeModel("flaky-fast", 80, 0.3, 0.75), "cheap and fast, fails 30% of calls"),
        DemoProvider(
            "fader",
            4,
            FakeModel("fader-turbo", 150, 0.01, 0.9, degrade_after_secs=degrade_after_secs),
            f"cheap, fast and good until {degrade_after_secs:.3g} s after its first call, then 90% errors",
        ),
    ]
