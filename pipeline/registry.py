"""The default stage registry and the default chat pipeline definition."""

from __future__ import annotations

from typing import Any

from pipeline.stage import StageRegistry
from stages import auth, directives, dispatch, escalate, orchestrate, policy, rate_limit, record, shape

__all__ = ["DEFAULT_PIPELINE", "default_registry"]

DEFAULT_PIPELINE: list[dict[str, Any]] = [
    {"stage": "record"},
    {"stage": "rate_limit"},
    {"stage": "auth"},
    {"stage": "directives"},
    {"stage": "orchestrate"},
    {"stage": "policy"},
    {"stage": "shape"},
    {"stage": "escalate"},
    {"stage": "dispatch"},
]


def default_registry() -> StageRegistry:
    return StageRegistry(
        [
            record.SPEC,
            rate_limit.SPEC,
            auth.SPEC,
            directives.SPEC,
            orchestrate.SPEC,
            policy.SPEC,
            shape.SPEC,
            escalate.SPEC,
            dispatch.SPEC,
        ]
    )
