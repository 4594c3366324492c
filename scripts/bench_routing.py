"""Routing evaluation (issue 15): how much of the oracle's reward each policy earns over many random worlds,
how fast it leaves a model that degrades, and whether counterfactual evaluation predicts a policy's reward
before it is run.

A world is a set of fake models with a price, a latency, a failure rate and a hidden answer quality, and a
client utility (weights of quality, cost and latency, and the scales it judges cost and latency by). The
first world is the one the earlier benchmark used (four models; half quality, a quarter cost, a quarter
latency); the others are drawn at random from `--seed`. Halfway through each run one model degrades: the
best one, by failures, latency or quality in turn (a world's kind is its index modulo three).

Each policy runs the real routing code in-process: the Router (eligibility, ranking, Thompson sampling with
its propensity, softmax exploration), the health tracker, the learning sink's reward and observations, and
feedback's reward revision. The world answers instead of a provider (no network, simulated time), so a
world of thousands of requests takes a second. TokenHub's reward is configured to the world's utility
(PUT /routing-config's `reward`); a policy's score is the world's utility of what it served, with the
true quality. Policies:

  normal             scored routing (ignores quality)            thompson           the bandit, no feedback
  thompson+feedback  the bandit, every answer rated (true quality ± 0.1, as a client's rater would)
  random             a uniformly random model                    oracle             the best model in expectation

skill = (policy - random) / (oracle - random); ratio = policy / oracle. Requests-to-shift: requests after
the degradation until the degraded model has at most 20 % of the last 50 answers ("n/a" when it is still
the best model after its shift), counted over every world where it stopped being best and, for the target,
over those where the new best leads it by MIN_SHIFT_GAP or more. Evaluation: POST /routing/evaluate's
estimators (stages/evaluation.py) for `thompson` with the world's reward on the default-reward run's log, and
for `normal` on the thompson+feedback log; then that policy's actual average reward (as TokenHub logs it)
is checked against the estimate's 95 % confidence interval and its 95 % prediction interval (one run's).

    make bench-routing                  # 24 random worlds + the current one, 3000 requests each
    python scripts/bench_routing.py --quick
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from pipeline.context import Attempt, Policy, RequestContext  # noqa: E402
from pipeline.errors import UpstreamFailed  # noqa: E402
from pipeline.metrics import Metrics  # noqa: E402
from pipeline.objective import RewardConfig  # noqa: E402
from pipeline.settings import load_settings  # noqa: E402
from pipeline.types import ChatRequest, Message, ModelInfo, RequestRecord  # noqa: E402
from stages.bandit import PROPENSITY_DRAWS, Bandit  # noqa: E402
from stages.evaluation import CandidatePolicy, evaluate  # noqa: E402
from stages.health import HealthTracker  # noqa: E402
from stages.learning import RecentRequests, learn, rated_reward  # noqa: E402
from stages.router import Router  # noqa: E402
from stages.routing_table import RoutingTable  # noqa: E402
from store.config_store import ConfigSnapshot, RoutingDefaults  # noqa: E402
from store.reward_queries import Evidence, LoggedDecision  # noqa: E402

INPUT_TOKENS = 300
OUTPUT_TOKENS = 500
SECONDS_PER_REQUEST = 0.05  # simulated time between requests (20 req/s): only the breaker's cooldown reads it
# "default reward": thompson+feedback with TokenHub's default objective instead of the world's utility
POLICIES = ("normal", "thompson", "thompson+feedback", "default reward")
SHIFTS = ("failure", "latency", "quality")
# A shift the target counts: the new best model leads the degraded one by this much in expected utility. A
# smaller lead is within the noise of the rewards that would tell them apart in the measure's 100 requests
# (and staying costs at most the lead); both counts are reported (docs/benchmark.md, Routing evaluation).
MIN_SHIFT_GAP = 0.05


@dataclass
class Model:
    name: str
    price_per_1k: float
    latency_ms: float
    failure: float
    quality: float

    @property
    def cost_usd(self) -> float:
        return (INPUT_TOKENS + OUTPUT_TOKENS) / 1000 * self.price_per_1k


@dataclass
class World:
    name: str
    models: list[Model]
    utility: RewardConfig  # with scales: the client's own judgement of cost and latency
    shift: str

    def expected(self, m: Model) -> float:
        """Expected utility of one request to `m` (latency jitters uniformly by ±20 %)."""
        grid = [m.latency_ms * (0.8 + 0.4 * (i + 0.5) / 40) for i in range(40)]
        u = self.utility
        latency = statistics.fmean(1 - min(x / (u.latency_scale_ms or 1), 1) for x in grid)
        cost = 1 - min(m.cost_usd / (u.cost_scale_usd or 1), 1)
        return (1 - m.failure) * (u.quality * m.quality + u.cost * cost + u.latency * latency)

    def best(self) -> Model:
        return max(self.models, key=self.expected)

    def degraded(self) -> World:
        """The world after its shift: the best model fails, slows down or answers worse."""
        target = self.best()
        changed = {
            "failure": {"failure": 0.6},
            "latency": {"latency_ms": target.latency_ms * 6},
            "quality": {"quality": target.quality * 0.25},
        }[self.shift]
        models = [replace(m, **changed) if m is target else m for m in self.models]
        return World(self.name, models, self.utility, self.shift)


def current_world() -> World:
    """The earlier benchmark's four providers, the issue's utility, the best model failing halfway."""
    return World(
        "current",
        [
            Model("swift-mini", 0.002, 60, 0.02, 0.45),
            Model("sage-large", 0.06, 450, 0.01, 0.95),
            Model("steady-pro", 0.004, 120, 0.02, 0.9),
            Model("flaky-fast", 0.002, 90, 0.3, 0.75),
        ],
        RewardConfig(quality=0.5, cost=0.25, latency=0.25, cost_scale_usd=0.01, latency_scale_ms=1000),
        "failure",
    )


def random_world(index: int, rng: random.Random) -> World:
    models = [
        Model(
            f"m{j}",
            price_per_1k=math.exp(rng.uniform(math.log(0.0002), math.log(0.06))),
            latency_ms=math.exp(rng.uniform(math.log(80), math.log(4000))),
            failure=rng.choice([rng.uniform(0, 0.05), rng.uniform(0, 0.3)]),
            quality=rng.uniform(0.3, 0.95),
        )
        for j in range(rng.randint(3, 7))
    ]
    costs = sorted(m.cost_usd for m in models)
    latencies = sorted(m.latency_ms for m in models)
    utility = RewardConfig(
        quality=rng.uniform(0.05, 1),
        cost=rng.uniform(0.05, 1),
        latency=rng.uniform(0.05, 1),
        cost_scale_usd=round(rng.uniform(costs[len(costs) // 2], costs[-1] * 1.5), 8),
        latency_scale_ms=round(rng.uniform(latencies[len(latencies) // 2], latencies[-1] * 1.5), 1),
    )
    return World(f"w{index:02d}", models, utility, SHIFTS[index % 3])


class Gateway:
    """TokenHub's routing core for one run: Router, health, bandit and learning, with the world as provider."""

    def __init__(self, world: World, seed: int, half_life: float | None, reward: RewardConfig | None) -> None:
        self.clock = 0.0
        overrides = {"bandit_half_life_requests": half_life} if half_life else {}
        settings = load_settings({}, bandit_seed=seed, **overrides)
        models = {
            m.name: ModelInfo(
                id=m.name, provider_id=m.name, weight=5, input_per_1k=m.price_per_1k, output_per_1k=m.price_per_1k
            )
            for m in world.models
        }
        snapshot = ConfigSnapshot(1, {}, models, RoutingDefaults(reward=reward), {}, {}, {})
        table = RoutingTable(snapshot, snapshot, {}, MappingProxyType(dict.fromkeys(models)), {})  # type: ignore[arg-type]
        self.health = HealthTracker(lambda: self.clock)
        self.bandit = Bandit(half_life=settings.bandit_half_life_requests, seed=seed)
        self.recent = RecentRequests()
        self.router = Router(
            lambda: table,
            health=self.health,
            bandit=self.bandit,
            settings=settings,
            metrics=Metrics(),
            rng=random.Random(seed),
        )
        self.records: list[RequestRecord] = []
        self.decide_secs = 0.0

    def serve(self, mode: str, world: World, rng: random.Random, *, feedback: bool) -> tuple[str, float]:
        """One request: route it, let the world answer, learn, rate it. Returns (model, utility)."""
        self.clock += SECONDS_PER_REQUEST
        request = ChatRequest(messages=[Message("user", "x")], estimated_input_tokens=INPUT_TOKENS)
        started = time.perf_counter()
        decision = self.router.decide(request, Policy(mode=mode))
        self.decide_secs += time.perf_counter() - started
        first = decision.candidates[0]
        model = next(m for m in world.models if m.name == first.model.id)
        latency = model.latency_ms * rng.uniform(0.8, 1.2)
        ok = rng.random() >= model.failure
        ctx = RequestContext(request_id=f"r{len(self.records)}", scope="chat", client_ip="", request=request)
        ctx.decision = decision
        ctx.attempts = [Attempt(model.name, model.name, "" if ok else "transient", "", latency)]
        if ok:
            self.health.success(model.name, latency)
            ctx.served_by = first
        else:
            self.health.error(model.name, "transient")
            ctx.error = UpstreamFailed("the world failed it", error_class="transient")
        record = _record(ctx, model, ok, latency, self.clock)
        learn(self.bandit, self.recent, ctx, record)
        self.records.append(record)
        if feedback and ok:
            score = min(max(model.quality + rng.uniform(-0.1, 0.1), 0.0), 1.0)
            record.reward = rated_reward(record.reward, record.quality_prior, record.quality_weight, math.nan, score)
            record.feedback_score = score
            self.bandit.rate(record.request_id, score)
        utility = world.utility.reward(ok, model.quality, model.cost_usd if ok else 0.0, latency, 0.0, 0.0)
        return model.name, utility


