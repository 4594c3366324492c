"""Counterfactual evaluation: what a candidate routing policy would have earned on the logged traffic.

Every routed request logs the propensity of its first choice (the probability the live policy had of picking
that model), its eligible candidates and the raw terms of its reward. For a candidate policy (a mode and a
reward objective) this module computes, for each logged request, the probability the candidate would have
picked each eligible model, and from those:

- inverse propensity scoring, self-normalised: Σ w·r / Σ w with w = π(a|x) / p(a|x), consistent when
  every model the candidate picks had a non-zero logged propensity (dividing by Σ w rather than the
  request count cancels the error of the weights' own average);
- doubly robust: mean of Σ_m π(m|x) r̂(m) + π(a|x) / p(a|x) · (r - r̂(a)), with r̂ each model's mean reward in
  the window (lower variance; unbiased if either the propensities or r̂ are right);

each with a 95 % normal confidence interval (1.96 standard errors of the per-request terms) for the
candidate's expected average, a 95 % prediction interval for what one run of it over as many requests would
average (see Estimate), and the effective sample size (Σw)² / Σw² of the importance weights w = π / p.
Rewards are valued under the candidate's objective, so a change of weights is evaluated on the same traffic.

The log is replayed in time order, REPLAYS times, so the candidate sees the world as it was at each request:
the providers' health rebuilt from the logged attempts as the live tracker would have (a model whose circuit
breaker the replayed traffic opened is skipped); in `thompson` mode a bandit learning under the candidate's
objective (posterior draws vectorised, EVALUATION_DRAWS per request); in a scored mode the mode's ranking
with the Router's softmax exploration. The candidate learns from its own picks (_Replay). A candidate that
would have sent traffic where the logged policy never did is judged on that model's logged rewards all the
same: the estimate assumes a model's reward does not depend on which policy sent it the request.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict, deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pipeline.context import Candidate
from pipeline.objective import RewardConfig
from pipeline.types import ModelInfo
from stages.bandit import Arm, Bandit, Observation, token_bucket
from stages.expected_reward import expect
from stages.health import HealthTracker
from stages.learning import SERVED, observations
from stages.scoring import Constraints, ProviderStats, estimate_cost, rank, softmax_probability
from store.reward_queries import Evidence, LoggedDecision

__all__ = ["CandidatePolicy", "Estimate", "Evaluation", "evaluate"]

Z95 = 1.959964
# Posterior draws per request for the candidate's choice probabilities (unbiased; the noise averages out).
EVALUATION_DRAWS = 256
# Logged propensities below this count as this (importance weights at most 64 times the candidate's
# probability): a few rare choices, whose propensities are also the least certain, would otherwise swamp
# the estimate's variance. The price: a candidate that mostly picks what the log rarely did is underrated.
MIN_PROPENSITY = 1 / 64
# Replays of the log per evaluation, each with its own draws and picks (see Estimate).
REPLAYS = 4
RESAMPLE_POOL = 32  # a model's latest logged outcomes, resampled when the replayed candidate picks it


@dataclass(frozen=True, slots=True)
class CandidatePolicy:
    mode: str
    objective: RewardConfig


@dataclass(frozen=True, slots=True)
class Estimate:
    """An estimate of the candidate's average reward per request on the logged traffic.

    `ci95` is for that expectation: the estimate ± 1.96 standard errors of the per-request terms.
    `prediction95` is for what one run of the candidate over as many requests would average, which is what
    one compares with when the candidate is then switched on: it adds the run's own noise (the candidate's
    reward spread over `rows` requests) and, for a learning policy, the spread between replays with different
    draws (how much its own learning path moves its average)."""

    value: float
    std_error: float
    replay_spread: float = 0.0  # standard deviation of the estimate between independent replays
    run_std_error: float = 0.0  # standard deviation of one run's average: reward spread / sqrt(rows)

    @classmethod
    def of(cls, terms: np.ndarray, replays: Sequence[float] = (), run_std_error: float = 0.0) -> Estimate:
        n = len(terms)
        std_error = float(terms.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
        spread = float(np.std(replays, ddof=1)) if len(replays) > 1 else 0.0
        return cls(float(terms.mean()) if n else math.nan, std_error, spread, run_std_error)

    @property
    def prediction_error(self) -> float:
        return math.sqrt(self.std_error**2 + self.replay_spread**2 + self.run_std_error**2)

    def as_dict(self) -> dict[str, Any]:
        finite = math.isfinite(self.std_error)
        return {
            "estimate": _round(self.value),
            "std_error": round(self.std_error, 6) if finite else None,
            "ci95": _interval(self.value, self.std_error) if finite else None,
            "replay_spread": round(self.replay_spread, 6) if finite else None,
            "prediction95": _interval(self.value, self.prediction_error) if finite else None,
        }


def _interval(value: float, error: float) -> list[float]:
    return [round(value - Z95 * error, 6), round(value + Z95 * error, 6)]


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
            # A scored mode ranks by health statistics its own traffic would have produced; the replay can
            # only approximate them from the log, and the benchmark finds its intervals often miss the run.
            "approximate": self.policy.mode != "thompson",
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
    rewards = np.array([row.reward for row in rows])
    logged = np.maximum([row.decision.propensity for row in rows], MIN_PROPENSITY)
    # The replay is random (the candidate's draws and picks): it runs REPLAYS times with their own seeds; the
    # estimate averages them, and their spread says how much the candidate's own path moves its average.
    seeds = [None if seed is None else seed + 7919 * i for i in range(REPLAYS)]
    replays = [
        _replay(decisions, rows, policy, models, half_life, temperature, s, with_log=i % 2 == 1)
        for i, s in enumerate(seeds)
    ]
    probabilities = np.mean([p for p, _, _ in replays], axis=0)
    direct = np.mean([d for _, d, _ in replays], axis=0)
    fitted = np.mean([f for _, _, f in replays], axis=0)
    weights = probabilities / logged
    ips_each = [_self_normalised(p / logged, rewards) for p, _, _ in replays]
    dr_each = [float(np.mean(d + p / logged * (rewards - f))) for p, d, f in replays]
    total, squares = float(weights.sum()), float((weights**2).sum())
    # One run's average varies by the candidate's reward spread over as many requests (self-normalised IPS).
    mean = float((weights * rewards).sum() / total) if total > 0 else 0.0
    spread = float((weights * (rewards - mean) ** 2).sum() / total) if total > 0 else 0.0
    run_error = math.sqrt(spread / len(rows))
    modes: dict[str, int] = defaultdict(int)
    for row in rows:
        modes[row.decision.mode] += 1
    return Evaluation(
        policy,
        len(rows),
        skipped,
        Estimate.of(_self_normalised_terms(weights, rewards), ips_each, run_error),
        Estimate.of(direct + weights * (rewards - fitted), dr_each, run_error),
        total * total / squares if squares > 0 else 0.0,
        float(np.mean([row.decision.reward for row in rows])),
        float(rewards.mean()),
        dict(modes),
    )


def _self_normalised(weights: np.ndarray, rewards: np.ndarray) -> float:
    total = float(weights.sum())
    return float((weights * rewards).sum() / total) if total > 0 else 0.0


def _self_normalised_terms(weights: np.ndarray, rewards: np.ndarray) -> np.ndarray:
    """Per-request terms whose mean is the self-normalised IPS estimate Σ w·r / Σ w and whose spread gives its
    (delta-method) standard error: dividing by the weights' own sum instead of the request count removes
    the error of their average (an unbiased estimate of 1 that clipping and estimated propensities move)."""
    value = _self_normalised(weights, rewards)
    scale = len(weights) / float(weights.sum()) if weights.sum() > 0 else 0.0
    return value + scale * weights * (rewards - value)


def _replay(
    decisions: Sequence[LoggedDecision],
    rows: list[_Row],
    policy: CandidatePolicy,
    models: Mapping[str, ModelInfo],
    half_life: float,
    temperature: float,
    seed: int | None,
    *,
    with_log: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One replay of the log: per usable row, π(logged choice), Σ π·r̂ and r̂(logged choice)."""
    replay = _Replay(policy, models, half_life, temperature, seed, with_log=with_log)
    usable = {id(row.decision): row for row in rows}
    probabilities, direct, fitted = [], [], []
    for d in decisions:  # in time order: the candidate's view of the world as it was at each request
        row = usable.get(id(d))
        if row is not None:
            p = replay.choices(row)
            means = [replay.fitted(c.model.id) for c in row.candidates]
            probabilities.append(p[row.action])
            fitted.append(means[row.action])
            direct.append(float(np.dot(p, means)))
            replay.learn(d, row, replay.pick(p))
        else:
            replay.learn(d, row, None)
    return np.array(probabilities), np.array(direct), np.array(fitted)


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
    recent mean reward as the logged choice, with the bandit's discounting and change detector).

    The candidate learns from its own picks, drawn from its probabilities: the logged outcome when it picks
    the logged model, else an outcome of its pick resampled from that model's latest logged ones. Learning
    only from the logged traffic would show it the logged policy's favourites and never its own (a model it
    would have tried once and dropped would stay at its prior, explored at every replayed request). How much
    it would have learnt is bracketed: `with_log` replays also learn every logged outcome (more than it
    would have seen: optimistic when the log explored more than it would), the others only their own picks
    (whose resampled outcomes go stale when the log seldom tried the model: pessimistic). Their spread is
    part of the prediction interval (Estimate)."""

    def __init__(
        self,
        policy: CandidatePolicy,
        models: Mapping[str, ModelInfo],
        half_life: float,
        temperature: float,
        seed: int | None,
        *,
        with_log: bool,
    ) -> None:
        self._policy = policy
        self._with_log = with_log
        self._models = models
        self._temperature = temperature
        self._now = 0.0
        self._health = HealthTracker(lambda: self._now)
        self._bandit = Bandit(half_life=half_life, seed=seed)
        self._gamma = 0.5 ** (1.0 / half_life)
        self._seq = 0
        self._fitted: dict[str, Arm] = {}
        self._overall = Arm()
        self._rng = random.Random(seed)
        self._pool: dict[str, deque[tuple[str, Observation]]] = {}

    def stats(self, provider_id: str) -> ProviderStats:
        h = self._health.get(provider_id)
        return ProviderStats(h.avg_latency_ms, h.error_rate)

    def choices(self, row: _Row) -> np.ndarray:
        """P(the candidate policy picks each of the row's candidates). A candidate whose circuit breaker the
        replayed traffic has opened is skipped, as the live Router would (unless that leaves none)."""
        e = row.decision.evidence
        allowed = [c for c in row.candidates if self._health.unavailable_reason(c.model.provider_id) != "health_down"]
        allowed = allowed or row.candidates
        out = np.zeros(len(row.candidates))
        index = {c.model.id: i for i, c in enumerate(row.candidates)}
        if self._policy.mode == "thompson":
            bucket = token_bucket(e.input_tokens)
            objective = self._policy.objective
            outlook = expect(allowed, self._bandit, bucket, objective, self.stats)
            ids = [c.model.id for c in allowed]
            priors = [outlook.expectation(m).reward for m in ids]
            alphas, betas = self._bandit.posteriors(objective, bucket, ids, priors)
            draws = self._bandit.draw(alphas, betas, EVALUATION_DRAWS)
            wins = np.bincount(draws.argmax(axis=1), minlength=len(ids))
            out[[index[m] for m in ids]] = wins / wins.sum()
            return out
        models = [c.model for c in allowed]
        ranked = rank(models, Constraints(self._policy.mode, 0, 0, e.input_tokens), self.stats)
        k = len(ranked)
        for position, c in enumerate(ranked):
            out[index[c.model.id]] = softmax_probability(k, self._temperature, position)
        return out

    def fitted(self, model_id: str) -> float:
        arm = self._fitted.get(model_id)
        if arm is not None and arm.pulls > 1e-9:
            return arm.reward_sum / arm.pulls
        overall = self._overall
        return overall.reward_sum / overall.pulls if overall.pulls > 1e-9 else 0.0

    def pick(self, probabilities: np.ndarray) -> int:
        """The candidate's own choice for this request, drawn from its probabilities."""
        cumulative = np.cumsum(probabilities)
        return min(int(np.searchsorted(cumulative, self._rng.random() * cumulative[-1])), len(cumulative) - 1)

    def learn(self, d: LoggedDecision, row: _Row | None, choice: int | None) -> None:
        """What the request taught: the providers' health and the candidate's bandit (see the class: the
        candidate's own pick `choice`, and the logged outcome when it is the logged model or `with_log`),
        and the reward model r̂ (the logged outcome, always)."""
        e = d.evidence
        self._now = d.timestamp
        bucket = token_bucket(e.input_tokens)
        taught = list(self._outcomes(e, bucket))
        for model, outcome, obs in taught:
            self._pool.setdefault(model, deque(maxlen=RESAMPLE_POOL)).append((outcome, obs))
        if row is not None and choice is not None and choice != row.action:
            model = row.candidates[choice].model.id
            pool = self._pool.get(model)
            if not self._with_log:
                taught = []
            if pool:  # else the log never saw the model: nothing to learn from
                taught.append((model, *pool[self._rng.randrange(len(pool))]))
        for model, outcome, obs in taught:
            provider = self._models[model].provider_id
            if outcome in SERVED:
                self._health.success(provider, obs.latency_ms)
            else:
                self._health.error(provider, outcome)
            if self._policy.mode == "thompson":
                self._bandit.observe(replace(obs, request_id=""))
        if row is not None:
            self._seq += 1
            arm = self._fitted.setdefault(row.candidates[row.action].model.id, Arm(seen=self._seq))
            for fitted in (arm, self._overall):
                fitted.decay_to(self._seq, self._gamma)
                fitted.add(row.reward)

    def _outcomes(self, e: Evidence, bucket: str) -> Iterator[tuple[str, str, Observation]]:
        """(model, attempt outcome, observation) for each registered model the logged request tried."""
        obs = list(observations(e, bucket))
        failed = {o.model_id: o for o in obs if not o.succeeded}
        served = next((o for o in obs if o.succeeded), None)
        for entry in e.attempts.split(", ") if e.attempts else ():
            model, _, outcome = entry.rpartition("=")
            if model not in self._models:
                continue
            if outcome in SERVED and served is not None and served.model_id == model:
                yield model, outcome, served
            elif outcome not in SERVED and model in failed:
                yield model, outcome, failed[model]


def _round(value: float) -> float | None:
    return round(value, 6) if math.isfinite(value) else None
