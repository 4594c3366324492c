"""Routing maths: token and cost estimates, eligibility, the per-mode multi-objective score, and softmax
exploration over the ranked list."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.context import Candidate
from pipeline.media import media_tokens
from pipeline.types import Message, ModelInfo

__all__ = [
    "CLIENT_CONSTRAINTS",
    "CONTEXT_HEADROOM_PERCENT",
    "MEDIA_REASONS",
    "MEDIA_TOKEN_SCHEMES",
    "MODE_WEIGHTS",
    "OPERATION_KINDS",
    "OUTPUT_TOKENS_ESTIMATE",
    "Constraints",
    "ProviderStats",
    "RawRows",
    "ScoreParts",
    "estimate_cost",
    "estimate_input_tokens",
    "estimate_output_tokens",
    "exclusion_reason",
    "media_input_tokens",
    "model_kind",
    "rank",
    "requested_output",
    "score_parts",
    "softmax_probability",
    "softmax_rank",
]

OUTPUT_TOKENS_ESTIMATE = 512  # per choice, when neither the request nor the model caps the output
CONTEXT_HEADROOM_PERCENT = 115  # a model needs 15 % more window than the estimated input

# (cost, latency, failure, weight); lower score is better, weight is subtracted.
MODE_WEIGHTS: dict[str, tuple[float, float, float, float]] = {
    "cheap": (0.70, 0.10, 0.10, 0.10),
    "normal": (0.25, 0.25, 0.25, 0.25),
    "high_confidence": (0.05, 0.10, 0.15, 0.70),
    "planning": (0.10, 0.10, 0.20, 0.60),
    "adversarial": (0.10, 0.10, 0.20, 0.60),
}
# A model that cannot read the request's media: it lacks the capability (vision, documents, audio), or its
# provider type cannot take that medium by URL.
MEDIA_REASONS = frozenset(
    [f"lacks_{need}" for need in ("vision", "documents", "audio")]
    + [f"no_{need}_by_url" for need in ("vision", "documents", "audio")]
)
# Reasons an exclusion is the request's own doing (retrying the same request cannot help).
CLIENT_CONSTRAINTS = (
    frozenset({"budget_exceeded", "key_budget_exceeded", "context_overflow", "weight_below_minimum"}) | MEDIA_REASONS
)
# The model kind each request operation needs: a chat request never reaches an embedding model, nor the reverse.
OPERATION_KINDS = {"chat": "chat", "embeddings": "embedding"}


def model_kind(operation: str) -> str:
    return OPERATION_KINDS.get(operation, operation)


MEDIA_TOKEN_SCHEMES = ("openai", "anthropic")  # how providers count media (adapters' Capabilities.media_tokens)


def estimate_input_tokens(messages: Sequence[Message], explicit: int = 0, scheme: str = "") -> int:
    """The client's estimate when it gave one; else text bytes / 4 plus the media's tokens counted the
    `scheme` way ("" = the larger of the schemes: what a request costs wherever it lands)."""
    if explicit > 0:
        return explicit
    return sum(len(m.content.encode()) // 4 for m in messages) + media_input_tokens(messages, scheme)


def media_input_tokens(messages: Sequence[Message], scheme: str = "") -> int:
    media = [part for m in messages if m.parts for part in m.media]
    if not media:
        return 0
    schemes = (scheme,) if scheme else MEDIA_TOKEN_SCHEMES
    return max(sum(media_tokens(part, s) for part in media) for s in schemes)


def requested_output(parameters: Mapping[str, Any]) -> tuple[int, int]:
    """(max tokens per choice, choices) the client asked for; (0, 1) when it set no cap. The OpenAI names:
    `max_completion_tokens` wins over `max_tokens` (as the adapters send it); `n` choices each get that many.
    Native `parameters` are not typed at the edge, so anything but a positive integer counts as unset."""
    per_choice = _positive_int(parameters.get("max_completion_tokens")) or _positive_int(parameters.get("max_tokens"))
    return per_choice, _positive_int(parameters.get("n")) or 1


def estimate_output_tokens(
    model: ModelInfo, max_tokens: int = 0, n: int = 1, uncapped: int = OUTPUT_TOKENS_ESTIMATE
) -> int:
    """The most output the request can be billed for on this model: the client's cap (clipped to the model's
    own output cap) times the choices; without a client cap, the model's cap, else `uncapped` per choice
    (routing: OUTPUT_TOKENS_ESTIMATE; budget reservations pass a more cautious number)."""
    cap = model.max_output_tokens
    if max_tokens <= 0:
        return (cap if cap > 0 else uncapped) * max(1, n)
    return (min(max_tokens, cap) if cap > 0 else max_tokens) * max(1, n)


def estimate_cost(
    model: ModelInfo, input_tokens: int, max_tokens: int = 0, n: int = 1, uncapped: int = OUTPUT_TOKENS_ESTIMATE
) -> float:
    return model.cost_usd(input_tokens, estimate_output_tokens(model, max_tokens, n, uncapped))


def _positive_int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@dataclass(frozen=True, slots=True)
class ProviderStats:
    latency_ms: float
    error_rate: float


# Not frozen: one is built per routing decision and nothing changes it; a frozen dataclass sets each field through
# object.__setattr__, which costs 3x as much (~8 µs more when the decision runs cold).
@dataclass(slots=True)
class Constraints:
    mode: str
    max_budget_usd: float  # 0 = no budget filter
    min_weight: int
    input_tokens: int
    context_tokens: int = 0  # what one model window must hold (0 = input_tokens); embeddings: the longest input
    max_tokens: int = 0  # the client's output cap per choice (0 = none given): see estimate_output_tokens
    n: int = 1  # choices asked for
    key_budget_usd: float = 0.0  # what the API key may still spend this month (0 = the key has no budget)
    # Media: the input tokens on each provider where its way of counting media differs from `input_tokens`
    # (which counts them the dearest way).
    provider_tokens: Mapping[str, int] | None = None
    inputs: frozenset[str] = frozenset()  # what the model must read besides text: vision, documents, audio
    url_inputs: frozenset[str] = frozenset()  # which of those come by URL

    def tokens(self, model: ModelInfo) -> int:
        """The request's estimated input tokens on `model`."""
        if self.provider_tokens:
            return self.provider_tokens.get(model.provider_id, self.input_tokens)
        return self.input_tokens

    def cost(self, model: ModelInfo) -> float:
        """The request's estimated cost on `model`: what the budgets are checked against."""
        return estimate_cost(model, self.tokens(model), self.max_tokens, self.n)


