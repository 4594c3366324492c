"""The lean script connection (store/redis_pipe.py) against a private redis-server: ordering, a Redis that forgot
its scripts, credentials and database from the URL, a lost connection, a timeout."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from store.redis_pipe import PipeError, RedisPipe, Script
from tests.support.backing import private_redis

ECHO = Script("return ARGV[1]")
SLOW = Script(
    "local t = redis.call('TIME') repeat local n = redis.call('TIME')"
    " until (n[1] - t[1]) * 1000000 + (n[2] - t[2]) > tonumber(ARGV[1]) return 1"
)


async def _stat(url: str, command: str) -> int:
    client = aioredis.Redis.from_url(url)
    try:
        return int((await client.info("commandstats")).get(f"cmdstat_{command}", {}).get("calls", 0))
    finally:
        await client.aclose()


async def test_replies_go_to_their_own_callers_and_a_forgotten_script_is_sent_whole() -> None:
    async with private_redis() as server:
        pipe = RedisPipe(server.url, timeout_secs=2.0)
        try:
            assert await pipe.eval(ECHO, b"first") == b"first"  # not cached yet: sent whole, once
            answers = await asyncio.gather(*(pipe.eval(ECHO, str(i).encode()) for i in range(50)))
            assert answers == [str(i).encode() for i in range(50)]
            assert await _stat(server.url, "eval") == 1
            client = aioredis.Redis.from_url(server.url)
            await client.script_flush()  # what a restarted, empty Redis looks like
            await client.aclose()
            assert await pipe.eval(ECHO, b"again") == b"again"
            assert await pipe.eval(ECHO, b"cached") == b"cached"
            assert await _stat(server.url, "eval") == 2
        finally:
            pipe.close()


async def test_the_url_gives_the_user_password_and_database_and_a_wrong_password_is_not_echoed() -> None:
    async with private_redis() as server:
        admin = aioredis.Redis.from_url(server.url)
        await admin.acl_setuser("app", enabled=True, passwords=["+s3cret-pw"], keys=["*"], commands=["+@all"])
        await admin.config_set("requirepass", "default-pw")
        host = f"127.0.0.1:{server.port}"
        write = Script("redis.call('SET', 'k', ARGV[1]) return 1")
        pipe = RedisPipe(f"redis://app:s3cret-pw@{host}/3", timeout_secs=2.0)
        try:
            assert await pipe.eval(write, b"in db 3") == 1
        finally:
            pipe.close()
        as_app = aioredis.Redis.from_url(f"redis://app:s3cret-pw@{host}/3")
        assert await as_app.get("k") == b"in db 3"
        await as_app.aclose()
        wrong = RedisPipe(f"redis://app:not-the-pw@{host}/0", timeout_secs=2.0)
        with pytest.raises(PipeError) as refused:
            await wrong.eval(ECHO, b"x")
        assert "not-the-pw" not in str(refused.value)
        wrong.close()
        await admin.aclose()


async def test_a_lost_connection_fails_every_waiting_call_and_the_next_call_connects_again() -> None:
    async with private_redis() as server:
        pipe = RedisPipe(server.url, timeout_secs=60.0)
        try:
            assert await pipe.eval(ECHO, b"up") == b"up"
            # 10 s each (the kill ends them at once): still waiting when the server goes, however slow the machine
            waiting = [pipe.eval(SLOW, b"10000000") for _ in range(3)]
            await asyncio.sleep(0.05)  # Redis is likely running the first (not needed: they fail either way)
            server.stop()
            for call in waiting:
                with pytest.raises(PipeError, match="connection lost"):
                    await asyncio.wait_for(call, 10)
            await server.start()
            assert await pipe.eval(ECHO, b"back") == b"back"
        finally:
            pipe.close()


async def test_a_call_past_the_timeout_fails_and_drops_the_connection() -> None:
    async with private_redis() as server:
        pipe = RedisPipe(server.url, timeout_secs=0.5)
        admin = aioredis.Redis.from_url(server.url)
        try:
            with pytest.raises(PipeError, match="timed out"):
                await pipe.eval(SLOW, b"1500000")  # Redis is busy for 1.5 s: a second past the timeout
            await admin.ping()  # answered once the script is done (Redis runs one thing at a time)
            assert await pipe.eval(ECHO, b"after") == b"after"  # a new connection, not the late reply
        finally:
            pipe.close()
            await admin.aclose()
