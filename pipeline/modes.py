"""Routing mode names, shared by settings, wire formats, stages and the admin API."""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["AUTO_MODELS", "ORCHESTRATION_MODES", "ROUTING_MODES", "Mode", "OptionalMode", "model_hint"]

Mode = Literal["cheap", "normal", "high_confidence", "planning", "adversarial", "vote", "refine", "thompson"]
OptionalMode = Literal[
    "", "cheap", "normal", "high_confidence", "planning", "adversarial", "vote", "refine", "thompson"
]
ROUTING_MODES: tuple[str, ...] = get_args(Mode)
ORCHESTRATION_MODES = ("planning", "adversarial", "vote", "refine")  # what /v1/plan's mode may name
AUTO_MODELS = frozenset({"", "auto", "*"})  # a `model` that lets TokenHub choose


def model_hint(model: str) -> str:
    """The model a request body's `model` names, stripped; "" when it lets TokenHub choose."""
    model = model.strip()
    return "" if model in AUTO_MODELS else model
