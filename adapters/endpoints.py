"""Base URLs, and a pool of them for a provider spread over several endpoints (a vLLM deployment).

The pool hands out endpoints round-robin, skipping those marked down; a `PoolRoute` lets the shared retry
loop (adapters/http.py) walk the pool within one call and mark down the endpoints that fail there.
"""

from __future__ import annotations

import dataclasses
import itertools

from adapters.errors import ProviderError
from pipeline.types import ErrorClass

__all__ = ["Endpoint", "EndpointPool", "PoolRoute", "normalize_base_url", "parse_endpoints"]


def normalize_base_url(url: str) -> str:
    """Strip trailing '/', then one trailing '/v1' or '/v2', then trailing '/' (so paths can be appended)."""
    url = url.strip().rstrip("/")
    if url.endswith(("/v1", "/v2")):
        url = url[:-3]
    return url.rstrip("/")


def parse_endpoints(base_url: str) -> tuple[str, ...]:
    """Comma-separated base URLs, each normalized; duplicates dropped."""
    endpoints = tuple(dict.fromkeys(normalize_base_url(part) for part in base_url.split(",") if part.strip()))
    if not endpoints:
        raise ValueError("at least one base URL is needed")
    return endpoints


@dataclasses.dataclass(eq=False, slots=True)  # identity equality: endpoints are tracked by object
class Endpoint:
    base_url: str
    health_url: str  # probed by the prober: 200 brings the endpoint back
    models_url: str  # the model list the prober discovers models from
    healthy: bool = True
    last_error: str = ""


class EndpointPool:
    """Round-robin over the healthy endpoints (all of them when none is healthy: a guess beats refusing
    without trying). Single-threaded: the counter and flags are only touched on the event loop."""

    def __init__(self, base_urls: tuple[str, ...], *, health_path: str, models_path: str) -> None:
        self.endpoints = tuple(Endpoint(url, url + health_path, url + models_path) for url in base_urls)
        self._turn = itertools.count()
        self._healthy = self.endpoints

    def pick(self) -> Endpoint:
        candidates = self._healthy or self.endpoints
        return candidates[next(self._turn) % len(candidates)]

    def mark_down(self, endpoint: Endpoint, reason: str) -> None:
        endpoint.last_error = reason
        if endpoint.healthy:
            endpoint.healthy = False
            self._refresh()

    def mark_up(self, endpoint: Endpoint) -> None:
        if not endpoint.healthy:
            endpoint.healthy = True
            self._refresh()

    def route(self, path: str) -> PoolRoute:
        return PoolRoute(self, path)

    def _refresh(self) -> None:
        self._healthy = tuple(e for e in self.endpoints if e.healthy)


class PoolRoute:
    """One call's walk over the pool (the http.Route protocol): each attempt goes to the next endpoint, and an
    attempt that fails because of the endpoint takes it out of the rotation until its probe answers again."""

    __slots__ = ("_chosen", "_path", "_pool")

    def __init__(self, pool: EndpointPool, path: str) -> None:
        self._pool = pool
        self._path = path
        self._chosen: dict[str, Endpoint] = {}  # url -> endpoint, for the attempts of this call

    def pick(self) -> str:
        endpoint = self._pool.pick()
        url = endpoint.base_url + self._path
        self._chosen[url] = endpoint
        return url

    def failed(self, url: str, error: ProviderError) -> None:
        if _endpoint_fault(error):
            self._pool.mark_down(self._chosen[url], error.message)


def _endpoint_fault(err: ProviderError) -> bool:
    """Transport failures, timeouts and 5xx say the endpoint is sick; a 429 or a 4xx say nothing about it."""
    return err.error_class is ErrorClass.TRANSIENT and (err.status is None or err.status >= 500)
