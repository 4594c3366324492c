"""The most any configured model could bill a request, known before routing.

Scaled out, a key with a monthly budget sends its budget hold to Redis right after auth, with the request's rate
limits, so that the one round trip overlaps routing instead of following it (stages/shared_gate.py). The model
is not chosen yet, so the hold is this bound; dispatch shrinks it to the routed model's worst case, or makes the
exact hold itself when the bound was refused or falls short (media inputs, counted only by routing).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.types import ModelInfo
from stages.scoring import requested_output

__all__ = ["ReservationBound"]


class ReservationBound:
    """Per configuration snapshot: the highest input and output prices of its models and the most output any of
    them is billed for without a client cap; then, per request, input estimate * the highest input price +
    output cap * the highest output price."""

    def __init__(self, uncapped_output: int) -> None:
        self._uncapped_output = uncapped_output  # TOKENHUB_BUDGET_RESERVE_OUTPUT_TOKENS, as dispatch reserves
        self._models: Mapping[str, ModelInfo] | None = None
        self._input_per_1k = 0.0
        self._output_per_1k = 0.0
        self._uncapped_tokens = 0

    def __call__(self, models: Mapping[str, ModelInfo], input_tokens: int, parameters: Mapping[str, Any]) -> float:
        if models is not self._models:  # a new snapshot: the maxima once, not per request
            self._learn(models)
        max_tokens, n = requested_output(parameters)
        output_tokens = (max_tokens if max_tokens > 0 else self._uncapped_tokens) * n
        return input_tokens / 1000 * self._input_per_1k + output_tokens / 1000 * self._output_per_1k

    def _learn(self, models: Mapping[str, ModelInfo]) -> None:
        every = models.values()
        self._input_per_1k = max((m.input_per_1k for m in every), default=0.0)
        self._output_per_1k = max((m.output_per_1k for m in every), default=0.0)
        self._uncapped_tokens = max((m.max_output_tokens or self._uncapped_output for m in every), default=0)
        self._models = models
