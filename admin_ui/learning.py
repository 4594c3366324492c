"""Admin views of what routing learns and why it decides: the bandit's posteriors and rewards, and a
simulation that explains a decision without sending anything.

GET  /rewards             every (model, token bucket) arm's Beta posterior, and the latest rewarded requests
POST /routing/simulate    the decision for a /v1/chat body, with every candidate's score components
"""

from __future__ import annotations

from typing import Annotated, Any

from aiohttp import web
from pydantic import Field, ValidationError

from admin_ui.common import PIPELINES
from admin_ui.common import get_services as _services
from admin_ui.params import int_param
from pipeline.context import RequestContext
from pipeline.edge.native import decode_chat
from pipeline.edge.wire import Strict, invalid_request
from pipeline.services import Services
from pipeline.web import REQUEST_ID, read_body
from stages.bandit import token_bucket
from stages.directives import Directives, DirectivesOptions
from stages.policy import Policy, PolicyOptions
from stages.scoring import Constraints, ProviderStats, score_parts
from store.reward_queries import recent_rewards

__all__ = ["rewards", "simulate"]


async def rewards(request: web.Request) -> web.Response:
    services = _services(request)
    limit = int_param(request, "limit", 100, 1, 1000) or 100
    recent = await services.analytics.read(recent_rewards, limit)
    return web.json_response(
        {
            "half_life_secs": services.bandit.half_life,
            "arms": services.bandit.describe(),
            "recent": recent,
        }
    )


class SimulateIn(Strict):
    """Beside the /v1/chat body's own fields."""

    tenant_id: str = "default"
    seed: Annotated[int, Field(ge=0)] | None = None  # the same seed gives the same Thompson draws


async def simulate(request: web.Request) -> web.Response:
    services = _services(request)
    raw = await read_body(request, services.settings.max_body_bytes, max_depth=services.settings.max_json_depth)
    chat_request, policy = decode_chat(raw, max_messages=services.settings.max_messages)
    try:
        body = SimulateIn.model_validate_json(raw)
    except ValidationError as exc:
        raise invalid_request(exc) from None
    ctx = RequestContext(
        request_id=request[REQUEST_ID], scope="chat", client_ip="", request=chat_request, policy=policy
    )
    await Directives(services, DirectivesOptions())(ctx, _stop)  # directives apply as on a real request
    bandit = services.bandit.with_seed(body.seed)
    decision = _policy_for(request, body.tenant_id).decide(ctx, bandit)
    return web.json_response(
        {
            "mode": decision.mode,
            "reason": decision.reason,
            "estimated_input_tokens": decision.estimated_input_tokens,
            "token_bucket": token_bucket(decision.estimated_input_tokens),
            "exclusions": decision.exclusions,
            "fallbacks": list(decision.fallbacks),
            "candidates": _explain(services, decision.mode, decision.estimated_input_tokens, decision.candidates),
        }
    )


def _policy_for(request: web.Request, tenant_id: str) -> Policy:
    """The policy stage as the tenant's pipeline configures it, so the simulation decides as it would."""
    definition, _ = request.config_dict[PIPELINES].definition_for(tenant_id)
    options = next((step.get("with") or {} for step in definition if step.get("stage") == "policy"), {})
    return Policy(_services(request), PolicyOptions.model_validate(options))


def _explain(services: Services, mode: str, tokens: int, candidates: list[Any]) -> list[dict[str, Any]]:
    health = services.health

    def stats(provider_id: str) -> ProviderStats:
        h = health.get(provider_id)
        return ProviderStats(h.avg_latency_ms, h.error_rate)

    parts = {p.model.id: p for p in score_parts([c.model for c in candidates], Constraints(mode, 0, 0, tokens), stats)}
    out = []
    for rank, candidate in enumerate(candidates, 1):
        p = parts[candidate.model.id]
        entry: dict[str, Any] = {
            "rank": rank,
            "model_id": candidate.model.id,
            "provider_id": candidate.model.provider_id,
            "score": p.score(mode),
            "estimated_cost_usd": round(p.cost_usd, 10),
            "latency_ms": round(p.latency_ms, 3),
            "error_rate": round(p.error_rate, 4),
            "weight": candidate.model.weight,
            "components": {"cost": p.cost, "latency": p.latency, "failure": p.failure, "weight": p.weight},
        }
        if mode == "thompson":
            entry["bandit_sample"] = -candidate.score
        out.append(entry)
    return out


async def _stop(ctx: RequestContext) -> None:
    return None
