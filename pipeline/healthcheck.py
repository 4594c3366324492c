"""`tokenhub healthcheck`: ask a running server's `/healthz` and exit 0 (healthy) or 1 (not).

Written for a container's HEALTHCHECK and a Kubernetes exec probe, so it needs no curl in the image, imports
only the standard library and the settings (a probe every few seconds must not pay for loading the server),
and exits only 0 or 1 (Docker reserves every other code). The one line it prints is what `docker inspect`
keeps in the container's health log.

Two readings of the same endpoint:

- ready (the default): 200 only. A 503 ("no provider yet", "vault locked") means the server cannot route a
  request, so the container reports unhealthy, with the server's reason and fix in the health log.
- `--live`: the server answered `/healthz` with its readiness document, 200 or 503. For liveness probes: a
  server waiting for its first provider is alive, and restarting it would not add one.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from pipeline.settings import Settings

__all__ = ["DEFAULT_TIMEOUT_SECS", "HealthResult", "check_health", "healthz_url"]

DEFAULT_TIMEOUT_SECS = 3.0  # below the image's HEALTHCHECK --timeout (5 s): we answer before Docker gives up
_MAX_BODY_BYTES = 64 * 1024  # the readiness document is a few hundred bytes; never read an unbounded answer
_LOOPBACK = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}  # a wildcard bind, probed on loopback

# No proxies: HTTP_PROXY in a container's environment must not send a loopback probe to a proxy.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class HealthResult:
    healthy: bool
    message: str


def healthz_url(settings: Settings) -> str:
    """TOKENHUB_HEALTHCHECK_URL when set, else /healthz on the address the server listens on (a wildcard
    bind is probed on loopback of the same family: asyncio binds `::` IPv6-only)."""
    if settings.healthcheck_url:
        return settings.healthcheck_url
    host = settings.listen_addr.rpartition(":")[0].strip("[]")
    host = _LOOPBACK.get(host, host)
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{settings.port}/healthz"


def check_health(url: str, *, live: bool = False, timeout: float = DEFAULT_TIMEOUT_SECS) -> HealthResult:
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            return _judge(resp.status, resp.read(_MAX_BODY_BYTES), live=live)
    except urllib.error.HTTPError as exc:  # a non-2xx answer: still an answer, with a body to read
        with exc:
            return _judge(exc.code, exc.read(_MAX_BODY_BYTES), live=live)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return HealthResult(False, f"unhealthy: no answer from {url}: {reason}")


def _judge(status: int, body: bytes, *, live: bool) -> HealthResult:
    doc = _readiness_document(body)
    if status == 200 and doc is not None:
        return HealthResult(True, f"healthy: {_counts(doc)}")
    if doc is None:
        # Something answered, but not TokenHub's /healthz (a proxy's error page, another service).
        return HealthResult(False, f"unhealthy: HTTP {status} without TokenHub's readiness document")
    why = f"{doc.get('reason', doc.get('status', 'not ready'))}; fix: {doc.get('fix', '-')}"
    if live and status == 503:
        return HealthResult(True, f"alive, not ready: {why} ({_counts(doc)})")
    return HealthResult(False, f"unhealthy: HTTP {status}: {why} ({_counts(doc)})")


def _readiness_document(body: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) and "status" in doc else None


def _counts(doc: dict[str, Any]) -> str:
    return f"providers={doc.get('adapters')} models={doc.get('models')} routable={doc.get('routable_models')}"
