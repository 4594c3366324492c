"""Counterfactual evaluation: what a candidate routing policy would have earned on the logged traffic.

Every routed request logs the propensity of its first choice (the probability the live policy had of picking
that model), its eligible candidates and the raw terms of its reward. For a candidate policy (a mode and a
reward objective) this module computes, for each logged request, the probability the candidate would have
picked each eligible model, and from those:

- inverse propensity scoring: mean of π(a|x) / p(a|x) · r, unbiased when every model the candidate picks
  had a non-zero logged propensity;
- doubly robust: mean of Σ_m π(m|x) r̂(m) + π(a|x) / p(a|x) · (r - r̂(a)), with r̂ each model's mean reward in
  the window (lower variance; unbiased if either the propensities or r̂ are right);

each with a 95 % normal confidence interval (1.96 standard errors of the per-request terms), and the
effective sample size (Σw)² / Σw² of the importance weights w = π / p. Rewards are valued under the
candidate's objective, so a change of weights is evaluated on the same traffic.

The log is replayed in time order, so the candidate sees the world as it was at each request: the
providers' health (latency, error rate) rebuilt from the logged attempts as the live tracker would have;
in `thompson` mode a bandit learning from the logged traffic under the candidate's objective (posterior
draws vectorised, EVALUATION_DRAWS per request); in a scored mode the mode's ranking with the Router's
softmax exploration. A candidate that would have sent traffic where the logged policy never did is judged
on that model's logged rewards all the same: the estimate assumes a model's reward does not depend on which
policy sent it the request.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.context import Candidate
from pipeline.objective import RewardConfig
from pipeline.types import ModelInfo
from stages.bandit import Arm, Bandit, token_bucket
from stages.expected_reward import expect
from stages.health import HealthTracker
from stages.learning import SERVED, observations
from stages.scoring import Constraints, ProviderStats, estimate_cost, rank, softmax_probability
from store.reward_queries import LoggedDecision

__all__ = ["CandidatePolicy", "Estimate", "Evaluation", "evaluate"]

Z95 = 1.959964
# Posterior draws per request for the candidate's choice probabilities (unbiased; the noise averages out).
EVALUATION_DRAWS = 256
# Logged propensities below this count as this (importance weights at most 64 times the candidate's
# probability): a few rare choices, whose propensities are also the least certain, would otherwise swamp
# the estimate's variance. The price: a candidate that mostly picks what the log rarely did is underrated.
MIN_PROPENSITY = 1 / 64


@dataclass(frozen=True, slots=True)
class CandidatePolicy:
    mode: str
    objective: RewardConfig


@dataclass(frozen=True, slots=True)
class Estimate:
    value: float
    std_error: float

    @classmethod
    def of(cls, terms: np.ndarray) -> Estimate:
        n = len(terms)
        std_error = float(terms.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
        return cls(float(terms.mean()) if n else math.nan, std_error)

    def as_dict(self) -> dict[str, Any]:
        finite = math.isfinite(self.std_error)
        return {
            "estimate": _round(self.value),
            "std_error": round(self.std_error, 6) if finite else None,
            "ci95": [round(self.value - Z95 * self.std_error, 6), round(self.value + Z95 * self.std_error, 6)]
            if finite
            else None,
        }


@dataclass(frozen=True, slots=True)
class Evaluation:
    policy: CandidatePolicy
    rows: int  # logged requests used
    skipped: int  # logged requests not the policy's choice, or naming models no longer registered
    ips: Estimate
    doubly_robust: Estimate
    effective_sample_size: float
    logged_average: float  # the rewards as logged (under the objective each request had)
    logged_average_candidate_objective: float  # the logged choices, valued under the candidate's objective
    logged_modes: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy": {"mode": self.policy.mode, "reward": self.policy.objective.model_dump()},
            "rows": self.rows,
            "skipped": self.skipped,
            "ips": self.ips.as_dict(),
            "doubly_robust": self.doubly_robust.as_dict(),
            "effective_sample_size": round(self.effective_sample_size, 2),
            "logged": {
                "average_reward": _round(self.logged_average),
                "average_reward_candidate_objective": _round(self.logged_average_candidate_objective),
                "modes": self.logged_modes,
            },
        }


@dataclass(slots=True)
class _Row:
    decision: LoggedDecision
    candidates: list[Candidate]
    action: int  # index of the logged first choice in `candidates`
    reward: float  # under the candidate's objective


def evaluate(
    decisions: Sequence[LoggedDecision],
    policy: CandidatePolicy,
    models: Mapping[str, ModelInfo],
    *,
    half_life: float,
    temperature: float,
    seed: int | None = None,
) -> Evaluation:
    """Estimate `policy`'s average reward on `decisions` (oldest first). CPU-bound: run it off the loop."""
    rows, skipped = _usable(decisions, policy.objective, models)
    if not rows:
        empty = Estimate(math.nan, math.inf)
        return Evaluation(policy, 0, skipped, empty, empty, 0.0, math.nan, math.nan, {})
    replay = _Replay(policy, models, half_life, temperature, seed)
    usable = {id(row.decision): row for row in rows}
    probabilities, fitted_rows, direct_rows = [], [], []
    for d in decisions:  # in time order: the candidate's view of the world as it was at each request
        row = usable.get(id(d))
        if row is not None:
            p = replay.choices(row)
            means = [replay.fitted(c.model.id) for c in row.candidates]
            probabilities.append(p[row.action])
            fitted_rows.append(means[row.action])
            direct_rows.append(float(np.dot(p, means)))
        replay.learn(d, row)
    rewards = np.array([row.reward for row in rows])
    logged = np.maximum([row.decision.propensity for row in rows], MIN_PROPENSITY)
    weights = np.array(probabilities) / logged
    direct, fitted = np.array(direct_rows), np.array(fitted_rows)
    total, squares = float(weights.sum()), float((weights**2).sum())
    modes: dict[str, int] = defaultdict(int)
    for row in rows:
        modes[row.decision.mode] += 1
    return Evaluation(
        policy,
        len(rows),
        skipped,
        Estimate.of(weights * rewards),
        Estimate.of(direct + weights * (rewards - fitted)),
        total * total / squares if squares > 0 else 0.0,
        float(np.mean([row.decision.reward for row in rows])),
        float(rewards.mean()),
        dict(modes),
    )


