"""What each eligible candidate is expected to earn under the routing objective, term by term.

Expected cost, latency and failure share come from the model's recent record in the bandit (what its answers
actually cost and took), else from the request's cost estimate and its provider's health statistics. The
largest expected cost and latency among the candidates are the request's references for relative terms,
and each candidate's expected reward is its Thompson prior (cold start) and what the routing reason and the
simulator show.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipeline.context import Candidate
from pipeline.objective import RewardConfig, term
from stages.bandit import Bandit, quality_prior
from stages.scoring import ProviderStats

__all__ = ["Expectation", "Outlook", "describe", "expect"]


@dataclass(frozen=True, slots=True)
class Expectation:
    quality: float  # the quality prior (the objective's, else the model's mean feedback, else 0.5)
    cost_usd: float
    latency_ms: float
    failure: float
    cost_term: float
    latency_term: float
    reward: float  # (1 - failure) · (wq·quality + wc·cost_term + wl·latency_term)

    def as_dict(self) -> dict[str, float]:
        return {
            "quality": round(self.quality, 4),
            "cost_term": round(self.cost_term, 4),
            "latency_term": round(self.latency_term, 4),
            "failure": round(self.failure, 4),
            "expected_cost_usd": round(self.cost_usd, 10),
            "expected_latency_ms": round(self.latency_ms, 3),
            "expected_reward": round(self.reward, 4),
        }


class Outlook:
    """The request's objective, its references, and each candidate's expectation by model id (computed when
    asked, from the values read at decision time: a scored mode needs only the references, and the first
    candidate's expectation only when its routing reason is rendered, off the request path)."""

    __slots__ = ("_expected", "_raw", "cost_ref_usd", "latency_ref_ms", "objective")

    def __init__(
        self,
        objective: RewardConfig,
        raw: dict[str, tuple[float, float, float, float]],
        cost_ref_usd: float,
        latency_ref_ms: float,
    ) -> None:
        self.objective = objective
        self._raw = raw  # model id -> (expected cost, latency, failure share, quality prior)
        self._expected: dict[str, Expectation] = {}
        self.cost_ref_usd = cost_ref_usd  # the largest expected cost and latency in `raw`
        self.latency_ref_ms = latency_ref_ms

    def expectation(self, model_id: str) -> Expectation:
        found = self._expected.get(model_id)
        if found is None:
            objective = self.objective
            cost, latency, failure, quality = self._raw[model_id]
            cost_term = term(cost, objective.cost_scale_usd, self.cost_ref_usd)
            latency_term = term(latency, objective.latency_scale_ms, self.latency_ref_ms)
            value = objective.quality * quality + objective.cost * cost_term + objective.latency * latency_term
            found = Expectation(quality, cost, latency, failure, cost_term, latency_term, (1 - failure) * value)
            self._expected[model_id] = found
        return found


def describe(e: Expectation, objective: RewardConfig) -> str:
    """An expectation as the routing reason shows it."""
    return (
        f"expected reward {e.reward:.3f} = quality {e.quality:.2f}, cost {e.cost_term:.2f},"
        f" latency {e.latency_term:.2f}, failure {e.failure:.0%} ({objective.describe()})"
    )


def expect(
    candidates: Sequence[Candidate],
    bandit: Bandit,
    bucket: str,
    objective: RewardConfig,
    provider_stats: Callable[[str], ProviderStats],
) -> Outlook:
    raw = {}
    cost_ref = latency_ref = 0.0
    for c in candidates:
        model = c.model
        stats = bandit.stats(model.id, bucket)
        quality = quality_prior(stats, objective)
        if stats is not None and stats.successes > 1e-9:
            answered = stats.successes
            cost, latency, failure = stats.cost_sum / answered, stats.latency_sum / answered, stats.failure or 0.0
        else:
            health = provider_stats(model.provider_id)
            failure = stats.failure if stats is not None and stats.failure is not None else health.error_rate
            cost, latency = c.estimated_cost_usd, health.latency_ms
        raw[model.id] = (cost, latency, failure, quality)
        cost_ref = max(cost_ref, cost)
        latency_ref = max(latency_ref, latency)
    return Outlook(objective, raw, cost_ref, latency_ref)
