"""What routing learns from each finished request: its reward under the request's objective, the terms the
evaluator and a restart need, the bandit's observations, and an index of recent requests so client
feedback (POST /v1/feedback) can find them before they reach DuckDB."""

from __future__ import annotations

import itertools
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator

import structlog

from pipeline.context import RequestContext
from pipeline.types import RequestRecord
from stages.bandit import Bandit, Observation, token_bucket
from store.analytics import AnalyticsStore
from store.reward_queries import Evidence, reward_evidence

__all__ = [
    "EVIDENCE_MAX_AGE_SECS",
    "SERVED",
    "BanditRefresher",
    "RecentRequests",
    "evidence",
    "learn",
    "observations",
    "rated_reward",
]

log = structlog.get_logger("tokenhub.bandit")
# Attempt outcomes that are not failures: an answer, a stream rescue's continuation that answered, and a
# hedge's slower call cancelled when another answered first.
SERVED = frozenset({"ok", "rescued", "hedged_out"})
# Evidence is discounted per observation; a bucket that saw no traffic for a month is read back no further.
EVIDENCE_MAX_AGE_SECS = 30 * 86400.0


class RecentRequests:
    """The newest rewarded records by (API key id, request id), oldest evicted first: feedback on them needs
    no DuckDB read, and a record still in the writer's queue is updated in place. Keyed by the key too, so
    a caller only ever finds its own requests.

    Bounded by what it must hold, not by a fixed count: every record the writer has not stored yet
    (`unwritten()`, which the log cannot answer for; records are added before they are queued, so the
    newest entries are the queued ones), plus the newest `capacity` others. Each entry costs about 0.8 KB
    (the record, its reason and ids): a fixed 10,000 held ~8 MB at any load, this holds ~1 MB at the
    default 1,000 while the writer keeps up and grows with its queue only while the queue is long."""

    def __init__(self, capacity: int = 100_000, *, unwritten: Callable[[], int] = lambda: 0) -> None:
        self._capacity = capacity
        self._unwritten = unwritten
        self._records: OrderedDict[tuple[str, str], tuple[RequestRecord, str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def add(self, record: RequestRecord, bucket: str) -> None:
        records = self._records
        records[record.api_key_id, record.request_id] = (record, bucket)
        if len(records) > self._capacity:
            bound = self._capacity + self._unwritten()
            while len(records) > bound:  # more than one after a long queue drained
                records.popitem(last=False)

    def get(self, api_key_id: str, request_id: str) -> tuple[RequestRecord, str] | None:
        """The record this key made and the bandit bucket it was learned in."""
        return self._records.get((api_key_id, request_id))


def learn(
    bandit: Bandit,
    recent: RecentRequests,
    ctx: RequestContext,
    record: RequestRecord,
    share: Callable[[list[Observation]], None] | None = None,
) -> None:
    """Set the record's reward, attempts and evaluation terms, and teach the bandit: each failed attempt is
    an observation of failure for its model, the answer one of success. Requests that tried no model teach
    nothing. `share` queues the observations for the other replicas (stages/shared_bandit.py)."""
    decision = ctx.decision
    if not ctx.attempts or decision is None:
        return
    record.attempts = ", ".join(f"{a.model_id}={a.outcome}" for a in ctx.attempts)
    succeeded = ctx.error is None and ctx.served_by is not None
    bucket = token_bucket(record.input_tokens or decision.estimated_input_tokens)
    objective = decision.objective
    rated_model = record.model_id or ctx.attempts[0].model_id
    prior = bandit.quality_prior(rated_model, bucket, objective)
    record.reward = objective.reward(
        succeeded, prior, record.cost_usd, record.latency_ms, decision.cost_ref_usd, decision.latency_ref_ms
    )
    record.propensity = math.nan if decision.propensity is None else decision.propensity
    record.candidates = ",".join(c.model.id for c in decision.candidates)
    record.cost_ref_usd, record.latency_ref_ms = decision.cost_ref_usd, decision.latency_ref_ms
    record.quality_prior, record.quality_weight = prior, objective.quality
    learned = list(observations(record, bucket))
    for obs in learned:
        bandit.observe(obs)
    if share is not None:
        share(learned)
    recent.add(record, bucket)


def rated_reward(reward: float, quality_prior: float, quality_weight: float, previous: float, score: float) -> float:
    """A request's reward once its answer is scored: the quality term moves from the previous score (the
    prior when it was unrated, `previous` NaN) to `score`, at the weight the objective gave quality."""
    before = quality_prior if math.isnan(previous) else previous
    return round(reward + quality_weight * (score - before), 6)


def observations(record: RequestRecord | Evidence, bucket: str) -> Iterator[Observation]:
    """The bandit's observations of one request-log row: a failure for each failed attempt (the `attempts`
    column), then the answer (a row whose request failed names no answering model)."""
    for entry in record.attempts.split(", ") if record.attempts else ():
        tried, _, outcome = entry.rpartition("=")
        if tried and outcome not in SERVED:
            yield Observation("", tried, bucket, False, 0.0, 0.0, 0.0, 0.0, record.quality_prior)
    if record.model_id and record.status < 400:
        yield Observation(
            record.request_id,
            record.model_id,
            bucket,
            True,
            record.cost_usd,
            record.latency_ms,
            record.cost_ref_usd,
            record.latency_ref_ms,
            record.quality_prior,
            record.feedback_score,
        )


def evidence(rows: Iterable[Evidence]) -> Iterator[Observation]:
    """Observations from request-log rows (store/reward_queries.py), oldest first."""
    for row in rows:
        yield from observations(row, token_bucket(row.input_tokens))


class BanditRefresher:
    """Rebuilds the posteriors from the request log; the services run it at start-up and every interval on
    the periodic helper, so a restart loses nothing and the in-memory updates never drift from the log.

    What the bandit learns while the log is read is not in the rows read: the rebuild replays it after them.
    The read takes the rows logged before the refresh began, once every record accepted by then is stored
    (`settle`); every observation from then on comes from a later record, so each is counted once. (A rebuild
    from the rows alone forgot the requests served during the read until the next refresh, minutes later:
    at start-up, every request served before the first read ended.)"""

    def __init__(self, bandit: Bandit, analytics: AnalyticsStore, settle: Callable[[], Awaitable[None]]) -> None:
        self._bandit = bandit
        self._analytics = analytics
        self._settle = settle

    async def refresh_once(self) -> int:
        until = time.time()
        newer = self._bandit.keep_new()
        try:
            await self._settle()
            rows = await self._analytics.read(
                reward_evidence, until - EVIDENCE_MAX_AGE_SECS, self._bandit.horizon, until
            )
        finally:
            self._bandit.stop_keeping(newer)
        used = self._bandit.rebuild(itertools.chain(evidence(rows), newer))
        log.debug("bandit_refreshed", observations=used)
        return used
