"""POST /routing/evaluate: a candidate routing policy's estimated average reward on the logged traffic
(counterfactual evaluation, stages/evaluation.py), beside what the logged policy actually earned."""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Annotated

from aiohttp import web
from pydantic import Field

from admin_ui.common import Body, get_services, parse_duration, read_model
from admin_ui.params import parse_time
from pipeline.errors import InvalidRequest
from pipeline.modes import Mode
from pipeline.objective import DEFAULT_REWARD, RewardConfig
from stages.evaluation import CandidatePolicy, evaluate
from store.reward_queries import logged_decisions

__all__ = ["evaluate_policy"]

DEFAULT_WINDOW_SECS = 86400.0


class PolicyIn(Body):
    mode: Mode
    reward: RewardConfig | None = None  # None: the global objective (PUT /routing-config)


class EvaluateIn(Body):
    policy: PolicyIn
    since: Annotated[str, Field(max_length=64)] | None = None  # RFC 3339 or unix milliseconds
    until: Annotated[str, Field(max_length=64)] | None = None  # default: now
    last: Annotated[str, Field(max_length=32)] | None = None  # a duration ('24h') before `until`, instead of since
    seed: Annotated[int, Field(ge=0)] | None = None  # the same seed, the same Thompson draws
    max_rows: Annotated[int, Field(ge=1, le=100_000)] = 20_000  # the newest requests of the window


async def evaluate_policy(request: web.Request) -> web.Response:
    body = await read_model(request, EvaluateIn)
    services = get_services(request)
    since, until = _window(body)
    decisions = await services.analytics.read(logged_decisions, since, until, body.max_rows)
    policy = CandidatePolicy(body.policy.mode, body.policy.reward or services.snapshot.routing.reward or DEFAULT_REWARD)
    run = functools.partial(
        evaluate,
        decisions,
        policy,
        services.snapshot.models,
        half_life=services.bandit.half_life,
        temperature=services.router.temperature,
        seed=body.seed,
    )
    # CPU-bound (the Thompson replay draws per request): off the event loop.
    result = await asyncio.get_running_loop().run_in_executor(None, run)
    return web.json_response({"since": since, "until": until, **result.as_dict()})


def _window(body: EvaluateIn) -> tuple[float, float]:
    """[since, until) in unix seconds; the last 24 h by default."""
    if body.since is not None and body.last is not None:
        raise InvalidRequest("give either since or last, not both", field="last")
    until = parse_time(body.until, "until").timestamp() if body.until else time.time()
    if body.since is not None:
        since = parse_time(body.since, "since").timestamp()
    elif body.last is not None:
        try:
            since = max(until - parse_duration(body.last), 0.0)  # "the last 10^20 days": since the epoch
        except InvalidRequest:
            raise InvalidRequest("last must be a duration like '24h', '90m' or '7d'", field="last") from None
    else:
        since = until - DEFAULT_WINDOW_SECS
    if since >= until:
        raise InvalidRequest("the window is empty: since must be before until", field="since")
    return since, until
