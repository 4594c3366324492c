"""Admin views of what routing learns and why it decides: the bandit's posteriors and rewards, and a
simulation that explains a decision without sending anything.

GET  /rewards             the latest rewarded requests (newest first), and every (model, token bucket) arm's posterior
POST /routing/simulate    the Router's decision for the original's flat body or a /v1/chat body, explained
"""

from __future__ import annotations

import random
from typing import Annotated, Any

from aiohttp import web
from pydantic import Field, ValidationError

from admin_ui.common import get_services as _services
from admin_ui.params import int_param
from pipeline.context import Policy, RequestContext, RoutingDecision
from pipeline.edge.native import decode_chat
from pipeline.edge.wire import Strict
from pipeline.errors import NoEligibleModel, invalid_request
from pipeline.modes import OptionalMode
from pipeline.objective import DEFAULT_REWARD
from pipeline.services import Services
from pipeline.types import ChatRequest
from pipeline.web import REQUEST_ID, read_body
from stages.bandit import token_bucket
from stages.directives import Directives, DirectivesOptions
from stages.policy import policy_options_of
from store.reward_queries import recent_rewards

__all__ = ["rewards", "simulate"]
DEFAULT_TOKEN_COUNT = 500  # the original's simulate: token_count <= 0 means 500


async def rewards(request: web.Request) -> web.Response:
    services = _services(request)
    limit = int_param(request, "limit", 100, 1, 1000) or 100
    offset = int_param(request, "offset", 0, 0, 10**9) or 0
    rows = await services.analytics.read(recent_rewards, limit, offset)
    entries = [
        {
            "timestamp": row["timestamp"],
            "request_id": row["request_id"],
            "model_id": row["model_id"],
            "provider_id": row["provider_id"],
            "mode": row["mode"],
            "estimated_tokens": row["input_tokens"],
            "token_bucket": token_bucket(row["input_tokens"]),
            "latency_ms": row["latency_ms"],
            "cost_usd": row["cost_usd"],
            "success": row["status"] < 400,
            "status": row["status"],
            "error_class": row["error_class"],
            "reward": row["reward"],
            "feedback_score": row["feedback_score"],
        }
        for row in rows
    ]
    objective = services.snapshot.routing.reward or DEFAULT_REWARD  # the global one; tenants may differ
    return web.json_response(
        {
            "rewards": entries,
            "half_life_requests": services.bandit.half_life,
            "objective": objective.model_dump(),
            "arms": services.bandit.describe(objective),
        }
    )


class SimulateIn(Strict):
    """The original's flat body; with `request`, a /v1/chat body instead (its `policy` applies, the flat
    fields are not read). `tenant_id` and `seed` work with both."""

    tenant_id: str = "default"
    seed: Annotated[int, Field(ge=0)] | None = None  # the same seed gives the same draws
    request: Any = None
    mode: OptionalMode = ""
    max_budget_usd: Annotated[float, Field(ge=0, le=100)] = 0.0
    max_latency_ms: Annotated[int, Field(ge=0, le=300_000)] = 0
    min_weight: Annotated[int, Field(ge=0, le=10)] = 0
    token_count: Annotated[int, Field(le=10**9)] = 0
    model_hint: str = ""


async def simulate(request: web.Request) -> web.Response:
    services = _services(request)
    raw = await read_body(request, services.settings.max_body_bytes, max_depth=services.settings.max_json_depth)
    try:
        body = SimulateIn.model_validate_json(raw)
    except ValidationError as exc:
        raise invalid_request(exc) from None
    if body.request is not None:  # the /v1/chat body: directives apply as on a real request
        chat_request, policy = decode_chat(raw, max_messages=services.settings.max_messages)
        ctx = RequestContext(
            request_id=request[REQUEST_ID], scope="chat", client_ip="", request=chat_request, policy=policy
        )
        await Directives(services, DirectivesOptions())(ctx, _stop)
        directives = ctx.directives_applied
    else:
        tokens = body.token_count if body.token_count > 0 else DEFAULT_TOKEN_COUNT
        chat_request = ChatRequest(messages=[], model_hint=body.model_hint.strip(), estimated_input_tokens=tokens)
        policy = Policy(body.mode, body.max_budget_usd, body.max_latency_ms, body.min_weight)
        directives = {}
    try:  # the live Router with its own samplers, counting nothing: a simulation changes no state
        decision = services.router.decide(
            chat_request,
            policy,
            policy_options_of(services.snapshot.pipelines.get(body.tenant_id)),
            request_id=request[REQUEST_ID],
            directives=directives,
            bandit=services.bandit.with_seed(body.seed),
            rng=random.Random(body.seed),
            observe=False,
        )
    except NoEligibleModel as exc:  # the simulation worked: its answer is that nothing would be routed
        return web.json_response({"error": exc.message, "exclusions": exc.exclusions, "eligible": [], "total": 0})
    first = decision.candidates[0]
    return web.json_response(
        {
            "decision": {
                "model_id": first.model.id,
                "provider_id": first.model.provider_id,
                "estimated_cost_usd": round(first.estimated_cost_usd, 10),
                "reason": decision.reason,
            },
            "eligible": [
                {
                    "id": c.model.id,
                    "provider_id": c.model.provider_id,
                    "weight": c.model.weight,
                    "max_context_tokens": c.model.max_context_tokens,
                    "input_per_1k": c.model.input_per_1k,
                    "output_per_1k": c.model.output_per_1k,
                    "enabled": c.model.enabled,
                    "selected": c is first,
                }
                for c in decision.candidates
            ],
            "total": len(decision.candidates),
            "mode": decision.mode,
            "reason": decision.reason,
            "estimated_input_tokens": decision.estimated_input_tokens,
            "token_bucket": token_bucket(decision.estimated_input_tokens),
            "exclusions": decision.exclusions,
            "fallbacks": list(decision.fallbacks),
            "objective": decision.objective.model_dump(),
            "propensity": decision.propensity,
            "candidates": _explain(services, decision),
        }
    )


def _explain(services: Services, decision: RoutingDecision) -> list[dict[str, Any]]:
    mode = decision.mode
    out = []
    for rank, (candidate, p) in enumerate(zip(decision.candidates, services.router.explain(decision), strict=True), 1):
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
        if decision.outlook is not None:  # the objective's terms: what this model is expected to earn
            entry["reward"] = decision.outlook.expectation(candidate.model.id).as_dict()
        if mode == "thompson":
            entry["bandit_sample"] = -candidate.score
        out.append(entry)
    return out


async def _stop(ctx: RequestContext) -> None:
    return None
