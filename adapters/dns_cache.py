"""Provider host names looked up once per DNS_CACHE_SECS for the lean client's new connections (lean_http.py).

aiohttp's connector keeps a lookup for 10 s. The lean client, which took its place on the hot path, looked the
host up again for every new connection: a getaddrinfo call in the thread pool each time, and in a burst of new
connections as many lookups of one name at once (in a container, each lookup can be several queries, one per
search domain). Here a name is looked up once per DNS_CACHE_SECS; lookups of one name that overlap share one
answer; a failed lookup is not kept; and when none of a name's addresses accepts a connection the name is looked
up again for the next one (the provider may have moved).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import Any

__all__ = ["DNS_CACHE_SECS", "DnsCache", "is_ip_address"]

DNS_CACHE_SECS = 10.0  # aiohttp's default (ttl_dns_cache)

Lookup = Callable[[str, int], Awaitable[list[tuple[Any, ...]]]]  # getaddrinfo's answer


async def _getaddrinfo(host: str, port: int) -> list[tuple[Any, ...]]:
    return await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)


@lru_cache(maxsize=256)
def is_ip_address(host: str) -> bool:
    """An IP literal connects as it is: nothing to look up."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class DnsCache:
    def __init__(
        self,
        *,
        ttl_secs: float = DNS_CACHE_SECS,
        lookup: Lookup = _getaddrinfo,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl_secs
        self._lookup = lookup
        self._clock = clock
        self._addresses: dict[tuple[str, int], tuple[float, list[str]]] = {}  # (host, port): (until, addresses)
        self._looking_up: dict[tuple[str, int], asyncio.Task[list[str]]] = {}

    async def addresses(self, host: str, port: int) -> list[str]:
        """The addresses to connect to, in getaddrinfo's order. Raises OSError when the name does not resolve."""
        key = (host, port)
        kept = self._addresses.get(key)
        if kept is not None and kept[0] > self._clock():
            return kept[1]
        task = self._looking_up.get(key)
        if task is None:
            task = self._looking_up[key] = asyncio.ensure_future(self._look_up(key))
            task.add_done_callback(_retrieved)
        # shielded: a caller that times out leaves the lookup to the others (and to the cache)
        return await asyncio.shield(task)

    def forget(self, host: str, port: int) -> None:
        """None of the addresses took a connection: look the name up again next time."""
        self._addresses.pop((host, port), None)

    async def _look_up(self, key: tuple[str, int]) -> list[str]:
        try:
            answer = await self._lookup(*key)
            addresses = list(dict.fromkeys(str(info[4][0]) for info in answer))
            if not addresses:
                raise OSError(f"{key[0]} resolved to no address")
            self._addresses[key] = (self._clock() + self._ttl, addresses)
            return addresses
        finally:
            del self._looking_up[key]


def _retrieved(task: asyncio.Task[list[str]]) -> None:
    """A failed lookup whose callers all gave up is not an unretrieved exception: they saw their own error."""
    if not task.cancelled():
        task.exception()
