"""Admin API for the stored routing defaults: GET/PUT /routing-config. Zero or empty stored values fall back to
the settings (``TOKENHUB_DEFAULT_*``), an unset reward to the default objective; ``effective`` shows what
requests get (a tenant's policy options may still override it)."""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import Field

from admin_ui.common import Body, commit, get_services, read_model
from pipeline.modes import OptionalMode
from pipeline.objective import DEFAULT_REWARD, RewardConfig
from store.config_store import RoutingDefaults

__all__ = ["RoutingIn", "get_routing", "put_routing", "routing_defaults"]


class RoutingIn(Body):
    default_mode: OptionalMode = ""
    default_max_budget_usd: Annotated[float, Field(ge=0, le=100)] = 0.0
    default_max_latency_ms: Annotated[int, Field(ge=0, le=300_000)] = 0
    reward: RewardConfig | None = None  # null: the default objective; omitted: the stored one is kept


async def get_routing(request: web.Request) -> web.Response:
    services = get_services(request)
    stored = services.snapshot.routing
    settings = services.settings
    return web.json_response(
        {
            "default_mode": stored.mode,
            "default_max_budget_usd": stored.max_budget_usd,
            "default_max_latency_ms": stored.max_latency_ms,
            "reward": stored.reward.model_dump() if stored.reward else None,
            "effective": {
                "mode": stored.mode or settings.default_mode,
                "max_budget_usd": stored.max_budget_usd or settings.default_max_budget_usd,
                "max_latency_ms": stored.max_latency_ms or settings.default_max_latency_ms,
                "reward": (stored.reward or DEFAULT_REWARD).model_dump(),
            },
        }
    )


async def put_routing(request: web.Request) -> web.Response:
    body = await read_model(request, RoutingIn)
    services = get_services(request)
    defaults = routing_defaults(body, services.snapshot.routing)
    await commit(request, services.config.set_routing, defaults)
    return await get_routing(request)


def routing_defaults(body: RoutingIn, current: RoutingDefaults) -> RoutingDefaults:
    """What a PUT (or a config file's `routing`) stores. An omitted `reward` keeps the stored one: a client
    that does not know the objective (an older script, a form without it) must not reset it."""
    reward = body.reward if "reward" in body.model_fields_set else current.reward
    return RoutingDefaults(body.default_mode, body.default_max_budget_usd, body.default_max_latency_ms, reward)
