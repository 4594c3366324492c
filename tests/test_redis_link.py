"""The Redis link: round trips against the machine's Redis, and a private one killed and restarted."""

from __future__ import annotations

import asyncio

import pytest

from store.redis_link import RedisDown, RedisLink
from tests.support.backing import REDIS_URL, fresh_redis_prefix, private_redis
from tests.support.server import free_port


async def test_round_trips_use_the_prefix_and_report_up() -> None:
    async with fresh_redis_prefix() as prefix:
        states: list[bool] = []
        link = RedisLink(REDIS_URL, prefix, on_state=states.append)
        await link.start()
        try:
            assert link.up and link.status() == {"backend": "redis", "up": True}
            await link.run(lambda: link.client.set(link.key("a", "b"), "1"))
            assert await link.run(lambda: link.client.get(f"{prefix}:a:b")) == b"1"
            assert states == [True]
        finally:
            await link.stop()


async def test_nothing_listening_is_down_and_fails_fast() -> None:
    link = RedisLink(f"redis://127.0.0.1:{free_port()}/0", "t", timeout_secs=0.2)
    await link.start()  # start-up never fails for Redis
    try:
        assert not link.up
        status = link.status()
        assert status["up"] is False and status["fallback"] == "local" and "redis://" not in str(status)
        with pytest.raises(RedisDown):
            await link.run(lambda: link.client.ping())
    finally:
        await link.stop()


async def test_killed_redis_goes_down_and_comes_back_with_listeners_called() -> None:
    async with private_redis() as server:
        states: list[bool] = []
        resyncs: list[int] = []
        # 1 s: the happy pings must not time out on a loaded machine (a stopped Redis is refused at once)
        link = RedisLink(server.url, "t", timeout_secs=1.0, on_state=states.append)

        async def resync() -> None:
            resyncs.append(1)

        link.on_up(resync)
        await link.start()
        try:
            assert link.up and resyncs == [1]
            server.stop()
            with pytest.raises(RedisDown):
                await link.run(lambda: link.client.ping())
            assert not link.up and states == [True, False]
            await server.start()
            for _ in range(300):  # the watcher pings once a second
                if link.up:
                    break
                await asyncio.sleep(0.05)
            assert link.up and states == [True, False, True] and resyncs == [1, 1]
        finally:
            await link.stop()


def test_a_redis_url_that_is_not_redis_is_refused_without_echoing_it() -> None:
    from pipeline.settings import SettingsError, load_settings

    with pytest.raises(SettingsError) as refused:
        load_settings({"TOKENHUB_REDIS_URL": "http://:hunter2-pw@cache:6379/0"})
    assert "TOKENHUB_REDIS_URL=<hidden>" in str(refused.value) and "hunter2" not in str(refused.value)
    assert load_settings({"TOKENHUB_REDIS_URL": "rediss://:pw@h:6380/1"}).redis_url == "rediss://:pw@h:6380/1"
