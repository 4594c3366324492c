"""adapters/dns_cache.py: a provider's host name looked up once per DNS_CACHE_SECS, and the lean client's new
connections through it, against a raw local server reached by the name "localhost"."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from adapters.dns_cache import DNS_CACHE_SECS, DnsCache
from adapters.lean_http import LeanClient
from tests.fakes.clock import FakeClock
from tests.support.server import free_port
from tests.test_lean_http import _ok, raw_server


class Resolver:
    """getaddrinfo's answer for any name: `addresses`, after `release` is set; counts its calls."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = list(addresses)
        self.calls = 0
        self.release = asyncio.Event()
        self.release.set()
        self.error: OSError | None = None

    async def __call__(self, host: str, port: int) -> list[tuple[Any, ...]]:
        self.calls += 1
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in self.addresses]


async def test_a_name_is_looked_up_once_per_ttl_and_overlapping_lookups_share_one() -> None:
    resolver, clock = Resolver("10.0.0.1", "10.0.0.2", "10.0.0.1"), FakeClock(100.0)
    cache = DnsCache(lookup=resolver, clock=clock)
    resolver.release.clear()
    burst = [asyncio.ensure_future(cache.addresses("api.example", 443)) for _ in range(20)]
    await asyncio.sleep(0)
    resolver.release.set()
    assert [await task for task in burst] == [["10.0.0.1", "10.0.0.2"]] * 20  # duplicates dropped, order kept
    assert resolver.calls == 1

    clock.now += DNS_CACHE_SECS - 0.1
    await cache.addresses("api.example", 443)
    assert resolver.calls == 1
    clock.now += 0.2
    await cache.addresses("api.example", 443)
    assert resolver.calls == 2  # expired: looked up again
    await cache.addresses("api.example", 8443)
    assert resolver.calls == 3  # another port is another entry


async def test_a_failed_lookup_is_not_kept_and_a_caller_giving_up_leaves_it_to_the_others() -> None:
    resolver = Resolver("10.0.0.1")
    cache = DnsCache(lookup=resolver)
    resolver.error = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    with pytest.raises(OSError):
        await cache.addresses("typo.example", 443)
    resolver.error = None
    assert await cache.addresses("typo.example", 443) == ["10.0.0.1"]
    assert resolver.calls == 2

    resolver.release.clear()
    impatient = asyncio.ensure_future(cache.addresses("slow.example", 443))
    patient = asyncio.ensure_future(cache.addresses("slow.example", 443))
    await asyncio.sleep(0)
    impatient.cancel()
    resolver.release.set()
    assert await patient == ["10.0.0.1"] and resolver.calls == 3

    resolver.addresses = []
    with pytest.raises(OSError, match="no address"):
        await cache.addresses("empty.example", 443)


async def test_the_lean_client_connects_by_name_through_the_cache() -> None:
    async with raw_server(lambda _: _ok(b"{}")) as server:
        port = int(server.url.split(":")[2].split("/")[0])
        resolver = Resolver("127.0.0.1")
        client = LeanClient(dns=DnsCache(lookup=resolver))
        url = f"http://localhost:{port}/v1/chat/completions"
        # eight calls at once: eight new connections, one lookup
        answers = await asyncio.gather(*(client.post(url, b"{}", {}) for _ in range(8)))
        assert [a.status for a in answers] == [200] * 8
        assert server.connections == 8 and resolver.calls == 1
        client.close()

        # the system's resolver ("localhost" may give ::1 first, where nothing listens: skipped)
        client = LeanClient()
        assert (await client.post(url, b"{}", {})).status == 200
        client.close()


async def test_a_refusing_address_is_skipped_and_a_name_with_none_answering_is_looked_up_again() -> None:
    async with raw_server(lambda _: _ok(b"{}")) as server:
        port = int(server.url.split(":")[2].split("/")[0])
        closed = free_port()
        # the first address refuses (nothing listens on 127.0.0.2 at that port), the second answers
        resolver = Resolver("127.0.0.2", "127.0.0.1")
        client = LeanClient(dns=DnsCache(lookup=resolver))
        assert (await client.post(f"http://localhost:{port}/", b"{}", {})).status == 200
        assert resolver.calls == 1

        with pytest.raises(OSError):  # no address answers on this port: the entry goes
            await client.post(f"http://localhost:{closed}/", b"{}", {})
        with pytest.raises(OSError):
            await client.post(f"http://localhost:{closed}/", b"{}", {})
        assert resolver.calls == 3
        client.close()