def _record(ctx: RequestContext, model: Model, ok: bool, latency: float, at: float) -> RequestRecord:
    return RequestRecord(
        timestamp=at,
        request_id=ctx.request_id,
        tenant_id="default",
        api_key_id="bench",
        endpoint="chat",
        mode=ctx.decision.mode if ctx.decision else "",
        model_id=model.name if ok else "",
        provider_id=model.name if ok else "",
        status=200 if ok else 502,
        error_class="" if ok else "transient",
        error_message="",
        input_tokens=INPUT_TOKENS if ok else 0,
        output_tokens=OUTPUT_TOKENS if ok else 0,
        cost_usd=model.cost_usd if ok else 0.0,
        latency_ms=latency,
        escalations=0,
        routing_reason="",
    )


def logged(records: list[RequestRecord]) -> list[LoggedDecision]:
    """The request log's rows as POST /routing/evaluate reads them (store/reward_queries.py)."""
    return [
        LoggedDecision(
            Evidence(
                r.request_id,
                r.model_id,
                r.input_tokens,
                r.status,
                r.cost_usd,
                r.latency_ms,
                r.cost_ref_usd,
                r.latency_ref_ms,
                r.quality_prior,
                r.feedback_score,
                r.attempts,
            ),
            r.timestamp,
            r.mode,
            r.reward,
            r.propensity,
            r.candidates,
            r.quality_weight,
        )
        for r in records
    ]


