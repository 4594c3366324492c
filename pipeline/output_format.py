"""Output shaping (routing.md §14) and the text an output schema is checked against (§15): pure functions."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["OutputFormat", "json_candidate", "parse_answer_json", "shape_text"]

_THINK = re.compile(r"<think>.*?</think>\s*", re.DOTALL)
_JSON_FENCE = re.compile(r"```json\s*(.*?)(?:```|$)", re.DOTALL)
_TEXT_MARKUP = re.compile(r"\*\*|\*|`")


@dataclass(frozen=True, slots=True)
class OutputFormat:
    type: str = ""  # json | markdown | text | xml | "" (unchanged)
    max_tokens: int = 0  # cut the text to about this many tokens (4 bytes each)
    strip_think: bool = False

    @property
    def active(self) -> bool:
        return bool(self.type or self.max_tokens or self.strip_think)


def shape_text(text: str, fmt: OutputFormat) -> str:
    if fmt.strip_think:
        text = _THINK.sub("", text).strip()
    if fmt.max_tokens > 0:
        text = _truncate(text, 4 * fmt.max_tokens)
    if fmt.type == "json":
        return json_candidate(text)
    if fmt.type == "markdown":
        return text.strip()
    if fmt.type == "text":
        lines = (_TEXT_MARKUP.sub("", line.lstrip("#").strip()) for line in text.split("\n"))
        return "\n".join(lines)
    return text


def _truncate(text: str, max_bytes: int) -> str:
    raw = text.encode()
    if len(raw) <= max_bytes:
        return text
    return raw[:max_bytes].decode("utf-8", "ignore") + "..."  # "ignore" drops a character cut in half


def json_candidate(text: str) -> str:
    """The JSON inside an answer: a ```json fence's body, else the trimmed text."""
    fenced = _JSON_FENCE.search(text)
    return (fenced.group(1) if fenced else text).strip()


def parse_answer_json(text: str) -> tuple[bool, Any]:
    """(True, value) when the answer (or its ```json fence) is JSON; (False, None) otherwise."""
    try:
        return True, orjson.loads(json_candidate(text))
    except ValueError:
        return False, None
