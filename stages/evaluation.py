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

The candidate's choice probabilities: in `thompson` mode, the bandit replayed over the log in time order
(it learns from what was logged, as the live one would have), its posterior draws vectorised; in a scored
mode, the mode's ranking from the window's statistics with the Router's softmax exploration.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.context import Candidate
from pipeline.objective import RewardConfig
from pipeline.types import ModelInfo
from stages.bandit import Bandit, token_bucket
from stages.expected_reward import expect
from stages.learning import observations
from stages.scoring import Constraints, ProviderStats, estimate_cost, rank, softmax_probability
from store.reward_queries import LoggedDecision

__all__ = ["CandidatePolicy", "Estimate", "Evaluation", "evaluate"]

Z95 = 1.959964
EVALUATION_DRAWS = 1024  # posterior draws per request for the candidate's choice probabilities (off the hot path)


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
            "estimate": round(self.value, 6),
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
    stats = _window_stats(decisions, models)
    rows, skipped = _usable(decisions, policy.objective, models)
    if policy.mode == "thompson":
        probabilities = _thompson(decisions, rows, policy.objective, stats, half_life, seed)
    else:
        probabilities = [_scored(row, policy.mode, stats, temperature) for row in rows]
    n = len(rows)
    if not n:
        empty = Estimate(math.nan, math.inf)
        return Evaluation(policy, 0, skipped, empty, empty, 0.0, math.nan, math.nan, {})
    rewards = np.array([row.reward for row in rows])
    logged_p = np.array([row.decision.propensity for row in rows])
    chosen_p = np.array([p[row.action] for p, row in zip(probabilities, rows, strict=True)])
    weights = chosen_p / logged_p
    model_means = _reward_model(rows)
    direct = np.array(
        [
            sum(p[i] * model_means[c.model.id] for i, c in enumerate(row.candidates))
            for p, row in zip(probabilities, rows, strict=True)
        ]
    )
    fitted = np.array([model_means[row.candidates[row.action].model.id] for row in rows])
    total = float(weights.sum())
    squares = float((weights**2).sum())
    modes: dict[str, int] = defaultdict(int)
    for row in rows:
        modes[row.decision.mode] += 1
    return Evaluation(
        policy,
        n,
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


def _window_stats(
    decisions: Sequence[LoggedDecision], models: Mapping[str, ModelInfo]
) -> Callable[[str], ProviderStats]:
    """Per provider over the window: mean latency of its answers and its failure share of attempts (what
    the live Router reads from the providers' health when it ranks)."""
    latency: dict[str, list[float]] = defaultdict(list)
    tried: dict[str, int] = defaultdict(int)
    failed: dict[str, int] = defaultdict(int)
    for d in decisions:
        e = d.evidence
        for entry in e.attempts.split(", ") if e.attempts else ():
            model, _, outcome = entry.rpartition("=")
            if model in models:
                tried[models[model].provider_id] += 1
                failed[models[model].provider_id] += outcome != "ok"
        if e.model_id in models and e.status < 400:
            latency[models[e.model_id].provider_id].append(e.latency_ms)
    stats = {
        p: ProviderStats(float(np.mean(latency[p])) if latency[p] else 0.0, failed[p] / tried[p] if tried[p] else 0.0)
        for p in set(tried) | set(latency)
    }
    unknown = ProviderStats(0.0, 0.0)
    return lambda provider_id: stats.get(provider_id, unknown)


def _scored(row: _Row, mode: str, stats: Callable[[str], ProviderStats], temperature: float) -> np.ndarray:
    e = row.decision.evidence
    models = [c.model for c in row.candidates]
    ranked = rank(models, Constraints(mode, 0, 0, e.input_tokens), stats)
    position = {c.model.id: i for i, c in enumerate(ranked)}
    k = len(ranked)
    return np.array([softmax_probability(k, temperature, position[c.model.id]) for c in row.candidates])


def _thompson(
    decisions: Sequence[LoggedDecision],
    rows: Sequence[_Row],
    objective: RewardConfig,
    stats: Callable[[str], ProviderStats],
    half_life: float,
    seed: int | None,
) -> list[np.ndarray]:
    """Replay a bandit over the whole log in time order; at each usable request, its choice probabilities
    (the share of posterior draws each candidate wins)."""
    bandit = Bandit(half_life=half_life, seed=seed)
    usable = {id(row.decision): row for row in rows}
    out = []
    for d in decisions:
        bucket = token_bucket(d.evidence.input_tokens)
        row = usable.get(id(d))
        if row is not None:
            outlook = expect(row.candidates, bandit, bucket, objective, stats)
            ids = [c.model.id for c in row.candidates]
            alphas, betas = bandit.posteriors(objective, bucket, ids, [outlook.expectation(m).reward for m in ids])
            wins = np.bincount(bandit.draw(alphas, betas, EVALUATION_DRAWS).argmax(axis=1), minlength=len(ids))
            out.append(wins / wins.sum())
        for obs in observations(d.evidence, bucket):
            bandit.observe(obs)
    return out


def _reward_model(rows: Sequence[_Row]) -> dict[str, float]:
    """r̂: each model's mean reward when it was the logged choice; the overall mean for a model never chosen."""
    sums: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        sums[row.candidates[row.action].model.id].append(row.reward)
    overall = float(np.mean([row.reward for row in rows]))
    means: dict[str, float] = defaultdict(lambda: overall)
    means.update({m: float(np.mean(v)) for m, v in sums.items()})
    return means


def _round(value: float) -> float | None:
    return round(value, 6) if math.isfinite(value) else None
