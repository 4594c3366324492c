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
from stages.bandit import Bandit
from stages.scoring import ProviderStats

__all__ = ["Expectation", "Outlook", "expect"]


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


@dataclass(frozen=True, slots=True)
class Outlook:
    """The request's objective, its references, and every candidate's expectation by model id."""

    objective: RewardConfig
    cost_ref_usd: float
    latency_ref_ms: float
    by_model: dict[str, Expectation]

    def describe(self, model_id: str) -> str:
        e = self.by_model[model_id]
        return (
            f"expected reward {e.reward:.3f} = quality {e.quality:.2f}, cost {e.cost_term:.2f},"
            f" latency {e.latency_term:.2f}, failure {e.failure:.0%} ({self.objective.describe()})"
        )


def expect(
    candidates: Sequence[Candidate],
    bandit: Bandit,
    bucket: str,
    objective: RewardConfig,
    provider_stats: Callable[[str], ProviderStats],
) -> Outlook:
    raw = []
    for c in candidates:
        model = c.model
        stats = bandit.stats(model.id, bucket)
        health = provider_stats(model.provider_id)
        cost = stats.cost if stats is not None and stats.cost is not None else c.estimated_cost_usd
        latency = stats.latency if stats is not None and stats.latency is not None else health.latency_ms
        failure = stats.failure if stats is not None and stats.failure is not None else health.error_rate
        raw.append((model.id, cost, latency, failure))
    cost_ref = max((cost for _, cost, _, _ in raw), default=0.0)
    latency_ref = max((latency for _, _, latency, _ in raw), default=0.0)
    by_model = {}
    for model_id, cost, latency, failure in raw:
        quality = bandit.quality_prior(model_id, bucket, objective)
        cost_term = term(cost, objective.cost_scale_usd, cost_ref)
        latency_term = term(latency, objective.latency_scale_ms, latency_ref)
        value = objective.quality * quality + objective.cost * cost_term + objective.latency * latency_term
        by_model[model_id] = Expectation(
            quality, cost, latency, failure, cost_term, latency_term, (1 - failure) * value
        )
    return Outlook(objective, cost_ref, latency_ref, by_model)
