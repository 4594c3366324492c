"""POST /v1/feedback: the client's judgement of an answer, folded into that request's reward so the bandit
learns quality, not only cost and latency. Only the API key that made the request may rate it."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Annotated

from aiohttp import web
from pydantic import Field, ValidationError

from pipeline.edge.wire import Strict, invalid_request
from pipeline.errors import Conflict, Forbidden, NotFound, Unauthorized
from pipeline.services import Services
from pipeline.types import ApiKeyInfo, RequestRecord
from pipeline.web import REQUEST_ID, presented_key, read_body
from stages.bandit import QUALITY_SHARE, token_bucket
from store.reward_queries import rewarded_request


class FeedbackIn(Strict):
    request_id: Annotated[str, Field(min_length=1, max_length=256)]
    score: Annotated[float, Field(ge=0, le=1)]
    comment: Annotated[str, Field(max_length=2000)] | None = None


@dataclass(slots=True)
class _Rated:
    """What feedback needs to know about the rated request, from memory or from the request log."""

    owner: str
    status: int
    model_id: str
    reward: float  # NaN when the request earned none
    score: float  # the previous feedback score; NaN when none
    bucket: str
    record: RequestRecord | None  # the live record, when it is still in the recent index


class FeedbackEndpoint:
    def __init__(self, services: Services) -> None:
        self._services = services

    async def handle(self, request: web.Request) -> web.Response:
        services = self._services
        key = _caller(services, presented_key(request))
        raw = await read_body(request, 64 * 1024, max_depth=self._services.settings.max_json_depth)
        try:
            body = FeedbackIn.model_validate_json(raw)
        except ValidationError as exc:
            raise invalid_request(exc) from None
        rated = await self._find(body.request_id)
        if rated.owner != key.id:
            raise Forbidden("this request was made with another API key", field="request_id")
        if rated.status >= 400 or math.isnan(rated.reward) or not rated.model_id:
            raise Conflict("only a request that a model answered can be rated", field="request_id")
        # The answer's share of the reward was the previous score (1 without feedback); the score replaces it.
        previous = 1.0 if math.isnan(rated.score) else rated.score
        new = round(rated.reward + QUALITY_SHARE * (body.score - previous), 6)
        if rated.record is not None:  # a record still in the writer's queue is written with these values
            rated.record.reward, rated.record.feedback_score = new, body.score
        services.bandit.revise(rated.model_id, rated.bucket, rated.reward, new)
        await services.analytics.call(services.analytics.set_feedback, body.request_id, new, body.score, body.comment)
        return web.json_response(
            {"request_id": body.request_id, "score": body.score, "reward": new},
            headers={"X-Request-Id": request[REQUEST_ID]},
        )

    async def _find(self, request_id: str) -> _Rated:
        recent = self._services.recent_requests.get(request_id)
        if recent is not None:
            r, bucket = recent
            return _Rated(r.api_key_id, r.status, r.model_id, r.reward, r.feedback_score, bucket, r)
        row = await self._services.analytics.read(rewarded_request, request_id)  # older: the request log
        if row is None:
            raise NotFound(f"no request {request_id!r} is known", field="request_id")
        return _Rated(
            row["api_key_id"],
            row["status"],
            row["model_id"],
            math.nan if row["reward"] is None else row["reward"],
            math.nan if row["feedback_score"] is None else row["feedback_score"],
            token_bucket(row["input_tokens"]),
            None,
        )


def _caller(services: Services, presented: str) -> ApiKeyInfo:
    if not presented:
        raise Unauthorized("authorization required: send 'Authorization: Bearer tokenhub_...'")
    key = services.identify(presented)
    if key is None or not key.enabled:
        raise Unauthorized("invalid api key")
    if key.expires_at is not None and key.expires_at <= time.time():
        raise Unauthorized("api key expired")
    return key
