"""Gemma-4's output conventions, for models with `gemma4_output` (served raw, e.g. by vLLM without a tool
parser): the answer's text carries a thinking section and inline tool calls as special tokens.

    <|channel>thought\\n ... <channel|>                      thinking: moved out of the content
    <|tool_call>call:NAME{key:value,...}<tool_call|>       one tool call: becomes an OpenAI tool call

In ARGS, strings are wrapped in `<|"|>` on both sides; other values are JSON literals (else kept as the raw
string); `{...}` and `[...]` nest. The thinking text is kept as `reasoning_content` (the field the port uses
for every reasoning model's thoughts, Anthropic's included) rather than thrown away: a client that does not
read it never sees it in the content, and a stream keeps flowing while the model thinks (a dropped thought
would count as silence against the first-token limit). The remaining text is trimmed; empty becomes null.

`Gemma4Parser` is incremental: a stream is parsed as it arrives, holding back only what could be the start
of a token; the same parser reads a whole answer at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Gemma4Parser", "ParsedCall", "parse_call", "rewrite_gemma4_choices", "tool_call"]

THINK_OPEN = "<|channel>thought\n"
THINK_CLOSE = "<channel|>"
CALL_OPEN = "<|tool_call>"
CALL_CLOSE = "<tool_call|>"
QUOTE = '<|"|>'
_MAX_DEPTH = 32


@dataclass(frozen=True, slots=True)
class ParsedCall:
    name: str
    arguments: str  # a JSON object, as OpenAI carries tool arguments


@dataclass(slots=True)
class Parsed:
    """What a piece of output turned into."""

    text: str = ""
    reasoning: str = ""
    calls: list[ParsedCall] = field(default_factory=list)


class Gemma4Parser:
    """Feed the content as it comes (`feed`), then `finish` once at the end."""

    def __init__(self) -> None:
        self._state = "text"  # "text" | "thought" | "call"
        self._buf = ""
        self._started = False  # text was emitted: leading whitespace is trimmed until then
        self._pending_space = ""  # trailing whitespace held until more text follows (trimmed at the end)

    def feed(self, chunk: str) -> Parsed:
        out = Parsed()
        self._buf += chunk
        while self._step(out):
            pass
        return out

    def finish(self) -> Parsed:
        """Whatever is left: an unfinished token is text after all; an unclosed thought stays a thought."""
        out = Parsed()
        rest, self._buf = self._buf, ""
        if self._state == "thought":
            out.reasoning = rest
        else:
            self._text(out, (CALL_OPEN if self._state == "call" else "") + rest)
        self._state = "text"
        self._pending_space = ""
        return out

    def _step(self, out: Parsed) -> bool:
        """Consume what can be decided now; True when there may be more to do."""
        buf = self._buf
        if self._state == "text":
            found = [(i, m) for m in (THINK_OPEN, CALL_OPEN) if (i := buf.find(m)) >= 0]
            if not found:
                keep = _partial_suffix(buf, (THINK_OPEN, CALL_OPEN))
                self._text(out, buf[: len(buf) - keep])
                self._buf = buf[len(buf) - keep :]
                return False
            index, marker = min(found)
            self._text(out, buf[:index])
            self._buf = buf[index + len(marker) :]
            self._state = "thought" if marker == THINK_OPEN else "call"
            return True
        if self._state == "thought":
            index = buf.find(THINK_CLOSE)
            if index < 0:
                keep = _partial_suffix(buf, (THINK_CLOSE,))
                out.reasoning += buf[: len(buf) - keep]
                self._buf = buf[len(buf) - keep :]
                return False
            out.reasoning += buf[:index]
            self._buf = buf[index + len(THINK_CLOSE) :]
            self._state = "text"
            return True
        index = buf.find(CALL_CLOSE)  # a call is only useful whole: wait for its end
        if index < 0:
            return False
        body, self._buf, self._state = buf[:index], buf[index + len(CALL_CLOSE) :], "text"
        call = parse_call(body)
        if call is None:  # not a call we can read: give it back as text rather than lose it
            self._text(out, CALL_OPEN + body + CALL_CLOSE)
        else:
            out.calls.append(call)
        return True

    def _text(self, out: Parsed, text: str) -> None:
        if not self._started:
            text = text.lstrip()
            if not text:
                return
            self._started = True
        text = self._pending_space + text
        kept = text.rstrip()
        self._pending_space = text[len(kept) :]
        out.text += kept


def parse_call(body: str) -> ParsedCall | None:
    """`call:NAME{ARGS}` (the `call:` prefix optional) -> the call with ARGS as a JSON object; None if malformed."""
    text = body.strip().removeprefix("call:")
    brace = text.find("{")
    name = (text if brace < 0 else text[:brace]).strip()
    if not name:
        return None
    if brace < 0:
        return ParsedCall(name, "{}")
    try:
        args, end = _object(text, brace, 0)
    except (ValueError, IndexError):
        return None
    if text[end:].strip():
        return None
    return ParsedCall(name, json.dumps(args, ensure_ascii=False))


def _object(s: str, i: int, depth: int) -> tuple[dict[str, Any], int]:
    if depth > _MAX_DEPTH:
        raise ValueError("too deep")
    i = _skip(s, i + 1)  # past "{"
    result: dict[str, Any] = {}
    if s[i] == "}":
        return result, i + 1
    while True:
        if s.startswith(QUOTE, i):
            key, i = _quoted(s, i)
        else:
            colon = s.index(":", i)
            key, i = s[i:colon].strip(), colon
        i = _skip(s, i)
        if s[i] != ":":
            raise ValueError("expected ':'")
        result[key], i = _value(s, _skip(s, i + 1), depth)
        i = _skip(s, i)
        if s[i] == "}":
            return result, i + 1
        if s[i] != ",":
            raise ValueError("expected ',' or '}'")
        i = _skip(s, i + 1)


def _array(s: str, i: int, depth: int) -> tuple[list[Any], int]:
    if depth > _MAX_DEPTH:
        raise ValueError("too deep")
    i = _skip(s, i + 1)
    items: list[Any] = []
    if s[i] == "]":
        return items, i + 1
    while True:
        item, i = _value(s, i, depth)
        items.append(item)
        i = _skip(s, i)
        if s[i] == "]":
            return items, i + 1
        if s[i] != ",":
            raise ValueError("expected ',' or ']'")
        i = _skip(s, i + 1)


def _value(s: str, i: int, depth: int) -> tuple[Any, int]:
    if s.startswith(QUOTE, i):
        return _quoted(s, i)
    if s[i] == "{":
        return _object(s, i, depth + 1)
    if s[i] == "[":
        return _array(s, i, depth + 1)
    end = i
    while end < len(s) and s[end] not in ",}]":
        end += 1
    raw = s[i:end].strip()
    try:
        return json.loads(raw), end
    except ValueError:
        return raw, end  # not a JSON literal: the spec keeps the raw string


def _quoted(s: str, i: int) -> tuple[str, int]:
    start = i + len(QUOTE)
    end = s.index(QUOTE, start)
    return s[start:end], end + len(QUOTE)


def _skip(s: str, i: int) -> int:
    while i < len(s) and s[i].isspace():
        i += 1
    return i


def _partial_suffix(buf: str, markers: tuple[str, ...]) -> int:
    """How many trailing characters of `buf` could begin one of `markers` (held back until the next chunk)."""
    longest = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(buf)), longest, -1):
            if marker.startswith(buf[-size:]):
                longest = size
                break
    return longest


def tool_call(call: ParsedCall, choice: int, ordinal: int) -> dict[str, Any]:
    """The OpenAI tool call for a parsed call: id `call_<choice>_<n>` as the spec names them."""
    return {
        "id": f"call_{choice}_{ordinal}",
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def rewrite_gemma4_choices(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI-shaped answer with each choice's content parsed: thinking to `reasoning_content`, inline
    calls to `tool_calls` (finish_reason `tool_calls`), the rest trimmed (empty -> null)."""
    choices = body.get("choices")
    if not isinstance(choices, list):
        return body
    return {**body, "choices": [_rewrite_choice(c, n) for n, c in enumerate(choices)]}


def _rewrite_choice(choice: Any, position: int) -> Any:
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict) or not isinstance(content := message.get("content"), str):
        return choice
    parser = Gemma4Parser()
    first, last = parser.feed(content), parser.finish()
    index = choice.get("index", position)
    number = index if isinstance(index, int) else position
    message = {**message, "content": (first.text + last.text) or None}
    if reasoning := first.reasoning + last.reasoning:
        earlier = message.get("reasoning_content")
        both = isinstance(earlier, str) and earlier
        message["reasoning_content"] = f"{earlier}\n\n{reasoning}" if both else reasoning
    calls = first.calls + last.calls
    if not calls:
        return {**choice, "message": message}
    existing = message.get("tool_calls") if isinstance(message.get("tool_calls"), list) else []
    message["tool_calls"] = [*existing, *(tool_call(c, number, n) for n, c in enumerate(calls))]
    return {**choice, "message": message, "finish_reason": "tool_calls"}
