"""Admin view of health: GET /health, TokenHub's readiness (as /healthz judges it, but always a 200 here) and
each provider's tracked state, breaker and error rate, and the models disabled for their provider's quota."""

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
    # models out of their provider's quota: skipped by routing until re-enabled (PATCH enabled) or `until`
    disabled = [
        {
            "model_id": d.model_id,
            "provider_id": d.provider_id,
            "reason": d.reason,
            "since": d.since,
            "until": d.until or None,
        }
        for d in services.model_disables.active()
    ]
    return web.json_response({"readiness": services.readiness(), "providers": providers, "disabled_models": disabled})
