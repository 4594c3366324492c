"""What routing learns from each finished request: its reward, the bandit's arms, and an index of recent
requests so client feedback (POST /v1/feedback) can find them before they reach DuckDB."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator

import structlog

from pipeline.context import RequestContext
from pipeline.types import RequestRecord
from stages.bandit import Bandit, base_reward, reward, token_bucket
from store.analytics import AnalyticsStore
from store.reward_queries import Evidence, reward_evidence

__all__ = ["HORIZON_HALF_LIVES", "BanditRefresher", "RecentRequests", "evidence", "learn"]

log = structlog.get_logger("tokenhub.bandit")
# Evidence older than this many half-lives weighs under 0.1 %: not worth reading back.
HORIZON_HALF_LIVES = 10


class RecentRequests:
    """The last `capacity` rewarded records by (API key id, request id) (LRU): feedback on them needs no
    DuckDB read, and a record still in the writer's queue is updated in place. Keyed by the key too, so a
    caller only ever finds its own requests."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        self._records: OrderedDict[tuple[str, str], tuple[RequestRecord, str]] = OrderedDict()

    def add(self, record: RequestRecord, bucket: str) -> None:
        self._records[record.api_key_id, record.request_id] = (record, bucket)
        if len(self._records) > self._capacity:
            self._records.popitem(last=False)

    def get(self, api_key_id: str, request_id: str) -> tuple[RequestRecord, str] | None:
        """The record this key made and the bandit bucket it was learned in."""
        return self._records.get((api_key_id, request_id))


def learn(bandit: Bandit, recent: RecentRequests, ctx: RequestContext, record: RequestRecord) -> None:
    """Set the record's reward and attempts, and teach the bandit: each failed attempt earns its model 0,
    the model that answered earns the request's reward. Requests that tried no model teach nothing."""
    decision = ctx.decision
    if not ctx.attempts or decision is None:
        return
    record.attempts = ", ".join(f"{a.model_id}={a.outcome}" for a in ctx.attempts)
    succeeded = ctx.error is None and ctx.served_by is not None
    base = base_reward(record.cost_usd, record.latency_ms, decision.latency_budget_ms) if succeeded else 0.0
    record.reward = reward(succeeded, base)
    bucket = token_bucket(record.input_tokens or decision.estimated_input_tokens)
    for attempt in ctx.attempts:
        if attempt.error_class:
            bandit.update(attempt.model_id, bucket, 0.0, at=record.timestamp)
    if succeeded:
        bandit.update(record.model_id, bucket, record.reward, at=record.timestamp)
    recent.add(record, bucket)


def evidence(rows: list[Evidence]) -> Iterator[tuple[str, int, float, float]]:
    """Bandit evidence from request-log rows: the answering model's reward, and 0 for each failed attempt
    (the `attempts` column; a failed row's own reward is 0 and names no model)."""
    for model_id, input_tokens, value, at, attempts in rows:
        for entry in attempts.split(", ") if attempts else ():
            tried, _, outcome = entry.rpartition("=")
            # a rescue's continuation answered, a hedge's slower call was cancelled: not failures
            if tried and outcome not in ("ok", "rescued", "hedged_out"):
                yield tried, input_tokens, 0.0, at
        if model_id:
            yield model_id, input_tokens, value, at


class BanditRefresher:
    """Rebuilds the posteriors from the request log; the services run it at start-up and every interval on
    the periodic helper, so a restart loses nothing and the in-memory updates never drift from the log."""

    def __init__(self, bandit: Bandit, analytics: AnalyticsStore) -> None:
        self._bandit = bandit
        self._analytics = analytics

    async def refresh_once(self) -> int:
        since = time.time() - HORIZON_HALF_LIVES * self._bandit.half_life
        rows = await self._analytics.read(reward_evidence, since)
        used = self._bandit.rebuild(evidence(rows))
        log.debug("bandit_refreshed", rows=used)
        return used