def moved_away(served: list[str], model: str, start: int, window: int = 50, share: float = 0.2) -> int | None:
    """Requests after `start` until `model`'s share of the last `window` answers is at most `share`."""
    for end in range(start + window, len(served) + 1):
        if served[end - window : end].count(model) / window <= share:
            return end - start
    return None


@dataclass
class Outcome:
    world: World
    averages: dict[str, float]
    moved: dict[str, int | str | None]
    evaluation: dict[str, dict[str, Any]]
    decide_us: dict[str, float]
    candidates: int
    gap: float  # after the shift: the best model's expected utility minus the degraded one's

    def skill(self, policy: str) -> float:
        a = self.averages
        return (a[policy] - a["random"]) / (a["oracle"] - a["random"])

    def ratio(self, policy: str) -> float:
        return self.averages[policy] / self.averages["oracle"]


def run_world(world: World, requests: int, seed: int, half_life: float | None = None) -> Outcome:
    half = requests // 2
    after = world.degraded()
    target = world.best().name
    still_best = after.best().name == target
    averages: dict[str, float] = {}
    moved: dict[str, int | str | None] = {}
    decide_us: dict[str, float] = {}
    runs: dict[str, Gateway] = {}
    for policy in POLICIES:
        gateway = Gateway(world, seed, half_life, None if policy == "default reward" else world.utility)
        rng = random.Random(seed * 7919 + 1)
        served, total = [], 0.0
        for i in range(requests):
            model, utility = gateway.serve(
                "normal" if policy == "normal" else "thompson",
                world if i < half else after,
                rng,
                feedback=policy != "thompson",
            )
            served.append(model)
            total += utility
        averages[policy] = total / requests
        moved[policy] = "n/a" if still_best else moved_away(served, target, half)
        decide_us[policy] = gateway.decide_secs / requests * 1e6
        runs[policy] = gateway
    rng = random.Random(seed * 7919 + 2)
    for name, pick in (("random", lambda w: rng.choice(w.models)), ("oracle", World.best)):
        total = 0.0
        for i in range(requests):
            w = world if i < half else after
            m: Model = pick(w)  # type: ignore[operator]
            ok = rng.random() >= m.failure
            total += w.utility.reward(ok, m.quality, m.cost_usd, m.latency_ms * rng.uniform(0.8, 1.2), 0.0, 0.0)
        averages[name] = total / requests
    gap = after.expected(after.best()) - after.expected(next(m for m in after.models if m.name == target))
    evaluations = {
        # the bandit with the world's reward, estimated from the log of the bandit with the default reward
        "thompson": _evaluation(world, runs["default reward"], runs["thompson+feedback"], "thompson", seed),
        # scored routing, estimated from the log of the bandit with the world's reward
        "normal": _evaluation(world, runs["thompson+feedback"], runs["normal"], "normal", seed),
    }
    return Outcome(world, averages, moved, evaluations, decide_us, len(world.models), gap)


