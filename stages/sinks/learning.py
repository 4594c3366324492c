"""Learning sink: the record's reward and attempts, the bandit's update, the recent-requests index."""

from __future__ import annotations

from collections.abc import Callable

from pipeline.context import RequestContext
from pipeline.types import RequestRecord
from stages.bandit import Bandit, Observation
from stages.learning import RecentRequests, learn

__all__ = ["LearningSink"]


class LearningSink:
    """Runs before the DuckDB queue: it sets `record.attempts` and `record.reward`, which the row keeps."""

    name = "learning"

    def __init__(
        self, bandit: Bandit, recent: RecentRequests, share: Callable[[list[Observation]], None] | None = None
    ) -> None:
        self._bandit = bandit
        self._recent = recent
        self._share = share  # the other replicas' queue (stages/shared_bandit.py), when scaled out

    def __call__(self, record: RequestRecord, ctx: RequestContext) -> None:
        learn(self._bandit, self._recent, ctx, record, self._share)
