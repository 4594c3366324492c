"""Thompson sampling over (model, token bucket) arms, one set of posteriors per routing objective.

Evidence is discounted per observation, not per second: every observation in a token bucket ages that
bucket's evidence by one step, so an arm's weight halves every `half_life` observations whatever the
traffic rate. On top of that each arm runs a change detector (a two-sided CUSUM on its own rewards, Arm.add):
when its rewards leave their long-run level, the evidence from before the change is dropped and the
posterior re-centres on the rewards since the change began, so a model whose reward drops (a collapse or a
drift of half a standard deviation) is left within a few dozen of its own requests. A model that is no
longer tried sees its old evidence fade as traffic flows elsewhere, so its posterior widens back towards the
prior and it is explored again.

The bandit keeps the last `HORIZON_HALF_LIVES x half_life` observations of each bucket with their raw
terms (success, cost, latency, the candidates' references, quality prior, feedback). An objective's
posteriors are a running fold of those observations under its reward, so a tenant with its own reward
weights learns from all traffic at once, and a new objective starts from the same evidence. `rebuild`
replays the request log (at start-up and periodically), so a restart loses nothing.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.context import Candidate
from pipeline.objective import NEUTRAL_QUALITY, RewardConfig

__all__ = [
    "HORIZON_HALF_LIVES",
    "PRIOR_STRENGTH",
    "PROPENSITY_DRAWS",
    "Arm",
    "Bandit",
    "ModelStats",
    "Observation",
    "thompson_order",
    "token_bucket",
    "win_probability",
]

HORIZON_HALF_LIVES = 10  # evidence older than this many half-lives weighs under 0.1 %: not kept
PRIOR_STRENGTH = 2.0  # pseudo-observations the cold-start prior (the expected reward) is worth
# Posterior draws besides the deciding one, from which P(chosen) is estimated (win_probability: 63² pairs,
# so to about 1/4000). One row is a Beta per candidate, all drawn in one numpy call with the deciding row.
PROPENSITY_DRAWS = 63
VARIANCE_PRIOR_WEIGHT = 2.0  # pseudo-pulls at the Bernoulli variance an arm's observed variance is shrunk by
MIN_VARIANCE = 1e-4  # rewards never look steadier than a standard deviation of 0.01
MAX_CONCENTRATION = 100.0  # an observation counts at most as this many coin flips
# The change detector (Arm.add): a two-sided CUSUM on each arm's own rewards, in units of the arm's standard
# deviation sd (at least MIN_CHANGE_SD). Each reward moves a drop statistic by (mean - reward - k) and a rise
# statistic by (reward - mean - k), floored at 0, where k = CHANGE_SLACK x sd is half the smallest shift worth
# finding, and a deviation counts at most CHANGE_CLIP x sd (one failure among successes is not a collapse).
# A statistic above CHANGE_THRESHOLD x sd is a change: a shift of one sd is found in about 11 of the arm's
# pulls, half an sd in about 35, and an arm whose rewards keep their level is reset about once in 500 pulls
# in the benchmark's worlds (a reset on noise costs a few exploratory requests, not the arm's traffic).
CHANGE_SLACK = 0.25
CHANGE_CLIP = 3.0
CHANGE_THRESHOLD = 8.0
CHANGE_WARMUP = 10.0  # discounted pulls an arm needs before its mean is a reference to test against
MIN_CHANGE_SD = 0.05
MAX_OBJECTIVES = 16  # objectives with live posteriors; the least recently used is dropped (and rebuilt on use)


def token_bucket(input_tokens: int) -> str:
    if input_tokens < 1000:
        return "small"
    return "medium" if input_tokens <= 10_000 else "large"


@dataclass(slots=True)
class Observation:
    """One model tried for one request, with what any objective needs to value it."""

    request_id: str  # "" for a failed attempt (only an answer can be rated)
    model_id: str
    bucket: str
    succeeded: bool
    cost_usd: float
    latency_ms: float
    cost_ref_usd: float  # the request's references for relative terms (pipeline/objective.py)
    latency_ref_ms: float
    prior: float  # the quality prior when it was made (the model's mean feedback then, or 0.5)
    feedback: float = math.nan  # the client's score, once rated
    seq: int = 0  # its place in its bucket's stream of observations
    origin: str = ""  # the replica that made it ("" = this one; stages/shared_bandit.py)

    def quality(self, objective: RewardConfig) -> float:
        if not math.isnan(self.feedback):
            return self.feedback
        return self.prior if objective.quality_prior is None else objective.quality_prior

    def value(self, objective: RewardConfig) -> float:
        return objective.reward(
            self.succeeded,
            self.quality(objective),
            self.cost_usd,
            self.latency_ms,
            self.cost_ref_usd,
            self.latency_ref_ms,
        )


@dataclass(slots=True)
class Arm:
    reward_sum: float = 0.0  # discounted
    square_sum: float = 0.0  # discounted sum of squared rewards: how spread the rewards are
    pulls: float = 0.0  # discounted
    seen: int = 0  # the bucket's observation count when it was last discounted
    # The change detector's two CUSUM statistics (a drop, a rise) and, for each, the rewards since it last
    # left 0: where the change began, and so the evidence kept when it fires (count, sum, sum of squares).
    drop: float = 0.0
    drop_pulls: int = 0
    drop_sum: float = 0.0
    drop_square: float = 0.0
    rise: float = 0.0
    rise_pulls: int = 0
    rise_sum: float = 0.0
    rise_square: float = 0.0

    def decay_to(self, seq: int, gamma: float) -> None:
        if seq > self.seen:
            factor = gamma ** (seq - self.seen)
            self.reward_sum *= factor
            self.square_sum *= factor
            self.pulls *= factor
            self.seen = seq

    def add(self, value: float) -> None:
        """One more reward; when the arm's rewards have left their long-run mean, the evidence from before
        the change goes: the posterior re-centres on the rewards since it began."""
        if self.pulls >= CHANGE_WARMUP:
            mean, sd = self._reference()
            clip = CHANGE_CLIP * sd
            deviation = min(max(value - mean, -clip), clip) - CHANGE_SLACK * sd
            self._track(-deviation - 2 * CHANGE_SLACK * sd, deviation, value, value * value)
        self.reward_sum += value
        self.square_sum += value * value
        self.pulls += 1.0
        self._detect()

    def revise(self, change: float, square_change: float, factor: float) -> None:
        """A past reward changed (feedback); `factor` is how much it still weighs."""
        self.reward_sum = max(self.reward_sum + factor * change, 0.0)
        self.square_sum = max(self.square_sum + factor * square_change, 0.0)
        if self.drop > 0 or self.rise > 0 or self.pulls >= CHANGE_WARMUP:
            clip = CHANGE_CLIP * self._reference()[1]
            shift = factor * min(max(change, -clip), clip)
            self.drop = max(self.drop - shift, 0.0)
            self.rise = max(self.rise + shift, 0.0)
            if self.drop_pulls:
                self.drop_sum += factor * change
                self.drop_square += factor * square_change
            if self.rise_pulls:
                self.rise_sum += factor * change
                self.rise_square += factor * square_change
            self._detect()

    def _reference(self) -> tuple[float, float]:
        """The long-run mean and standard deviation the detector measures rewards against."""
        mean = self.reward_sum / self.pulls if self.pulls > 1e-9 else 0.0
        variance = self.square_sum / self.pulls - mean * mean if self.pulls > 1e-9 else 0.0
        return mean, max(math.sqrt(max(variance, 0.0)), MIN_CHANGE_SD)

    def _track(self, down: float, up: float, value: float, square: float) -> None:
        self.drop = max(self.drop + down, 0.0)
        if self.drop == 0.0:
            self.drop_pulls, self.drop_sum, self.drop_square = 0, 0.0, 0.0
        else:
            self.drop_pulls += 1
            self.drop_sum += value
            self.drop_square += square
        self.rise = max(self.rise + up, 0.0)
        if self.rise == 0.0:
            self.rise_pulls, self.rise_sum, self.rise_square = 0, 0.0, 0.0
        else:
            self.rise_pulls += 1
            self.rise_sum += value
            self.rise_square += square

    def _detect(self) -> None:
        threshold = CHANGE_THRESHOLD * self._reference()[1]
        if self.drop > threshold and self.drop_pulls:
            kept = (self.drop_pulls, self.drop_sum, self.drop_square)
        elif self.rise > threshold and self.rise_pulls:
            kept = (self.rise_pulls, self.rise_sum, self.rise_square)
        else:
            return
        # Keep only the rewards since the change began: the posterior re-centres there, wide, at once.
        self.pulls, self.reward_sum, self.square_sum = float(kept[0]), max(kept[1], 0.0), max(kept[2], 0.0)
        self.drop = self.rise = 0.0
        self.drop_pulls = self.rise_pulls = 0
        self.drop_sum = self.drop_square = self.rise_sum = self.rise_square = 0.0

    def posterior(self, prior: float, factor: float = 1.0) -> tuple[float, float]:
        """(alpha, beta) of the arm's Beta posterior, `factor` being the discount still to apply.

        Rewards are fractions, not coin flips: an arm whose rewards vary less than a coin with the same mean
        would is known better than its pull count says. Its evidence is scaled by kappa = (Bernoulli variance /
        observed variance), clipped to [1, MAX_CONCENTRATION], so the posterior's spread is about the standard
        error of its mean reward; 0/1 rewards give kappa = 1 (the classic Beta-Bernoulli posterior). The observed
        variance is shrunk towards the Bernoulli one by VARIANCE_PRIOR_WEIGHT pseudo-pulls, so a few close
        rewards do not make an arm look certain."""
        m = min(max(prior, 0.01), 0.99)
        s, n, q = self.reward_sum * factor, self.pulls * factor, self.square_sum * factor
        kappa = 1.0
        if n > 1e-9:
            mean = min(max(s / n, 0.0), 1.0)
            coin = mean * (1 - mean)
            spread = (max(q - s * s / n, 0.0) + VARIANCE_PRIOR_WEIGHT * coin) / (n + VARIANCE_PRIOR_WEIGHT)
            kappa = min(max(coin / max(spread, MIN_VARIANCE), 1.0), MAX_CONCENTRATION)
        return PRIOR_STRENGTH * m + kappa * s, PRIOR_STRENGTH * (1 - m) + kappa * max(n - s, 0.0)


@dataclass(slots=True)
class ModelStats:
    """A model's recent record in a bucket, whatever the objective (discounted like the arms): its failure
    share, mean cost and latency of its answers, and mean feedback score — the expected values routing
    compares candidates by and the quality prior of an unrated answer."""

    pulls: float = 0.0
    successes: float = 0.0
    cost_sum: float = 0.0
    latency_sum: float = 0.0
    rated: float = 0.0
    score_sum: float = 0.0
    seen: int = 0

    def decay_to(self, seq: int, gamma: float) -> None:
        if seq > self.seen:
            f = gamma ** (seq - self.seen)
            self.pulls *= f
            self.successes *= f
            self.cost_sum *= f
            self.latency_sum *= f
            self.rated *= f
            self.score_sum *= f
            self.seen = seq

    def add(self, obs: Observation) -> None:
        self.pulls += 1
        if obs.succeeded:
            self.successes += 1
            self.cost_sum += obs.cost_usd
            self.latency_sum += obs.latency_ms
        if not math.isnan(obs.feedback):
            self.rated += 1
            self.score_sum += obs.feedback

    @property
    def failure(self) -> float | None:
        return 1 - self.successes / self.pulls if self.pulls > 1e-9 else None

    @property
    def cost(self) -> float | None:
        return self.cost_sum / self.successes if self.successes > 1e-9 else None

    @property
    def latency(self) -> float | None:
        return self.latency_sum / self.successes if self.successes > 1e-9 else None

    @property
    def mean_score(self) -> float | None:
        return self.score_sum / self.rated if self.rated > 1e-9 else None


Arms = dict[tuple[str, str], Arm]
_NO_EVIDENCE = Arm()


class Bandit:
    def __init__(self, *, half_life: float, seed: int | None = None) -> None:
        self.half_life = half_life  # observations
        self._gamma = 0.5 ** (1.0 / half_life)
        self._horizon = max(1, math.ceil(HORIZON_HALF_LIVES * half_life))
        self._rng = np.random.default_rng(seed)
        self._seq: dict[str, int] = {}
        self._log: dict[str, deque[Observation]] = {}
        self._answers: dict[str, Observation] = {}  # request id -> its answer's observation (for feedback)
        self._stats: dict[tuple[str, str], ModelStats] = {}
        self._views: OrderedDict[RewardConfig, Arms] = OrderedDict()
        self._keeping: list[list[Observation]] = []  # refreshes reading the log now (keep_new)

    @property
    def horizon(self) -> int:
        """Observations kept per bucket (and read back from the log per bucket)."""
        return self._horizon

    def with_seed(self, seed: int | None) -> Bandit:
        """A view on the same evidence with its own sampler: simulations draw without moving the live one."""
        view = Bandit.__new__(Bandit)
        view.__dict__.update(self.__dict__)
        view._rng = np.random.default_rng(seed)
        return view

    # --- learning ------------------------------------------------------------------------------------
    def keep_new(self) -> list[Observation]:
        """Until `stop_keeping`, every observation is also appended to the list returned: a rebuild from the
        request log replays them after the rows it read (stages/learning.py, BanditRefresher)."""
        kept: list[Observation] = []
        self._keeping.append(kept)
        return kept

    def stop_keeping(self, kept: list[Observation]) -> None:
        self._keeping.remove(kept)

    def observe(self, obs: Observation) -> None:
        """Add one observation: the bucket's evidence ages one step, every live objective learns from it."""
        for kept in self._keeping:
            kept.append(obs)
        bucket = obs.bucket
        seq = obs.seq = self._seq.get(bucket, 0) + 1
        self._seq[bucket] = seq
        log = self._log.get(bucket)
        if log is None:  # not setdefault: its default would be built for every observation
            log = self._log[bucket] = deque()
        if len(log) >= self._horizon:
            old = log.popleft()
            if self._answers.get(old.request_id) is old:
                del self._answers[old.request_id]
        log.append(obs)
        if obs.request_id and obs.succeeded:
            self._answers[obs.request_id] = obs
        stats = self._stats.get((obs.model_id, bucket))
        if stats is None:
            stats = self._stats[obs.model_id, bucket] = ModelStats()
        stats.decay_to(seq, self._gamma)
        stats.add(obs)
        for objective, arms in self._views.items():
            _add(arms, obs, obs.value(objective), self._gamma)

    def rate(self, request_id: str, score: float) -> bool:
        """The client scored an answer: its quality term becomes `score` for every objective. False when
        the answer is older than the bandit's horizon (its evidence had faded anyway)."""
        obs = self._answers.get(request_id)
        if obs is None:
            return False
        seq = self._seq[obs.bucket]
        factor = self._gamma ** (seq - obs.seq)
        before = {objective: obs.value(objective) for objective in self._views}
        previous, obs.feedback = obs.feedback, score
        for objective, arms in self._views.items():
            arm = arms.setdefault((obs.model_id, obs.bucket), Arm(seen=seq))
            arm.decay_to(seq, self._gamma)
            new, old = obs.value(objective), before[objective]
            arm.revise(new - old, new * new - old * old, factor)
        stats = self._stats.setdefault((obs.model_id, obs.bucket), ModelStats(seen=seq))
        stats.decay_to(seq, self._gamma)
        if math.isnan(previous):
            stats.rated += factor
            stats.score_sum += factor * score
        else:
            stats.score_sum += factor * (score - previous)
        return True

    def log(self, bucket: str) -> tuple[Observation, ...]:
        """The observations kept for `bucket`, oldest first."""
        return tuple(self._log.get(bucket, ()))

    def buckets(self) -> list[str]:
        return list(self._log)

    def rebuild(self, observations: Iterable[Observation]) -> int:
        """Replace all evidence by `observations` (oldest first); returns how many were used."""
        objectives = list(self._views)
        self._seq, self._log, self._answers, self._stats = {}, {}, {}, {}
        self._views = OrderedDict()
        used = 0
        keeping, self._keeping = self._keeping, []  # a replay is not new: another refresh's list skips it
        try:
            for obs in observations:
                self.observe(obs)
                used += 1
        finally:
            self._keeping = keeping
        for objective in objectives:  # the live objectives, refolded from the new evidence
            self._arms(objective)
        return used

    # --- what routing reads ---------------------------------------------------------------------------
    def stats(self, model_id: str, bucket: str) -> ModelStats | None:
        """The model's recent record (ratios: discounting scales numerator and denominator alike)."""
        return self._stats.get((model_id, bucket))

    def quality_prior(self, model_id: str, bucket: str, objective: RewardConfig) -> float:
        """The quality of an unrated answer: the objective's fixed prior, else the model's mean feedback."""
        return quality_prior(self._stats.get((model_id, bucket)), objective)

    def posteriors(
        self, objective: RewardConfig, bucket: str, model_ids: Sequence[str], priors: Sequence[float]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each model's Beta posterior (Arm.posterior), with its prior mean m worth PRIOR_STRENGTH pulls."""
        arms = self._arms(objective)
        seq = self._seq.get(bucket, 0)
        gamma = self._gamma
        alphas = np.empty(len(model_ids))
        betas = np.empty(len(model_ids))
        for i, (model_id, prior) in enumerate(zip(model_ids, priors, strict=True)):
            arm = arms.get((model_id, bucket))
            if arm is None:
                arm = _NO_EVIDENCE
            alphas[i], betas[i] = arm.posterior(prior, gamma ** (seq - arm.seen) if seq > arm.seen else 1.0)
        return alphas, betas

    def draw(self, alphas: np.ndarray, betas: np.ndarray, rows: int) -> np.ndarray:
        """`rows` independent draws of every posterior: a (rows, models) matrix, in one vectorised call."""
        return self._rng.beta(alphas, betas, size=(rows, len(alphas)))

    def describe(self, objective: RewardConfig) -> list[dict[str, float | str]]:
        """Every arm's posterior under `objective` now (with the neutral prior 0.5), for GET /admin/v1/rewards."""
        out: list[dict[str, float | str]] = []
        for (model_id, bucket), arm in sorted(self._arms(objective).items()):
            arm.decay_to(self._seq.get(bucket, 0), self._gamma)
            alpha, beta = arm.posterior(NEUTRAL_QUALITY)
            out.append(
                {
                    "model_id": model_id,
                    "bucket": bucket,
                    "alpha": round(alpha, 4),
                    "beta": round(beta, 4),
                    "mean": round(alpha / (alpha + beta), 4),
                    "pulls": round(arm.pulls, 3),
                }
            )
        return out

    def _arms(self, objective: RewardConfig) -> Arms:
        arms = self._views.get(objective)
        if arms is not None:
            self._views.move_to_end(objective)
            return arms
        arms = {}
        for log in self._log.values():  # fold the kept evidence under this objective's reward
            for obs in log:
                _add(arms, obs, obs.value(objective), self._gamma)
        self._views[objective] = arms
        if len(self._views) > MAX_OBJECTIVES:
            self._views.popitem(last=False)
        return arms


def _add(arms: Arms, obs: Observation, value: float, gamma: float) -> None:
    arm = arms.get((obs.model_id, obs.bucket))
    if arm is None:
        arm = arms[obs.model_id, obs.bucket] = Arm(seen=obs.seq)
    arm.decay_to(obs.seq, gamma)
    arm.add(value)


def quality_prior(stats: ModelStats | None, objective: RewardConfig) -> float:
    """Bandit.quality_prior from the model's record in the bucket (`Bandit.stats`), when it is already at hand."""
    if objective.quality_prior is not None:
        return objective.quality_prior
    mean = stats.mean_score if stats is not None else None
    return NEUTRAL_QUALITY if mean is None else mean


def thompson_order(
    candidates: Sequence[Candidate],
    bandit: Bandit,
    bucket: str,
    objective: RewardConfig,
    priors: Sequence[float],
) -> tuple[list[Candidate], float]:
    """Candidates by one posterior draw each, highest first (a candidate's score becomes -draw), and the
    propensity of the first (win_probability over PROPENSITY_DRAWS more draws)."""
    alphas, betas = bandit.posteriors(objective, bucket, [c.model.id for c in candidates], priors)
    draws = bandit.draw(alphas, betas, PROPENSITY_DRAWS + 1)
    decide = draws[0]
    ordered = [
        Candidate(c.model, -round(float(d), 6), c.estimated_cost_usd) for c, d in zip(candidates, decide, strict=True)
    ]
    ordered.sort(key=lambda c: (c.score, c.model.id))
    winner = next(i for i, c in enumerate(candidates) if c.model.id == ordered[0].model.id)
    return ordered, win_probability(draws[1:], winner)


def win_probability(draws: np.ndarray, winner: int) -> float:
    """P(column `winner` holds the row's largest draw), from independent rows of posterior draws.

    Every pair (the winner's draw of row i, the best other draw of row j) is an independent sample of the
    contest, so n rows give n² comparisons (a sort and a binary search, not n² work): small probabilities
    are estimated to about 1/n², not 1/n. One pseudo-win keeps a chosen model's propensity above 0.
    Overwrites the winner's column of `draws`."""
    n = len(draws)
    if draws.shape[1] == 1:
        return 1.0
    mine = draws[:, winner].copy()
    draws[:, winner] = -1.0  # draws lie in [0, 1]: the best of the others is now the row's maximum
    others = draws.max(axis=1)
    others.sort()
    wins = int(np.searchsorted(others, mine).sum())
    return (wins + 1) / (n * n + 1)