def _evaluation(world: World, logging: Gateway, actual: Gateway, mode: str, seed: int) -> dict[str, Any]:
    """POST /routing/evaluate's estimate of `mode` with the world's reward on `logging`'s request log,
    beside the average reward `actual` (that policy, run) logged."""
    models = logging.router._table().snapshot.models
    result = evaluate(
        logged(logging.records),
        CandidatePolicy(mode, world.utility),
        models,
        half_life=logging.bandit.half_life,
        temperature=logging.router.temperature,
        seed=seed,
    )
    out = result.as_dict()
    out["actual"] = statistics.fmean(r.reward for r in actual.records)
    for name in ("ips", "doubly_robust"):
        e = out[name]
        e["covers"] = e["ci95"] is not None and e["ci95"][0] <= out["actual"] <= e["ci95"][1]
        # the interval for one run's average (its own noise and the learning path's spread included)
        e["predicts"] = e["prediction95"] is not None and e["prediction95"][0] <= out["actual"] <= e["prediction95"][1]
    return out


def _fmt_moved(value: int | str | None) -> str:
    return "never" if value is None else str(value)


def _fmt_eval(e: dict[str, Any]) -> str:
    dr, ips = e["doubly_robust"], e["ips"]
    return (
        f"{e['actual']:.3f} DR {dr['estimate']:.3f} [{dr['prediction95'][0]:.3f},{dr['prediction95'][1]:.3f}]"
        f" {'in ' if dr['predicts'] else 'OUT'}"
        f" IPS {ips['estimate']:.3f} [{ips['prediction95'][0]:.3f},{ips['prediction95'][1]:.3f}]"
        f" {'in ' if ips['predicts'] else 'OUT'} ESS {e['effective_sample_size']:4.0f}"
    )


