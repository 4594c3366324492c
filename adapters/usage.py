"""Token counts read from upstream bodies, whatever their vocabulary."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.types import Usage

__all__ = ["parse_usage", "token_count"]


def token_count(value: Any) -> int:
    """A non-negative whole count, or 0 for anything that is not a finite number."""
    # bool is an int subclass; a token count of True is garbage, not 1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    try:
        return max(int(value), 0)
    except (OverflowError, ValueError):  # inf / nan
        return 0


def parse_usage(body: Mapping[str, Any]) -> Usage | None:
    """OpenAI's prompt/completion_tokens, else the input/output_tokens shape, else None."""
    # dict, not Mapping: parsed JSON is always a dict, and an ABC isinstance check is slow per request.
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return None
    for input_key, output_key in (("prompt_tokens", "completion_tokens"), ("input_tokens", "output_tokens")):
        tokens_in, tokens_out = token_count(usage.get(input_key)), token_count(usage.get(output_key))
        if tokens_in > 0 or tokens_out > 0:
            return Usage(input_tokens=tokens_in, output_tokens=tokens_out)
    return None
