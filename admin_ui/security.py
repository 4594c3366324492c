"""Admin request guards, middlewares on the admin API so every current and future route gets them: the per-IP
admin rate limit (before authentication, so token guessing is limited too), path-parameter validation, and
the per-IP limit on vault password attempts."""

from __future__ import annotations

import re
from dataclasses import dataclass

import structlog
from aiohttp import web
from prometheus_client import Counter

from admin_ui.common import SERVICES
from pipeline.errors import InvalidRequest, RateLimited
from pipeline.services import Services
from pipeline.web import Handler, TrustedProxies, client_ip, trusted_networks
from stages.rate_limit import TokenBuckets

__all__ = ["GUARDS", "Guards", "admin_ip", "admin_rate_limit", "password_attempt", "validate_path_params"]

log = structlog.get_logger("tokenhub.admin")
_PATH_PARAM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,255}$")


@dataclass(slots=True)
class Guards:
    """Per-IP buckets for the admin API and for password attempts, and the proxies trusted for the IP."""

    admin: TokenBuckets
    passwords: TokenBuckets
    trusted: TrustedProxies
    rejected: Counter

    @classmethod
    def build(cls, services: Services) -> Guards:
        settings = services.settings
        attempts = settings.vault_unlock_attempts_per_min
        return cls(
            admin=TokenBuckets(settings.admin_rate_limit_rps, settings.admin_rate_limit_burst),
            passwords=TokenBuckets(attempts / 60.0, attempts),
            trusted=trusted_networks(services),
            rejected=Counter(
                "tokenhub_admin_rate_limited",
                "Admin API requests rejected by the per-IP admin limiter",
                registry=services.metrics.registry,
            ),
        )

    def follow(self, rps: float, burst: int) -> None:
        """New per-IP admin buckets when SIGHUP changed the admin rate limit (they start full)."""
        if (self.admin.rate, self.admin.burst) != (rps, float(burst)):
            self.admin = TokenBuckets(rps, burst)


GUARDS: web.AppKey[Guards] = web.AppKey("admin_guards", Guards)


def admin_ip(request: web.Request) -> str:
    """The client's address, forwarding headers honoured only from trusted proxies."""
    return client_ip(request, request.config_dict[GUARDS].trusted)


@web.middleware
async def admin_rate_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Runs before authentication, so guessing the admin token is rate limited too."""
    guards = request.config_dict[GUARDS]
    settings = request.config_dict[SERVICES].settings
    guards.follow(settings.admin_rate_limit_rps, settings.admin_rate_limit_burst)
    if wait := guards.admin.take(client_ip(request, guards.trusted)):
        guards.rejected.inc()
        raise RateLimited("admin rate limit exceeded", retry_after=wait)
    return await handler(request)


@web.middleware
async def validate_path_params(request: web.Request, handler: Handler) -> web.StreamResponse:
    for name, value in request.match_info.items():
        if not _PATH_PARAM.match(value):
            raise InvalidRequest(
                f"path parameter {name!r} must be 1-256 characters of letters, digits and . _ : / @ -"
                " starting with a letter or digit",
                field=name,
            )
    return await handler(request)


def password_attempt(request: web.Request) -> str:
    """Unlock and rotate take a password: at most TOKENHUB_VAULT_UNLOCK_ATTEMPTS_PER_MIN tries per IP.
    Returns the client's address for the log line."""
    guards = request.config_dict[GUARDS]
    ip = client_ip(request, guards.trusted)
    if wait := guards.passwords.take(ip):
        log.warning("vault_password_attempts_limited", client_ip=ip)
        raise RateLimited("too many vault password attempts from this address", retry_after=wait)
    return ip
