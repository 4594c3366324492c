"""Inside a container, `localhost` is the container itself, not the machine a provider (Ollama, vLLM, LM Studio)
listens on: base URLs naming localhost / 127.0.0.1 / ::1 are sent to `host.docker.internal` instead, port
and path kept. The stored base URL is left as the admin typed it; only the connection is redirected, so a
data directory moved between the host and a container works in both.

TOKENHUB_CONTAINER decides: `auto` (default) rewrites when this process runs in a container (/.dockerenv,
/run/.containerenv, or a container cgroup for PID 1) AND `host.docker.internal` resolves (Docker Desktop,
or compose's `extra_hosts: host.docker.internal:host-gateway`), so a Kubernetes pod, where localhost is a
sidecar, keeps it; `true` always rewrites; `false` never. Decided once at start-up (the lookup blocks).
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import structlog

from pipeline.types import ProviderInfo

__all__ = ["DOCKER_HOST", "LOCAL_HOSTS", "in_container", "localhost_rewrite", "rewrite_local_url"]

log = structlog.get_logger("tokenhub.container")
DOCKER_HOST = "host.docker.internal"
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_CGROUP_MARKERS = ("docker", "containerd", "kubepods", "libpod", "lxc")

ProviderRewrite = Callable[[ProviderInfo], ProviderInfo]


def in_container(root: Path = Path("/")) -> bool:
    """Whether this process runs in a container, by the marks Docker, Podman and containerd leave."""
    if (root / ".dockerenv").exists() or (root / "run" / ".containerenv").exists():
        return True
    try:
        cgroup = (root / "proc" / "1" / "cgroup").read_text(errors="replace")
    except OSError:
        return False
    return any(marker in cgroup for marker in _CGROUP_MARKERS)


def rewrite_local_url(base_url: str) -> str:
    """`base_url` (one URL or a comma-separated list) with every local host replaced by host.docker.internal."""
    return ",".join(_rewrite_one(part.strip()) for part in base_url.split(",") if part.strip())


def _rewrite_one(url: str) -> str:
    parts = urlsplit(url)
    if (parts.hostname or "") not in LOCAL_HOSTS:
        return url
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = DOCKER_HOST + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{netloc}" if userinfo else netloc))


def localhost_rewrite(
    mode: str, *, root: Path = Path("/"), resolves: Callable[[str], bool] | None = None
) -> ProviderRewrite | None:
    """The rewrite to apply to every provider record before its adapter is built, or None (no rewrite)."""
    if mode == "false":
        return None
    check = resolves or _resolves
    if mode == "auto" and not (in_container(root) and check(DOCKER_HOST)):
        return None
    if mode == "true" and not check(DOCKER_HOST):
        log.warning("container_host_unresolvable", host=DOCKER_HOST, note="TOKENHUB_CONTAINER=true rewrites anyway")
    log.info("container_localhost_rewrite", mode=mode, to=DOCKER_HOST)
    return _rewrite_provider


def _rewrite_provider(provider: ProviderInfo) -> ProviderInfo:
    rewritten = rewrite_local_url(provider.base_url)
    return provider if rewritten == provider.base_url else dataclasses.replace(provider, base_url=rewritten)


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False
    return True
