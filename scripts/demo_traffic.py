"""The demo's traffic generator: a bounded stream of chat requests to TokenHub, a mix of routing modes,
wire formats and streams, each answer graded and the grade sent back through POST /v1/feedback (so the
Thompson-sampling bandit learns quality, not only cost and latency).

The questions are the fakes' arithmetic (scripts/demo_fakes.py): an answer is right or wrong, and the grade
says which.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from scripts.demo_fakes import grade, question

__all__ = ["MODES", "Traffic", "TrafficStats"]

# (mode, share): most traffic learns (thompson), the rest shows the scored modes' different choices.
MODES = (("thompson", 0.45), ("normal", 0.25), ("cheap", 0.2), ("high_confidence", 0.1))
MAX_IN_FLIGHT = 32  # a slow TokenHub makes the generator skip sends, never pile up requests


@dataclass
class TrafficStats:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    streams: int = 0
    failovers: int = 0  # served after at least one failed attempt (X-TokenHub-Attempts)
    feedback: int = 0
    skipped: int = 0  # sends skipped because MAX_IN_FLIGHT requests were still open
    by_model: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        models = ", ".join(f"{m} {n}" for m, n in sorted(self.by_model.items()))
        return (
            f"sent {self.sent}, ok {self.ok}, failed {self.failed}, failovers {self.failovers},"
            f" streams {self.streams}, feedback {self.feedback} | {models}"
        )


class Traffic:
    """Sends `rate` requests per second for `duration` seconds (None = until stopped)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        rate: float = 5.0,
        stream_share: float = 0.3,
        seed: int = 0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self.rate = rate
        self.stream_share = stream_share
        self.stats = TrafficStats()
        self._rng = random.Random(seed)

    async def run(self, duration: float | None, stop: asyncio.Event, report_every: float = 5.0) -> TrafficStats:
        started = time.monotonic()
        last_report = started
        in_flight: set[asyncio.Task[None]] = set()
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout, headers=self._headers) as session:
            try:
                while not stop.is_set() and (duration is None or time.monotonic() - started < duration):
                    if len(in_flight) < MAX_IN_FLIGHT:
                        task = asyncio.create_task(self._one(session))
                        in_flight.add(task)
                        task.add_done_callback(in_flight.discard)
                    else:
                        self.stats.skipped += 1
                    now = time.monotonic()
                    if report_every and now - last_report >= report_every:
                        last_report = now
                        print(f"traffic t={now - started:.0f}s: {self.stats.line()}", flush=True)
                    # Exponential gaps: a Poisson arrival process, like independent clients.
                    with contextlib.suppress(TimeoutError):  # the gap passed: send the next one
                        await asyncio.wait_for(stop.wait(), self._rng.expovariate(self.rate))
                if in_flight:  # let open requests finish (bounded by the client timeout)
                    await asyncio.wait(in_flight, timeout=10)
            finally:
                for task in in_flight:
                    task.cancel()
        return self.stats

    async def _one(self, session: aiohttp.ClientSession) -> None:
        mode = self._rng.choices([m for m, _ in MODES], [w for _, w in MODES])[0]
        prompt, expected = question(self._rng)
        streaming = self._rng.random() < self.stream_share
        self.stats.sent += 1
        try:
            if streaming:
                self.stats.streams += 1
                served = await self._openai_stream(session, mode, prompt)
            else:
                served = await self._native(session, mode, prompt)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.stats.failed += 1
            self.stats.errors[type(exc).__name__] += 1
            return
        if served is None:
            self.stats.failed += 1
            return
        request_id, model, attempts, answer = served
        self.stats.ok += 1
        self.stats.by_model[model] += 1
        if "=" in attempts and any(not part.endswith("=ok") for part in attempts.split(", ")):
            self.stats.failovers += 1
        await self._feedback(session, request_id, grade(answer, expected))

    async def _native(self, session: aiohttp.ClientSession, mode: str, prompt: str) -> tuple[str, str, str, str] | None:
        """POST /v1/chat with a policy mode; returns (request id, model, attempts, answer) or None."""
        body = {"request": {"messages": [{"role": "user", "content": prompt}]}, "policy": {"mode": mode}}
        async with session.post(self.base_url + "/v1/chat", json=body) as resp:
            data = await resp.json()
            if resp.status != 200:
                self.stats.errors[f"{resp.status} {data.get('error', {}).get('type', '?')}"] += 1
                return None
            answer = data["response"]["choices"][0]["message"]["content"] or ""
            return resp.headers["X-Request-Id"], data["negotiated_model"], _attempts(resp), answer

    async def _openai_stream(
        self, session: aiohttp.ClientSession, mode: str, prompt: str
    ) -> tuple[str, str, str, str] | None:
        """A streamed /v1/chat/completions: the mode travels as an in-band directive; a third of the streams
        ask for the `demo` alias (a blind A/B test between two models) instead of letting TokenHub choose."""
        model = "demo" if self._rng.random() < 1 / 3 else "auto"
        content = prompt if model == "demo" else f"@@tokenhub mode={mode}\n{prompt}"
        body = {"model": model, "stream": True, "messages": [{"role": "user", "content": content}]}
        async with session.post(self.base_url + "/v1/chat/completions", json=body) as resp:
            if resp.status != 200:
                data = await resp.json()
                self.stats.errors[f"{resp.status} {data.get('error', {}).get('type', '?')}"] += 1
                return None
            pieces: list[str] = []
            async for raw in resp.content:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk: dict[str, Any] = json.loads(line[6:])
                if "error" in chunk:
                    self.stats.errors["stream error"] += 1
                    return None
                for choice in chunk.get("choices", []):
                    pieces.append(choice.get("delta", {}).get("content") or "")
            return resp.headers["X-Request-Id"], resp.headers["X-Negotiated-Model"], _attempts(resp), "".join(pieces)

    async def _feedback(self, session: aiohttp.ClientSession, request_id: str, score: float) -> None:
        body = {"request_id": request_id, "score": score}
        async with session.post(self.base_url + "/v1/feedback", json=body) as resp:
            await resp.read()
            if resp.status == 200:
                self.stats.feedback += 1
            else:
                self.stats.errors[f"feedback {resp.status}"] += 1


def _attempts(resp: aiohttp.ClientResponse) -> str:
    return resp.headers.get("X-TokenHub-Attempts", "")
