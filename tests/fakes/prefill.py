"""How the fake providers' models continue an assistant prefill, as real ones do.

A model asked to continue a final assistant turn (Anthropic: always; vLLM: with `continue_final_message`)
produces the rest of its answer after the prefill: mid-word if the prefill stops mid-word, from the
whitespace after it if the prefill was stripped. A prefill that is not the start of the answer the fake was
scripted to give is answered in full (the model starts over). `repeat_words` imitates a model that restarts
its sentence: the continuation first repeats the prefill's last words.
"""

from __future__ import annotations

from typing import Any

__all__ = ["continuation", "final_assistant_text"]


def final_assistant_text(messages: Any) -> str | None:
    """The text of a final assistant turn (a string, or text blocks), or None when the last turn is not one."""
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return None
    last = messages[-1]
    if last.get("role") != "assistant":
        return None
    content = last.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    return None


def continuation(answer: str, prefill: str, *, repeat_words: int = 0) -> str:
    """What a model answering `answer` sends after `prefill`."""
    if not prefill or not answer.startswith(prefill):
        return answer
    rest = answer[len(prefill) :]
    if repeat_words:
        return " ".join(prefill.split()[-repeat_words:]) + rest
    return rest
