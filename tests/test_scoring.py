"""Routing maths: token estimates, eligibility (exclusion reasons, in order) and per-mode ranking."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pipeline.types import Message, ModelInfo
from stages.scoring import (
    MODE_WEIGHTS,
    OUTPUT_TOKENS_ESTIMATE,
    Constraints,
    ProviderStats,
    estimate_cost,
    estimate_input_tokens,
    exclusion_reason,
    rank,
    score_parts,
)

# --- estimate_input_tokens -----------------------------------------------------------------------


def msgs(*contents: str) -> list[Message]:
    return [Message("user", c) for c in contents]


@pytest.mark.parametrize(
    ("contents", "expected"),
    [
        ((), 0),
        (("",), 0),
        (("abc",), 0),
        (("abcd",), 1),
        (("x" * 4001,), 1000),
        (("abc", "abc"), 0),  # floor per message, not over the total
        (("abcdefgh", "abcd"), 3),
        (("é" * 4,), 2),  # UTF-8 bytes, not characters: 8 bytes
        (("日本語の",), 3),  # 12 bytes
        (("🙂",), 1),  # 4 bytes
    ],
)
def test_estimate_input_tokens_counts_utf8_bytes_per_message(contents: tuple[str, ...], expected: int) -> None:
    assert estimate_input_tokens(msgs(*contents)) == expected


def test_estimate_input_tokens_explicit_override() -> None:
    messages = msgs("x" * 400)
    assert estimate_input_tokens(messages, explicit=7) == 7
    assert estimate_input_tokens(messages, explicit=0) == 100
    assert estimate_input_tokens(messages, explicit=-5) == 100


def test_estimate_cost_uses_fixed_output_estimate() -> None:
    model = ModelInfo("m", "p", input_per_1k=0.002, output_per_1k=0.004)
    assert estimate_cost(model, 1500) == pytest.approx(1.5 * 0.002 + OUTPUT_TOKENS_ESTIMATE / 1000 * 0.004)


# --- exclusion_reason ----------------------------------------------------------------------------


def constraints(
    *, mode: str = "normal", max_budget_usd: float = 0.0, min_weight: int = 0, input_tokens: int = 100
) -> Constraints:
    return Constraints(mode=mode, max_budget_usd=max_budget_usd, min_weight=min_weight, input_tokens=input_tokens)


def always(value: bool) -> Callable[[str], bool]:
    return lambda provider_id: value


def unavailable_with(reason: str | None) -> Callable[[str], str | None]:
    return lambda provider_id: reason


def reason_for(
    model: ModelInfo,
    c: Constraints,
    *,
    adapter: bool = True,
    unavailable: str | None = None,
) -> str | None:
    return exclusion_reason(model, c, always(adapter), unavailable_with(unavailable))


def test_eligible_model_has_no_exclusion_reason() -> None:
    model = ModelInfo("m", "p", weight=5, max_context_tokens=8000, input_per_1k=0.001)
    assert reason_for(model, constraints(max_budget_usd=1.0, min_weight=5)) is None


def test_exclusion_reasons_in_order() -> None:
    """Each check only shows once every earlier one passes."""
    c = constraints(max_budget_usd=0.01, min_weight=5, input_tokens=1000)
    model = ModelInfo("m", "p", weight=1, max_context_tokens=100, input_per_1k=1.0, enabled=False)
    assert reason_for(model, c, adapter=False, unavailable="health_down") == "disabled"
    model = ModelInfo("m", "p", weight=1, max_context_tokens=100, input_per_1k=1.0)
    assert reason_for(model, c, adapter=False, unavailable="health_down") == "weight_below_minimum"
    model = ModelInfo("m", "p", weight=5, max_context_tokens=100, input_per_1k=1.0)
    assert reason_for(model, c, adapter=False, unavailable="health_down") == "context_overflow"
    model = ModelInfo("m", "p", weight=5, max_context_tokens=0, input_per_1k=1.0)
    assert reason_for(model, c, adapter=False, unavailable="health_down") == "no_adapter"
    assert reason_for(model, c, adapter=True, unavailable="health_down") == "health_down"
    assert reason_for(model, c, adapter=True, unavailable=None) == "budget_exceeded"
    model = ModelInfo("m", "p", weight=5, max_context_tokens=0, input_per_1k=0.001)
    assert reason_for(model, c, adapter=True, unavailable=None) is None


def test_disabled() -> None:
    assert reason_for(ModelInfo("m", "p", enabled=False), constraints()) == "disabled"


@pytest.mark.parametrize(
    ("weight", "min_weight", "expected"), [(3, 4, "weight_below_minimum"), (4, 4, None), (1, 0, None)]
)
def test_weight_below_minimum(weight: int, min_weight: int, expected: str | None) -> None:
    assert reason_for(ModelInfo("m", "p", weight=weight), constraints(min_weight=min_weight)) == expected


@pytest.mark.parametrize(
    ("max_context", "expected"),
    [(1150, None), (1149, "context_overflow"), (1000, "context_overflow"), (0, None), (5000, None)],
)
def test_context_overflow_uses_headroom(max_context: int, expected: str | None) -> None:
    model = ModelInfo("m", "p", max_context_tokens=max_context)
    assert reason_for(model, constraints(input_tokens=1000)) == expected  # needs 1000 * 1.15 = 1150


def test_context_headroom_has_no_float_rounding() -> None:
    # int(100 * 1.15) is 114 in floating point; the window check must ask for the exact 115.
    model = ModelInfo("m", "p", max_context_tokens=114)
    assert reason_for(model, constraints(input_tokens=100)) == "context_overflow"
    assert reason_for(ModelInfo("m", "p", max_context_tokens=115), constraints(input_tokens=100)) is None


def test_no_adapter_is_checked_per_provider() -> None:
    seen: list[str] = []

    def has_adapter(provider_id: str) -> bool:
        seen.append(provider_id)
        return provider_id == "known"

    c = constraints()
    assert exclusion_reason(ModelInfo("m", "ghost"), c, has_adapter, unavailable_with(None)) == "no_adapter"
    assert exclusion_reason(ModelInfo("m", "known"), c, has_adapter, unavailable_with(None)) is None
    assert seen == ["ghost", "known"]


@pytest.mark.parametrize("reason", ["health_down", "rate_limited", "anything_the_tracker_says"])
def test_unavailable_provider_reason_passes_through(reason: str) -> None:
    assert reason_for(ModelInfo("m", "p"), constraints(), unavailable=reason) == reason


def test_budget_exceeded() -> None:
    # 1000 input tokens at 0.01/1k + 512 output at 0.02/1k = 0.01 + 0.01024 = 0.02024 USD
    model = ModelInfo("m", "p", input_per_1k=0.01, output_per_1k=0.02)
    assert reason_for(model, constraints(input_tokens=1000, max_budget_usd=0.02)) == "budget_exceeded"
    assert reason_for(model, constraints(input_tokens=1000, max_budget_usd=0.021)) is None
    assert reason_for(model, constraints(input_tokens=1000, max_budget_usd=0.0)) is None  # 0 = no budget filter


# --- rank ----------------------------------------------------------------------------------------

CHEAP_WEAK = ModelInfo("cheap-weak", "p", weight=1, input_per_1k=0.0001)
MIDDLE = ModelInfo("middle", "p", weight=7, input_per_1k=0.003)
PRICEY_STRONG = ModelInfo("pricey-strong", "p", weight=8, input_per_1k=0.01)
MODELS = [PRICEY_STRONG, MIDDLE, CHEAP_WEAK]


def same_stats(provider_id: str) -> ProviderStats:
    return ProviderStats(latency_ms=500.0, error_rate=0.0)


def ranked_ids(models: list[ModelInfo], mode: str, stats: Callable[[str], ProviderStats] = same_stats) -> list[str]:
    return [cand.model.id for cand in rank(models, constraints(mode=mode, input_tokens=1000), stats)]


def test_cheap_mode_prefers_the_cheapest() -> None:
    assert ranked_ids(MODELS, "cheap")[0] == "cheap-weak"


def test_high_confidence_prefers_the_highest_weight() -> None:
    assert ranked_ids(MODELS, "high_confidence") == ["pricey-strong", "middle", "cheap-weak"]


def test_normal_mode_balances_cost_and_weight() -> None:
    # Neither the cheapest nor the strongest: 30% of the top cost for 7/8 of the top weight.
    assert ranked_ids(MODELS, "normal")[0] == "middle"


def test_rank_scores_and_costs() -> None:
    ranked = rank(MODELS, constraints(mode="cheap", input_tokens=1000), same_stats)
    by_id = {cand.model.id: cand for cand in ranked}
    wc, wl, _wf, ww = MODE_WEIGHTS["cheap"]
    # Equal latency normalises to 1 for everyone; a zero error rate everywhere normalises to 0.
    assert by_id["pricey-strong"].score == pytest.approx(wc * 1.0 + wl * 1.0 - ww * 1.0)
    assert by_id["middle"].score == pytest.approx(round(wc * 0.3 + wl * 1.0 - ww * 7 / 8, 6))
    assert by_id["cheap-weak"].estimated_cost_usd == pytest.approx(0.0001)
    assert [cand.score for cand in ranked] == sorted(cand.score for cand in ranked)


def test_unknown_mode_uses_normal_weights() -> None:
    c_vote = constraints(mode="vote", input_tokens=1000)
    c_normal = constraints(mode="normal", input_tokens=1000)
    assert rank(MODELS, c_vote, same_stats) == rank(MODELS, c_normal, same_stats)


def test_latency_from_stats_lowers_a_model() -> None:
    slow = ModelInfo("a-slow", "slow", weight=5, input_per_1k=0.001)
    fast = ModelInfo("b-fast", "fast", weight=5, input_per_1k=0.001)

    def stats(provider_id: str) -> ProviderStats:
        return ProviderStats(latency_ms=4000.0 if provider_id == "slow" else 200.0, error_rate=0.0)

    for mode in ("cheap", "normal", "high_confidence"):
        assert ranked_ids([slow, fast], mode, stats) == ["b-fast", "a-slow"], mode


def test_error_rate_from_stats_lowers_a_model() -> None:
    flaky = ModelInfo("a-flaky", "flaky", weight=5, input_per_1k=0.001)
    steady = ModelInfo("b-steady", "steady", weight=5, input_per_1k=0.001)

    def stats(provider_id: str) -> ProviderStats:
        return ProviderStats(latency_ms=300.0, error_rate=0.4 if provider_id == "flaky" else 0.01)

    for mode in MODE_WEIGHTS:
        assert ranked_ids([flaky, steady], mode, stats) == ["b-steady", "a-flaky"], mode


def test_slow_provider_can_outweigh_a_small_price_advantage_in_normal_mode() -> None:
    cheap_slow = ModelInfo("cheap-slow", "slow", weight=5, input_per_1k=0.0009)
    dear_fast = ModelInfo("dear-fast", "fast", weight=5, input_per_1k=0.001)

    def stats(provider_id: str) -> ProviderStats:
        return ProviderStats(latency_ms=5000.0 if provider_id == "slow" else 100.0, error_rate=0.0)

    assert ranked_ids([cheap_slow, dear_fast], "normal", stats) == ["dear-fast", "cheap-slow"]
    assert ranked_ids([cheap_slow, dear_fast], "normal") == ["cheap-slow", "dear-fast"]


def test_ties_broken_by_model_id() -> None:
    models = [ModelInfo(name, "p", weight=3, input_per_1k=0.002) for name in ("zeta", "alpha", "mid")]
    ranked = rank(models, constraints(mode="normal"), same_stats)
    assert [cand.model.id for cand in ranked] == ["alpha", "mid", "zeta"]
    assert len({cand.score for cand in ranked}) == 1


def test_all_zero_objectives_do_not_divide_by_zero() -> None:
    models = [ModelInfo("b", "p", weight=0), ModelInfo("a", "p", weight=0)]

    def zero(provider_id: str) -> ProviderStats:
        return ProviderStats(latency_ms=0.0, error_rate=0.0)

    ranked = rank(models, constraints(), zero)
    assert [(cand.model.id, cand.score) for cand in ranked] == [("a", 0.0), ("b", 0.0)]


def test_rank_empty_input() -> None:
    calls: list[str] = []

    def stats(provider_id: str) -> ProviderStats:
        calls.append(provider_id)
        return same_stats(provider_id)

    assert rank([], constraints(), stats) == []
    assert rank(iter(()), constraints(), stats) == []
    assert calls == []


def test_rank_accepts_a_generator() -> None:
    ranked = rank((m for m in MODELS), constraints(mode="cheap", input_tokens=1000), same_stats)
    assert len(ranked) == 3


@pytest.mark.parametrize("mode", [*MODE_WEIGHTS, "unknown"])
@pytest.mark.parametrize(("price", "latency_ms", "error_rate", "weight"), [(0.002, 120.0, 0.1, 5), (0, 0.0, 0.0, 0)])
def test_a_single_model_scores_as_the_general_formula_scores_it(
    mode: str, price: float, latency_ms: float, error_rate: float, weight: int
) -> None:
    """One eligible model is ranked without the normalisation pass: the same score, each objective at 1 or 0."""
    model = ModelInfo("only", "p", weight=weight, input_per_1k=price, output_per_1k=price)
    c = constraints(mode=mode, input_tokens=1000)

    def stats(provider_id: str) -> ProviderStats:
        return ProviderStats(latency_ms=latency_ms, error_rate=error_rate)

    [ranked] = rank([model], c, stats)
    [parts] = score_parts([model], c, stats)
    assert ranked.score == parts.score(mode) and ranked.estimated_cost_usd == parts.cost_usd
    others = [ModelInfo("twin", "p", weight=weight, input_per_1k=price, output_per_1k=price), model]
    assert [cand.score for cand in rank(others, c, stats)] == [ranked.score] * 2  # the general pass agrees
