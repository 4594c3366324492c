"""The text of a provider's answer, whatever its wire format (for chaining orchestration steps and shaping)."""

from __future__ import annotations

from typing import Any

from pipeline.types import ChatResult

__all__ = ["answer_text"]


def answer_text(result: ChatResult) -> str:
    """OpenAI: choice 0's message content, reasoning prepended (blank line between); Anthropic: the text
    blocks joined; anything else: the raw body as text."""
    body = result.body
    if result.format == "anthropic":
        blocks = body.get("content")
        if isinstance(blocks, list):
            return "".join(b.get("text", "") for b in blocks if isinstance(b, dict) and b.get("type") == "text")
        return ""
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message: Any = choices[0].get("message") or {}
        content = message.get("content") if isinstance(message, dict) else None
        text = content if isinstance(content, str) else ""
        reasoning = message.get("reasoning_content") if isinstance(message, dict) else None
        if isinstance(reasoning, str) and reasoning:
            return f"{reasoning}\n\n{text}" if text else reasoning
        return text
    return result.raw.decode("utf-8", "replace") if result.raw else ""
