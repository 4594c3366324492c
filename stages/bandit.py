"""Thompson sampling over (model, token bucket) arms with Beta posteriors, and the reward it learns from.

Each arm keeps a time-discounted sum of rewards and of pulls (half-life configurable), so an arm's
posterior is Beta(1 + S, 1 + N - S) over recent evidence: when a provider changes, old evidence fades and
the policy adapts. Updates are O(1) in memory as records arrive; `rebuild` recomputes every arm from the
request log (at start-up and periodically), so a restart loses nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.context import Candidate

__all__ = [
    "COST_SCALE_USD",
    "QUALITY_SHARE",
    "Arm",
    "Bandit",
    "base_reward",
    "reward",
    "thompson_order",
    "token_bucket",
]

# Reward (routing.md §5): failures earn 0; successes 0.3 for cheapness, 0.3 for speed, 0.4 for the answer.
# Without client feedback the answer's share is granted in full; `POST /v1/feedback` replaces it by 0.4 x score.
COST_SCALE_USD = 0.10
QUALITY_SHARE = 0.4


def thompson_order(candidates: Sequence[Candidate], bandit: Bandit, bucket: str) -> list[Candidate]:
    """Candidates by one posterior draw each, highest first; a candidate's score becomes -draw."""
    draws = bandit.samples([c.model.id for c in candidates], bucket)
    ordered = [
        Candidate(c.model, -round(draw, 6), c.estimated_cost_usd) for c, draw in zip(candidates, draws, strict=True)
    ]
    ordered.sort(key=lambda c: (c.score, c.model.id))
    return ordered


def token_bucket(input_tokens: int) -> str:
    if input_tokens < 1000:
        return "small"
    return "medium" if input_tokens <= 10_000 else "large"


def base_reward(cost_usd: float, latency_ms: float, latency_budget_ms: float) -> float:
    """The cost and latency part of a successful request's reward (0..0.6)."""
    cheap = 1 - min(cost_usd / COST_SCALE_USD, 1.0)
    fast = 1 - min(latency_ms / max(latency_budget_ms, 1000.0), 1.0)
    return 0.3 * cheap + 0.3 * fast


def reward(succeeded: bool, base: float, quality: float | None = None) -> float:
    """0 for a failure; else the base plus the answer's share (full, or the client's score in [0, 1])."""
    if not succeeded:
        return 0.0
    return round(base + QUALITY_SHARE * (1.0 if quality is None else quality), 6)


@dataclass(slots=True)
class Arm:
    reward_sum: float = 0.0  # discounted
    pulls: float = 0.0  # discounted
    updated: float = 0.0  # unix seconds of the last decay

    def decay_to(self, now: float, half_life: float) -> None:
        if self.updated and now > self.updated:
            factor = 0.5 ** ((now - self.updated) / half_life)
            self.reward_sum *= factor
            self.pulls *= factor
        self.updated = max(self.updated, now)

    @property
    def alpha(self) -> float:
        return 1.0 + self.reward_sum

    @property
    def beta(self) -> float:
        return 1.0 + max(self.pulls - self.reward_sum, 0.0)


class Bandit:
    def __init__(
        self,
        *,
        half_life_secs: float,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.half_life = half_life_secs
        self._rng = np.random.default_rng(seed)
        self._clock = clock
        self._arms: dict[tuple[str, str], Arm] = {}

    def update(self, model_id: str, bucket: str, value: float, *, at: float | None = None, weight: float = 1.0) -> None:
        """Add `weight` pulls earning `value` each (a negative weight takes evidence back, for feedback)."""
        arm = self._arms.setdefault((model_id, bucket), Arm())
        arm.decay_to(self._clock() if at is None else at, self.half_life)
        arm.reward_sum = max(arm.reward_sum + weight * value, 0.0)
        arm.pulls = max(arm.pulls + weight, 0.0)

    def revise(self, model_id: str, bucket: str, old: float, new: float) -> None:
        """A request's reward changed (client feedback): move its arm's evidence from `old` to `new`."""
        arm = self._arms.setdefault((model_id, bucket), Arm())
        arm.decay_to(self._clock(), self.half_life)
        arm.reward_sum = max(arm.reward_sum + new - old, 0.0)

    def with_seed(self, seed: int | None) -> Bandit:
        """A view on the same arms with its own sampler: simulations draw without moving the live sampler."""
        view = Bandit(half_life_secs=self.half_life, seed=seed, clock=self._clock)
        view._arms = self._arms
        return view

    def samples(self, model_ids: Sequence[str], bucket: str) -> list[float]:
        """One Beta draw per model (unknown arms are Beta(1, 1)), in the given order."""
        now = self._clock()
        alphas, betas = [], []
        for model_id in model_ids:
            arm = self._arms.get((model_id, bucket))
            if arm is None:
                alphas.append(1.0)
                betas.append(1.0)
                continue
            factor = 0.5 ** (max(now - arm.updated, 0.0) / self.half_life) if arm.updated else 1.0
            s, n = arm.reward_sum * factor, arm.pulls * factor
            alphas.append(1.0 + s)
            betas.append(1.0 + max(n - s, 0.0))
        return [float(x) for x in self._rng.beta(alphas, betas)]

    def rebuild(self, rows: Iterable[tuple[str, int, float, float]]) -> int:
        """Replace every arm from (model_id, input_tokens, reward, unix seconds) rows; returns rows used."""
        arms: dict[tuple[str, str], Arm] = {}
        now = self._clock()
        used = 0
        for model_id, input_tokens, value, at in rows:
            if value is None or not math.isfinite(value):
                continue
            arm = arms.setdefault((model_id, token_bucket(int(input_tokens))), Arm(updated=now))
            factor = 0.5 ** (max(now - at, 0.0) / self.half_life)
            arm.reward_sum += factor * value
            arm.pulls += factor
            used += 1
        self._arms = arms
        return used

    def describe(self) -> list[dict[str, float | str]]:
        """Every arm's posterior now, for GET /admin/v1/rewards."""
        now = self._clock()
        out: list[dict[str, float | str]] = []
        for (model_id, bucket), arm in sorted(self._arms.items()):
            arm.decay_to(now, self.half_life)
            out.append(
                {
                    "model_id": model_id,
                    "bucket": bucket,
                    "alpha": round(arm.alpha, 4),
                    "beta": round(arm.beta, 4),
                    "mean": round(arm.alpha / (arm.alpha + arm.beta), 4),
                    "pulls": round(arm.pulls, 3),
                }
            )
        return out
