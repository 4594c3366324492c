"""The gate script call is shared by every gate of one event-loop iteration while another is in flight, each still
answered on its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis

from store.redis_limits import BucketTake, OpFlusher, RedisLimits
from store.redis_link import RedisLink
from tests.support.backing import private_redis


async def _evalsha_calls(url: str) -> int:
    client = aioredis.Redis.from_url(url)
    try:
        stats = await client.info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
    finally:
        await client.aclose()


@asynccontextmanager
async def _loaded_gate() -> AsyncIterator[tuple[str, RedisLimits, int]]:
    """A private Redis's URL, limits whose gate script it has loaded, and its EVALSHA count after loading."""
    async with private_redis() as server:
        link = RedisLink(server.url, "t")
        await link.start()
        try:
            limits = RedisLimits(link)
            await limits.gate([(BucketTake("rl:warm", 1.0, 100.0, 1.0, True, ""),)], None)
            yield server.url, limits, await _evalsha_calls(server.url)
        finally:
            await link.stop()


async def test_concurrent_gates_go_in_one_script_call_and_keep_their_own_answers() -> None:
    async with _loaded_gate() as (url, limits, before):
        # 12 requests on a bucket of burst 10: the first 10 pass, the last 2 are refused, in order
        takes = [(BucketTake("rl:ip:x", 0.001, 10.0, 1.0, True, ""),) for _ in range(12)]
        replies = await asyncio.gather(*(limits.gate([take], None) for take in takes))
        # the first goes at once (nothing was in flight to share a call with); the other 11 share one call
        assert await _evalsha_calls(url) - before == 2
        assert [r.limited is None for r in replies] == [True] * 10 + [False] * 2
        assert replies[-1].limited == (0, 0) and replies[-1].wait > 0


async def test_a_gate_call_carries_the_ops_waiting_in_the_flusher() -> None:
    """Steady traffic needs no round trip of its own for settles and spend: the next gate call applies them."""
    async with _loaded_gate() as (url, limits, before):
        replies: list[tuple[list[dict[str, object]], dict[str, object]]] = []
        flusher = OpFlusher(limits, on_reply=lambda ops, reply: replies.append((ops, reply)), on_fallback=print)
        spend = {"o": "spend", "h": "spend:2026-12", "k": "key1", "c": 0.25, "ttl": 60_000}
        flusher.add(spend)  # the flusher is not running: only a gate call can send it
        reply = await limits.gate([(BucketTake("rl:ip:y", 1.0, 10.0, 1.0, True, ""),)], None)
        assert reply.limited is None and await _evalsha_calls(url) - before == 1
        assert replies == [([spend], {"w": [], "s": [["spend:2026-12", "key1", "0.25"]]})]
        await flusher.drained(timeout=0.1)  # nothing left: drained at once
        client = aioredis.Redis.from_url(url)
        assert await client.hget("t:spend:2026-12", "key1") == b"0.25"
        await client.aclose()
