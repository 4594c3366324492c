"""The routing objective: what a successful request is worth to the operator (docs/routing.md, Objective).

    reward = wq·quality + wc·cost_term + wl·latency_term        (a failed request earns 0)

Weights are >= 0 and normalised to sum 1; naming some leaves the others at 0. A term with a scale is
`1 - min(x / scale, 1)`; without one it is relative to the eligible candidates of that request
(`x / reference`, the reference being the largest expected cost or latency among them), so the defaults
fit any price range. Quality is the client's feedback score, else a prior: `quality_prior` when set, else
the model's running mean feedback, else 0.5.
"""

from __future__ import annotations

import functools
import math
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["DEFAULT_REWARD", "NEUTRAL_QUALITY", "RewardConfig", "term"]

NEUTRAL_QUALITY = 0.5  # the quality of an answer nobody rated, of a model nobody rated: neither good nor bad
_Weight = Annotated[float, Field(ge=0, le=1000)]
_WEIGHTS = frozenset({"quality", "cost", "latency"})


class RewardConfig(BaseModel):
    """Reward weights and scales (`PUT /admin/v1/routing-config` `reward`, or a pipeline's policy option)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    quality: _Weight = Field(0.5, description="weight of the answer's quality (feedback score, else the prior)")
    cost: _Weight = Field(0.25, description="weight of cheapness")
    latency: _Weight = Field(0.25, description="weight of speed")
    cost_scale_usd: Annotated[float, Field(gt=0, le=100)] | None = Field(
        None, description="a request costing this or more earns no cost term; unset: relative to the candidates"
    )
    latency_scale_ms: Annotated[float, Field(gt=0, le=3_600_000)] | None = Field(
        None, description="a request taking this or longer earns no latency term; unset: relative"
    )
    quality_prior: Annotated[float, Field(ge=0, le=1)] | None = Field(
        None, description="quality of an unrated answer; unset: the model's running mean feedback, else 0.5"
    )

    @model_validator(mode="before")
    @classmethod
    def _unnamed_weights_are_zero(cls, data: object) -> object:
        """`{"quality": 1}` means quality alone: once any weight is named, the others default to 0 (with
        none named, the default weights apply)."""
        if isinstance(data, dict) and _WEIGHTS & data.keys():
            return {**dict.fromkeys(_WEIGHTS - data.keys(), 0.0), **data}
        return data

    @model_validator(mode="after")
    def _normalise(self) -> RewardConfig:
        total = self.quality + self.cost + self.latency
        if not math.isfinite(total) or total <= 0:
            raise ValueError("at least one of the weights quality, cost and latency must be positive")
        # Frozen for hashing (per-objective posteriors are keyed by it); normalising is part of building it.
        for name in ("quality", "cost", "latency"):
            object.__setattr__(self, name, round(getattr(self, name) / total, 6))
        return self

    def reward(
        self,
        succeeded: bool,
        quality: float,
        cost_usd: float,
        latency_ms: float,
        cost_ref_usd: float,
        latency_ref_ms: float,
    ) -> float:
        if not succeeded:
            return 0.0
        cost = term(cost_usd, self.cost_scale_usd, cost_ref_usd)
        latency = term(latency_ms, self.latency_scale_ms, latency_ref_ms)
        return round(self.quality * quality + self.cost * cost + self.latency * latency, 6)

    def describe(self) -> str:
        """`quality 0.5, cost 0.25 (relative), latency 0.25 (scale 1000 ms)`: for routing reasons."""
        return _describe(self)


@functools.lru_cache(maxsize=64)  # once per objective, not per request
def _describe(r: RewardConfig) -> str:
    cost = f"scale ${r.cost_scale_usd:g}" if r.cost_scale_usd else "relative"
    latency = f"scale {r.latency_scale_ms:g} ms" if r.latency_scale_ms else "relative"
    return f"quality {r.quality:g}, cost {r.cost:g} ({cost}), latency {r.latency:g} ({latency})"


def term(value: float, scale: float | None, reference: float) -> float:
    """1 - min(value / scale, 1), the scale being the configured one else the candidates' reference. With
    neither (no candidate has a known cost or latency) every candidate is as good: 1."""
    bound = scale or reference
    if not bound or bound <= 0 or not math.isfinite(value):
        return 1.0
    return 1.0 - min(max(value, 0.0) / bound, 1.0)


DEFAULT_REWARD = RewardConfig()