def _shift_summary(outcomes: list[Outcome]) -> str:
    moved = [o.moved["thompson+feedback"] for o in outcomes]
    numbers = [m for m in moved if isinstance(m, int)]
    within = sum(m <= 150 for m in numbers)
    if not numbers:
        return f"within 150: 0/{len(moved)}"
    return f"median {statistics.median(numbers)}, worst {max(numbers)}, within 150: {within}/{len(moved)}"


def report(outcomes: list[Outcome], elapsed: float) -> bool:
    print("ratio = policy / oracle (skill = (policy - random) / (oracle - random)); shift: requests until the")
    print("degraded model has <= 20 % of the last 50 answers, thompson+feedback / thompson, and the expected-utility")
    print("gap between the new best model and the degraded one; evaluation: actual average reward of the policy")
    print("run, then the 95 % CIs estimated beforehand from another policy's log (see the module docstring)\n")
    print(
        f"{'world':7} {'K':>2} {'shift':8} {'q/c/l weights':14} {'oracle':>6} {'random':>6} "
        + " ".join(f"{p:>17}" for p in POLICIES)
        + f"  {'shift tf/t (gap)':>18}   evaluate thompson (world reward) from default-reward log"
        + " | evaluate normal from thompson+feedback log"
    )
    for o in outcomes:
        u = o.world.utility
        cells = " ".join(f"{o.ratio(p):7.1%} ({o.skill(p):+5.2f})" for p in POLICIES)
        shift = f"{_fmt_moved(o.moved['thompson+feedback'])}/{_fmt_moved(o.moved['thompson'])} ({o.gap:.2f})"
        print(
            f"{o.world.name:7} {o.candidates:2d} {o.world.shift:8} {u.quality:.2f}/{u.cost:.2f}/{u.latency:.2f} "
            f"  {o.averages['oracle']:6.3f} {o.averages['random']:6.3f} {cells}  {shift:>18}"
            f"   {_fmt_eval(o.evaluation['thompson'])} | {_fmt_eval(o.evaluation['normal'])}"
        )
    print()
    for p in POLICIES:
        ratios = [o.ratio(p) for o in outcomes]
        skills = [o.skill(p) for o in outcomes]
        print(
            f"{p:17}  ratio mean {statistics.fmean(ratios):6.1%}  worst {min(ratios):6.1%}"
            f"   skill mean {statistics.fmean(skills):+.2f}  worst {min(skills):+.2f}"
            f"   Router.decide {statistics.fmean(o.decide_us[p] for o in outcomes):5.0f} us/request"
        )
    shifted = [o for o in outcomes if o.moved["thompson+feedback"] != "n/a"]
    clear = [o for o in shifted if o.gap >= MIN_SHIFT_GAP]
    print(
        f"requests to shift (thompson+feedback, {len(shifted)} worlds whose degraded model stopped being best):"
        f" {_shift_summary(shifted)}; the {len(clear)} where the new best leads by >= {MIN_SHIFT_GAP}:"
        f" {_shift_summary(clear)}"
    )
    coverage = {}
    for mode in ("thompson", "normal"):
        e = [o.evaluation[mode] for o in outcomes]
        n = len(outcomes)
        counts = {
            (name, kind): sum(x[name][kind] for x in e)
            for name in ("doubly_robust", "ips")
            for kind in ("covers", "predicts")
        }
        coverage[mode] = counts
        print(
            f"evaluation of {mode}: actual average within the estimate's 95 % CI (of the expected average):"
            f" doubly robust {counts['doubly_robust', 'covers']}/{n}, IPS {counts['ips', 'covers']}/{n};"
            f" within its 95 % prediction interval (of one run's average): doubly robust"
            f" {counts['doubly_robust', 'predicts']}/{n}, IPS {counts['ips', 'predicts']}/{n}"
        )
    mean_ratio = statistics.fmean(o.ratio("thompson+feedback") for o in outcomes)
    worst_ratio = min(o.ratio("thompson+feedback") for o in outcomes)
    moved = [o.moved["thompson+feedback"] for o in clear]
    numbers = [m for m in moved if isinstance(m, int)]
    never = sum(m is None for m in moved)
    worst_shift = max(numbers) if numbers else 0
    targets = [
        (f"thompson+feedback mean ratio {mean_ratio:.1%} >= 95 %", mean_ratio >= 0.95),
        (f"thompson+feedback worst ratio {worst_ratio:.1%} >= 90 %", worst_ratio >= 0.90),
        (
            f"traffic off a degraded model within 150 requests where the new best leads by >= {MIN_SHIFT_GAP}"
            f" (worst {worst_shift}, never {never})",
            never == 0 and worst_shift <= 150,
        ),
        (
            "evaluation of thompson: each estimator's prediction interval holds the run in >= 90 % of the worlds"
            f" (doubly robust {coverage['thompson']['doubly_robust', 'predicts']},"
            f" IPS {coverage['thompson']['ips', 'predicts']})",
            min(coverage["thompson"]["doubly_robust", "predicts"], coverage["thompson"]["ips", "predicts"])
            >= 0.9 * len(outcomes),
        ),
    ]
    for text, ok in targets:
        print(("PASS  " if ok else "FAIL  ") + text)
    print(f"({len(outcomes)} worlds in {elapsed:.0f} s)")
    return all(ok for _, ok in targets)


