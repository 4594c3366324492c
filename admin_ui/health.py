"""Admin view of health: GET /health, TokenHub's readiness (as /healthz judges it, but always a 200 here) and
each provider's tracked state, breaker and error rate."""

from __future__ import annotations

from aiohttp import web

from admin_ui.common import get_services

__all__ = ["provider_health"]


async def provider_health(request: web.Request) -> web.Response:
    services = get_services(request)
    health = services.health
    providers = [
        {
            "provider_id": provider_id,
            "state": h.state,
            "total_requests": h.total_requests,
            "total_errors": h.total_errors,
            "consec_errors": h.consec_errors,
            "avg_latency_ms": round(h.avg_latency_ms, 3),
            "last_error": h.last_error,
            "unavailable": health.unavailable_reason(provider_id),
            "breaker": health.breaker_state(provider_id),
            "error_rate": round(h.error_rate, 4),
        }
        for provider_id, h in sorted(health.snapshot().items())
    ]
    return web.json_response({"readiness": services.readiness(), "providers": providers})