def _usable(
    decisions: Sequence[LoggedDecision], objective: RewardConfig, models: Mapping[str, ModelInfo]
) -> tuple[list[_Row], int]:
    """The requests the routing policy chose for (a propensity), among models still registered."""
    rows: list[_Row] = []
    skipped = 0
    for d in decisions:
        e = d.evidence
        first = e.attempts.split(", ", 1)[0].rpartition("=")[0] if e.attempts else e.model_id
        ids = [m for m in d.candidates.split(",") if m in models] if d.candidates else []
        if not (math.isfinite(d.propensity) and d.propensity > 0) or first not in ids:
            skipped += 1
            continue
        candidates = [Candidate(models[m], 0.0, estimate_cost(models[m], e.input_tokens)) for m in ids]
        succeeded = bool(e.model_id) and e.status < 400
        quality = e.feedback_score if not math.isnan(e.feedback_score) else e.quality_prior
        if objective.quality_prior is not None and math.isnan(e.feedback_score):
            quality = objective.quality_prior
        reward = objective.reward(succeeded, quality, e.cost_usd, e.latency_ms, e.cost_ref_usd, e.latency_ref_ms)
        rows.append(_Row(d, candidates, ids.index(first), reward))
    return rows, skipped


class _Replay:
    """The log replayed in time order: the providers' health as the live Router would have read it, the
    candidate's bandit (thompson) learning under its objective, and the reward model r̂ (each model's
    recent mean reward as the logged choice, with the bandit's discounting and change detector)."""

    def __init__(
        self,
        policy: CandidatePolicy,
        models: Mapping[str, ModelInfo],
        half_life: float,
        temperature: float,
        seed: int | None,
    ) -> None:
        self._policy = policy
        self._models = models
        self._temperature = temperature
        self._now = 0.0
        self._health = HealthTracker(lambda: self._now)
        self._bandit = Bandit(half_life=half_life, seed=seed)
        self._gamma = 0.5 ** (1.0 / half_life)
        self._seq = 0
        self._fitted: dict[str, Arm] = {}
        self._overall = Arm()

    def stats(self, provider_id: str) -> ProviderStats:
        h = self._health.get(provider_id)
        return ProviderStats(h.avg_latency_ms, h.error_rate)

    def choices(self, row: _Row) -> np.ndarray:
        """P(the candidate policy picks each of the row's candidates)."""
        e = row.decision.evidence
        if self._policy.mode == "thompson":
            bucket = token_bucket(e.input_tokens)
            objective = self._policy.objective
            outlook = expect(row.candidates, self._bandit, bucket, objective, self.stats)
            ids = [c.model.id for c in row.candidates]
            priors = [outlook.expectation(m).reward for m in ids]
            alphas, betas = self._bandit.posteriors(objective, bucket, ids, priors)
            draws = self._bandit.draw(alphas, betas, EVALUATION_DRAWS)
            wins = np.bincount(draws.argmax(axis=1), minlength=len(ids))
            return wins / wins.sum()
        models = [c.model for c in row.candidates]
        ranked = rank(models, Constraints(self._policy.mode, 0, 0, e.input_tokens), self.stats)
        position = {c.model.id: i for i, c in enumerate(ranked)}
        k = len(ranked)
        return np.array([softmax_probability(k, self._temperature, position[m.id]) for m in models])

    def fitted(self, model_id: str) -> float:
        arm = self._fitted.get(model_id)
        if arm is not None and arm.pulls > 1e-9:
            return arm.reward_sum / arm.pulls
        overall = self._overall
        return overall.reward_sum / overall.pulls if overall.pulls > 1e-9 else 0.0

    def learn(self, d: LoggedDecision, row: _Row | None) -> None:
        """What the request taught: health of every provider tried, the bandit, the reward model."""
        e = d.evidence
        self._now = d.timestamp
        for entry in e.attempts.split(", ") if e.attempts else ():
            model, _, outcome = entry.rpartition("=")
            if model in self._models:
                provider = self._models[model].provider_id
                if outcome in SERVED:
                    self._health.success(provider, e.latency_ms)
                else:
                    self._health.error(provider, outcome)
        bucket = token_bucket(e.input_tokens)
        if self._policy.mode == "thompson":
            for obs in observations(e, bucket):
                self._bandit.observe(obs)
        if row is not None:
            self._seq += 1
            arm = self._fitted.setdefault(row.candidates[row.action].model.id, Arm(seen=self._seq))
            for fitted in (arm, self._overall):
                fitted.decay_to(self._seq, self._gamma)
                fitted.add(row.reward)


def _round(value: float) -> float | None:
    return round(value, 6) if math.isfinite(value) else None