def micro_benchmark(decisions: int = 3000) -> None:
    """Per-decision cost of Router.decide by mode and number of candidates (a warm bandit), and of the
    propensity estimate alone (the extra posterior draws), in microseconds. Interleaved, medians of 5."""
    print(f"\nper-decision cost (us, median of 5 x {decisions // 5} decisions):")
    print(f"{'candidates':>10} {'normal':>8} {'thompson':>9} {'propensity draws':>17} {'one draw (before)':>18}")
    for k in (2, 4, 8):
        world = World(
            "micro",
            [Model(f"m{i}", 0.001 * (i + 1), 100 + 50 * i, 0.01, 0.5) for i in range(k)],
            RewardConfig(),
            "failure",
        )
        gateway = Gateway(world, 1, None, None)
        rng = random.Random(1)
        for _ in range(500):
            gateway.serve("thompson", world, rng, feedback=True)
        request = ChatRequest(messages=[Message("user", "x")], estimated_input_tokens=INPUT_TOKENS)
        ids = [m.name for m in world.models]
        alphas, betas = gateway.bandit.posteriors(RewardConfig(), "small", ids, [0.5] * k)
        samples: dict[str, list[float]] = {"normal": [], "thompson": [], "draws": [], "one": []}
        for _ in range(5):
            for name in samples:
                started = time.perf_counter()
                for _ in range(decisions // 5):
                    if name == "draws":
                        gateway.bandit.draw(alphas, betas, PROPENSITY_DRAWS + 1)
                    elif name == "one":
                        gateway.bandit.draw(alphas, betas, 1)
                    else:
                        gateway.router.decide(request, Policy(mode=name))
                samples[name].append((time.perf_counter() - started) / (decisions // 5) * 1e6)
        med = {name: statistics.median(v) for name, v in samples.items()}
        print(f"{k:>10} {med['normal']:8.1f} {med['thompson']:9.1f} {med['draws']:17.1f} {med['one']:18.1f}")


def main(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    worlds = [current_world()] + [random_world(i + 1, rng) for i in range(args.worlds)]
    started = time.monotonic()
    outcomes = [run_world(w, args.requests, args.seed + i, args.half_life) for i, w in enumerate(worlds)]
    ok = report(outcomes, time.monotonic() - started)
    micro_benchmark(250 if args.quick else 5000)
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", type=int, default=24, help="random worlds besides the current one (>= 20)")
    parser.add_argument("--requests", type=int, default=3000, help="requests per policy and world")
    parser.add_argument("--seed", type=int, default=15, help="seed of the worlds and of every sampler")
    parser.add_argument("--half-life", type=float, help="TOKENHUB_BANDIT_HALF_LIFE_REQUESTS (default: the setting's)")
    parser.add_argument("--quick", action="store_true", help="3 random worlds of 600 requests (a smoke test)")
    options = parser.parse_args()
    if options.quick:
        options.worlds, options.requests = 3, 600
    sys.exit(main(options))
