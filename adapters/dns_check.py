"""The optional DNS check of a provider's base URL (TOKENHUB_PROVIDER_DNS_CHECK): run by the admin API when a
provider is created or its base URL changed, never on the request path. A typo in a host name is then a 400
at once instead of every request to that provider failing later."""

from __future__ import annotations

import asyncio
import socket
from urllib.parse import urlsplit

from adapters.dns_cache import is_ip_address

__all__ = ["DNS_TIMEOUT_SECS", "unresolvable_hosts"]

DNS_TIMEOUT_SECS = 5.0


async def unresolvable_hosts(base_url: str, *, timeout: float = DNS_TIMEOUT_SECS) -> list[str]:
    """The hosts of `base_url` (one URL or a comma-separated list) that do not resolve within `timeout`
    seconds each; IP literals are not looked up."""
    hosts = dict.fromkeys(urlsplit(part.strip()).hostname or "" for part in base_url.split(",") if part.strip())
    names = [host for host in hosts if host and not is_ip_address(host)]
    results = await asyncio.gather(*(_resolves(host, timeout) for host in names))
    return [host for host, ok in zip(names, results, strict=True) if not ok]


async def _resolves(host: str, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), timeout)
    except (TimeoutError, OSError, UnicodeError):
        return False
    return True
