"""Finished requests leave no reference cycles: what they held is freed when they end, not by the collector.

The server collects its old generations rarely (pipeline/cli.py raises the thresholds for throughput), so an
object graph that a finished request leaves in a cycle (its context, its decision, a closed connection and its
parser) stays in memory for minutes under load: the soak's RSS grew ~3 MiB a minute from such cycles alone.
Here the collector saves everything it finds unreachable (DEBUG_SAVEALL) while requests succeed, fail over,
stream, break and are abandoned by their clients, on each wire format, as a plan and as embeddings, and while
the admin API reads, changes and refuses, and none of it may be TokenHub's own objects."""

from __future__ import annotations

import asyncio
import collections
import gc
from collections.abc import Iterator

import pytest
from aiohttp import web_app

from tests.conftest import Hub
from tests.fakes.openai_fake import Drop, Fail, Hang, StreamCut
from tests.test_lane import CHAT, _open, _post, _response

_OURS = ("pipeline", "stages", "adapters", "store", "admin_ui")


@pytest.fixture
def saved_garbage() -> Iterator[list[object]]:
    """Every object the collector finds unreachable from here on, kept for inspection."""
    # aiohttp caches each handler's middleware chain (an lru_cache of 1,024 in aiohttp.web_app), which keeps the
    # apps of the suite's earlier tests alive; when this test's handlers push the oldest out, those apps become
    # unreachable here, in the middle of this test. Emptied first, they are collected now instead.
    web_app._cached_build_middleware.cache_clear()
    gc.collect()
    gc.garbage.clear()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


async def _exchange(hub: Hub, key: str, body: dict[str, object], path: str = "/v1/chat/completions") -> int:
    """One request on a connection of its own, closed after the answer (the server's connection object ends)."""
    reader, writer = await _open(hub)
    writer.write(_post(key, body, path=path))
    status, _, _ = await _response(reader)
    writer.close()
    await writer.wait_closed()
    return status


async def test_requests_that_succeed_fail_over_stream_break_or_are_abandoned_leave_no_cycles(
    ready_hub: tuple[Hub, str], saved_garbage: list[object]
) -> None:
    hub, key = ready_hub
    await hub.add_model("gpt-backup", weight=1, input_per_1k=0.001, output_per_1k=0.002)
    fake = hub.fake

    assert await _exchange(hub, key, CHAT) == 200
    assert await _exchange(hub, key, {**CHAT, "stream": True}) == 200
    fake.script("gpt-test", *[Fail(500)] * 3)  # retried, then failed over to gpt-backup
    assert await _exchange(hub, key, CHAT) == 200
    fake.script("gpt-test", *[Drop()] * 3)  # the provider's connection closes without an answer
    assert await _exchange(hub, key, CHAT) == 200
    assert fake.calls("gpt-backup") == 2
    fake.script("gpt-test", StreamCut(after=2))  # broken after its first tokens: an error event in a 200
    assert await _exchange(hub, key, {**CHAT, "stream": True}) == 200

    # the other wire formats, and requests refused before the pipeline runs
    anthropic = {"model": "gpt-test", "max_tokens": 64, "messages": [{"role": "user", "content": "hello"}]}
    assert await _exchange(hub, key, anthropic, "/v1/messages") == 200
    assert await _exchange(hub, key, {**anthropic, "stream": True}, "/v1/messages") == 200
    native = {"request": {"messages": [{"role": "user", "content": "hello"}]}}
    assert await _exchange(hub, key, native, "/v1/chat") == 200
    plan = {"request": {"messages": [{"role": "user", "content": "Build a shed"}]}, "orchestration": {"mode": "vote"}}
    resp = await hub.client.post("/v1/plan", json=plan, headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 200, await resp.text()
    await hub.add_model("emb-test", kind="embedding", input_per_1k=0.00002, max_context_tokens=8191)
    embedder = await hub.new_key(scopes=["embeddings"])
    assert await _exchange(hub, embedder, {"model": "emb-test", "input": "hello"}, "/v1/embeddings") == 200
    assert await _exchange(hub, "th-wrong-key", CHAT) == 401
    assert await _exchange(hub, key, {"model": "auto", "messages": "not a list"}) == 400

    # the admin API: reads of the stores and the log, a change (audited, an event), a refusal
    for path in ("/models", "/providers", "/apikeys", "/logs?limit=5", "/stats", "/audit?limit=5", "/health"):
        await hub.admin("GET", path, expect=200)
    await hub.admin("PATCH", "/models/gpt-backup", {"weight": 2}, expect=200)
    await hub.admin("POST", "/models", {"id": ""}, expect=400)
    await hub.admin("POST", "/analytics/query", {"sql": "SELECT count(*) FROM request_log"}, expect=200)

    fake.script("gpt-test", Hang(5))  # the client leaves while the provider call is under way
    _, writer = await _open(hub)
    writer.write(_post(key, CHAT))
    await fake.wait_until(lambda: fake.in_flight == 1)
    writer.close()
    await fake.wait_until(lambda: fake.cancelled == 1)
    await asyncio.sleep(0.2)  # the cancelled request records, its connection's loss is handled

    gc.collect()
    ours = collections.Counter(type(o).__qualname__ for o in saved_garbage if type(o).__module__.split(".")[0] in _OURS)
    assert not ours, f"reference cycles left by finished requests: {dict(ours)}"