def exclusion_reason(
    model: ModelInfo,
    c: Constraints,
    has_adapter: Callable[[str], bool],
    unavailable: Callable[[str], str | None],
    supports: Callable[[str], bool] | None = None,
) -> str | None:
    """Why a model cannot serve this request, in the original's order, or None if it is eligible.
    `supports(provider_id)`, when given, says whether the provider's adapter can do the request's operation."""
    if not model.enabled:
        return "disabled"
    if c.min_weight > 0 and model.weight < c.min_weight:
        return "weight_below_minimum"
    # integer maths: no float rounding at the edge
    needed = (c.context_tokens or c.tokens(model)) * CONTEXT_HEADROOM_PERCENT // 100
    if model.max_context_tokens > 0 and needed > model.max_context_tokens:
        return "context_overflow"
    if not has_adapter(model.provider_id):
        return "no_adapter"
    if supports is not None and not supports(model.provider_id):
        return "unsupported_operation"
    if reason := unavailable(model.provider_id):
        return reason
    if c.max_budget_usd > 0 or c.key_budget_usd > 0:
        cost = c.cost(model)
        if c.max_budget_usd > 0 and cost > c.max_budget_usd:
            return "budget_exceeded"
        if c.key_budget_usd > 0 and cost > c.key_budget_usd:
            return "key_budget_exceeded"
    return None


@dataclass(frozen=True, slots=True)
class ScoreParts:
    """One eligible model's objectives, raw and normalised by the eligible set's maximum (0..1)."""

    model: ModelInfo
    cost_usd: float
    latency_ms: float
    error_rate: float
    cost: float
    latency: float
    failure: float
    weight: float

    def score(self, mode: str) -> float:
        wc, wl, wf, ww = MODE_WEIGHTS.get(mode, MODE_WEIGHTS["normal"])
        return round(wc * self.cost + wl * self.latency + wf * self.failure - ww * self.weight, 6)


