"""Learning sink: the record's reward and attempts, the bandit's update, the recent-requests index."""

from __future__ import annotations

from pipeline.context import RequestContext
from pipeline.types import RequestRecord
from stages.bandit import Bandit
from stages.learning import RecentRequests, learn

__all__ = ["LearningSink"]


class LearningSink:
    """Runs before the DuckDB queue: it sets `record.attempts` and `record.reward`, which the row keeps."""

    name = "learning"

    def __init__(self, bandit: Bandit, recent: RecentRequests) -> None:
        self._bandit = bandit
        self._recent = recent

    def __call__(self, record: RequestRecord, ctx: RequestContext) -> None:
        learn(self._bandit, self._recent, ctx, record)
