"""POST /v1/feedback: the client's judgement of an answer, folded into that request's reward so the bandit
learns quality, not only cost and latency.

A key finds only its own requests: every look-up and update is by (API key id, request id), so another
key's request is as unknown as one that never existed. The request id carries its start time, which
bounds the request-log scan to the rows since then (and ends the feedback window). Callers are
rate-limited per IP before the key is checked, and per key after.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Annotated

from aiohttp import web
from pydantic import Field, ValidationError

from pipeline.edge.idempotency import Idempotency
from pipeline.edge.wire import Strict
from pipeline.errors import Conflict, NotFound, RateLimited, invalid_request
from pipeline.openapi import Operation
from pipeline.services import Services
from pipeline.types import RequestRecord
from pipeline.web import client_ip, presented_key, read_body, request_id_started, trusted_networks
from stages.auth import key_in_force
from stages.learning import rated_reward
from stages.rate_limit import TokenBuckets
from store.idempotency import StoredResponse
from store.reward_queries import rewarded_request

__all__ = ["FeedbackEndpoint"]

# The row's timestamp is taken when the request ends, after the id's start time; the margin covers a wall
# clock stepped back in between.
CLOCK_MARGIN_SECS = 300.0
# A row logged before the objective was configurable: its answer's share was 0.4 and an unrated answer 1.
LEGACY_QUALITY_WEIGHT, LEGACY_QUALITY_PRIOR = 0.4, 1.0


class FeedbackIn(Strict):
    request_id: Annotated[str, Field(min_length=1, max_length=256)]
    score: Annotated[float, Field(ge=0, le=1)]
    comment: Annotated[str, Field(max_length=2000)] | None = None


@dataclass(slots=True)
class _Rated:
    """What feedback needs to know about the rated request, from memory or from the request log."""

    status: int
    model_id: str
    reward: float  # NaN when the request earned none
    score: float  # the previous feedback score; NaN when none
    quality_prior: float  # what the unrated answer was valued at
    quality_weight: float  # the objective's quality weight when it was rewarded
    record: RequestRecord | None  # the live record, when it is still in the recent index


class FeedbackEndpoint:
    operation = Operation(
        "Score an answer (0..1) so routing learns its quality", "client API", body=FeedbackIn, security="api_key"
    )

    def __init__(self, services: Services) -> None:
        self._services = services
        settings = services.settings
        self._trusted = trusted_networks(services)
        rate, burst = settings.feedback_rate_limit_rps, settings.feedback_rate_limit_burst
        self._by_ip = TokenBuckets(rate, burst)
        self._by_key = TokenBuckets(rate, burst)
        self._window = settings.feedback_window_secs
        self._idempotency = Idempotency(services)

    async def handle(self, request: web.Request) -> web.Response:
        services = self._services
        self._limit(self._by_ip, client_ip(request, self._trusted))  # before the key: guessing keys costs too
        presented = presented_key(request)
        key = key_in_force(bool(presented), services.identify(presented), time.time())
        self._limit(self._by_key, key.id)
        raw = await read_body(request, 64 * 1024, max_depth=services.settings.max_json_depth)
        # Feedback is not a request-log row, so a replay has nothing to record beyond its metric.
        return await self._idempotency.run(request, key.id, raw, "feedback", lambda: self._rate(key.id, raw), _ignore)

    async def _rate(self, key_id: str, raw: bytes) -> web.Response:
        services = self._services
        try:
            body = FeedbackIn.model_validate_json(raw)
        except ValidationError as exc:
            raise invalid_request(exc) from None
        since = self._since(body.request_id)
        rated = await self._find(key_id, body.request_id, since)
        if rated.status >= 400 or math.isnan(rated.reward) or not rated.model_id:
            raise Conflict("only a request that a model answered can be rated", field="request_id")
        new = rated_reward(rated.reward, rated.quality_prior, rated.quality_weight, rated.score, body.score)
        if rated.record is not None:  # a record still in the writer's queue is written with these values
            record = rated.record
            record.reward, record.feedback_score, record.feedback_comment = new, body.score, body.comment
        services.bandit.rate(body.request_id, body.score)
        if services.shared_bandit is not None:  # the other replicas re-value that answer too
            services.shared_bandit.rated(body.request_id, body.score)
        analytics = services.analytics
        await analytics.call(analytics.set_feedback, key_id, body.request_id, since, new, body.score, body.comment)
        return web.json_response({"request_id": body.request_id, "score": body.score, "reward": new})

    def _limit(self, buckets: TokenBuckets, caller: str) -> None:
        if wait := buckets.take(caller):
            self._services.metrics.rate_limited.inc()
            raise RateLimited("feedback rate limit exceeded", retry_after=wait)

    def _since(self, request_id: str) -> float:
        """The earliest timestamp the request's row can have; rejects ids that are not ours or too old."""
        started = request_id_started(request_id)
        if started is None:
            raise NotFound(f"no request {request_id!r} made with this key is known", field="request_id")
        if started < time.time() - self._window:
            raise Conflict(
                f"request {request_id!r} is older than the feedback window ({self._window:g} s)", field="request_id"
            )
        return started - CLOCK_MARGIN_SECS

    async def _find(self, api_key_id: str, request_id: str, since: float) -> _Rated:
        recent = self._services.recent_requests.get(api_key_id, request_id)
        if recent is not None:
            r, _ = recent
            prior, weight = _quality_terms(r.quality_prior, r.quality_weight)
            return _Rated(r.status, r.model_id, r.reward, r.feedback_score, prior, weight, r)
        # Older: the request log, this key's rows since the request started.
        row = await self._services.analytics.read(rewarded_request, api_key_id, request_id, since)
        if row is None:
            raise NotFound(f"no request {request_id!r} made with this key is known", field="request_id")
        return _Rated(
            row.status,
            row.model_id,
            math.nan if row.reward is None else row.reward,
            math.nan if row.feedback_score is None else row.feedback_score,
            *_quality_terms(row.quality_prior, row.quality_weight),
            None,
        )


def _quality_terms(prior: float | None, weight: float | None) -> tuple[float, float]:
    """(quality prior, quality weight) the row was rewarded with; the legacy ones for an older row."""
    if prior is None or weight is None or math.isnan(prior) or math.isnan(weight):
        return LEGACY_QUALITY_PRIOR, LEGACY_QUALITY_WEIGHT
    return prior, weight


def _ignore(stored: StoredResponse) -> None:
    return None