RawRows = list[tuple[ModelInfo, float, float, float]]  # (model, estimated cost, latency ms, error rate)


def _raw(
    models: Iterable[ModelInfo], c: Constraints, stats: Callable[[str], ProviderStats]
) -> tuple[RawRows, float, float, float, float]:
    """One pass: each model's raw objectives, and each objective's maximum (for normalising)."""
    rows: RawRows = []
    max_cost = max_latency = max_errors = max_weight = 0.0
    for model in models:
        s = stats(model.provider_id)
        cost = c.cost(model)
        rows.append((model, cost, s.latency_ms, s.error_rate))
        max_cost = max(max_cost, cost)
        max_latency = max(max_latency, s.latency_ms)
        max_errors = max(max_errors, s.error_rate)
        max_weight = max(max_weight, model.weight)
    return rows, max_cost, max_latency, max_errors, max_weight


def score_parts(models: Iterable[ModelInfo], c: Constraints, stats: Callable[[str], ProviderStats]) -> list[ScoreParts]:
    """Every model's objectives, raw and normalised (simulation explains decisions with these)."""
    rows, max_cost, max_latency, max_errors, max_weight = _raw(models, c, stats)
    return [
        ScoreParts(
            model,
            cost,
            latency,
            errors,
            _norm(cost, max_cost),
            _norm(latency, max_latency),
            _norm(errors, max_errors),
            _norm(model.weight, max_weight),
        )
        for model, cost, latency, errors in rows
    ]


def rank(models: Iterable[ModelInfo], c: Constraints, stats: Callable[[str], ProviderStats]) -> list[Candidate]:
    """Score eligible models for the mode; best (lowest score) first, ties by id. Runs once per request, so
    it scores straight from the raw rows (the same arithmetic as ScoreParts.score, without the objects)."""
    wc, wl, wf, ww = MODE_WEIGHTS.get(c.mode, MODE_WEIGHTS["normal"])
    rows, max_cost, max_latency, max_errors, max_weight = _raw(models, c, stats)
    if len(rows) == 1:  # the usual single model: each objective normalised by itself is 1 (or 0 when 0)
        model, cost, latency, errors = rows[0]
        score = (wc if cost > 0 else 0.0) + (wl if latency > 0 else 0.0) + (wf if errors > 0 else 0.0)
        return [Candidate(model, round(score - (ww if model.weight > 0 else 0.0), 6), cost)]
    ranked = [
        Candidate(
            model,
            round(
                wc * _norm(cost, max_cost)
                + wl * _norm(latency, max_latency)
                + wf * _norm(errors, max_errors)
                - ww * _norm(model.weight, max_weight),
                6,
            ),
            cost,
        )
        for model, cost, latency, errors in rows
    ]
    if len(ranked) > 1:
        ranked.sort(key=lambda cand: (cand.score, cand.model.id))
    return ranked


def _softmax_weights(count: int, temperature: float) -> list[float]:
    # Ranks past 30 T weigh under e^-30 of the top: leave them out rather than pay an exp() each per request.
    return [math.exp(-i / temperature) for i in range(min(count, math.ceil(30 * temperature) + 1))]


def softmax_probability(count: int, temperature: float, index: int) -> float:
    """P(softmax_rank picks `index`): the propensity of an explored (or not explored) pick."""
    if temperature <= 0 or count < 2:
        return 1.0 if index == 0 else 0.0
    weights = _softmax_weights(count, temperature)
    return weights[index] / sum(weights) if index < len(weights) else 0.0


def softmax_rank(count: int, temperature: float, draw: float) -> int:
    """The rank exploration picks from a ranked list of `count` (routing.md §7): rank i (0-based) weighs
    exp(-i / T), so with T = 0.3 the top is picked about 96 % of the time. T <= 0 or a single candidate:
    rank 0. `draw` is a uniform number in [0, 1)."""
    if temperature <= 0 or count < 2:
        return 0
    weights = _softmax_weights(count, temperature)
    target = draw * sum(weights)
    for index, weight in enumerate(weights):
        target -= weight
        if target < 0:
            return index
    return len(weights) - 1  # float rounding at the very end of the range


def _norm(value: float, maximum: float) -> float:
    # Raw values are >= 0 and maximum is their max, so the ratio already lies in [0, 1].
    return value / maximum if maximum > 0 else 0.0
