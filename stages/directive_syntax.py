"""Grammar of in-band ``@@tokenhub`` directives (routing spec section 13): parsing and stripping.

Pure functions over messages; the stage that merges the result into the request policy lives elsewhere.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.types import MediaPart, Message

__all__ = [
    "END_MARKER",
    "MARKER",
    "SCAN_WINDOW_BYTES",
    "DirectiveError",
    "Directives",
    "parse_directives",
    "strip_directives",
]

MARKER = "@@tokenhub"
END_MARKER = "@@end"
SCAN_WINDOW_BYTES = 2048

# Numbers must be plain ASCII decimals: Python's int()/float() would also take underscores, Unicode digits,
# surrounding whitespace and "nan"/"inf", so the syntax is checked before converting.
_INT_RE = re.compile(r"[+-]?[0-9]+")
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")

_NOTE_VALUE_MAX = 64  # notes end up in logs; keep client-controlled text short


class DirectiveError(ValueError):
    """A directive the request must be rejected for (400); only invalid ``output_schema`` JSON."""


@dataclass(frozen=True, slots=True)
class Directives:
    mode: str | None = None
    max_budget_usd: float | None = None
    max_latency_ms: int | None = None
    min_weight: int | None = None
    iterations: int | None = None  # /v1/plan only: orchestration rounds
    output_schema: Any = None  # parsed JSON value
    ignored: tuple[str, ...] = ()  # notes on tokens that were ignored

    def as_dict(self) -> dict[str, Any]:
        """Only the keys that were set, for logging and responses."""
        out: dict[str, Any] = {}
        for name in ("mode", "max_budget_usd", "max_latency_ms", "min_weight", "iterations", "output_schema"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.ignored:
            out["ignored"] = list(self.ignored)
        return out


def parse_directives(messages: Sequence[Message], allowed_modes: Collection[str]) -> Directives | None:
    """The first directive in the user messages, or None when there is none.

    Raises DirectiveError when the directive's ``output_schema`` is not valid JSON.
    """
    for message in messages:
        if message.role != "user":
            continue
        tokens = _directive_tokens(_scan_window(message.content))
        if tokens is not None:
            return _build(tokens, allowed_modes)
    return None


def strip_directives(messages: Sequence[Message]) -> list[Message]:
    """Messages with the first ``@@tokenhub`` directive of each content removed (any role, whole content).

    Changed messages are new objects; the inputs are never mutated.
    """
    out: list[Message] = []
    for message in messages:
        stripped = _strip_content(message.content)
        if stripped is not None and message.parts:  # with media, the text parts are what the provider is sent
            parts = tuple(_strip_part(part) for part in message.parts)
            out.append(dataclasses.replace(message, content=stripped, parts=parts))
        else:
            out.append(message if stripped is None else dataclasses.replace(message, content=stripped))
    return out


def _strip_part(part: str | MediaPart) -> str | MediaPart:
    if isinstance(part, str) and (stripped := _strip_content(part)) is not None:
        return stripped
    return part


def _scan_window(content: str) -> str:
    """The first SCAN_WINDOW_BYTES bytes of ``content`` as UTF-8, cut back to a character boundary."""
    # Every character is at least one byte, so this prefix covers the window without encoding huge contents.
    head = content[:SCAN_WINDOW_BYTES]
    # surrogatepass: a lone surrogate (legal in a JSON-decoded str) must not crash the scan.
    raw = head.encode("utf-8", "surrogatepass")
    if len(raw) <= SCAN_WINDOW_BYTES:
        return head
    cut = SCAN_WINDOW_BYTES
    while cut > 0 and raw[cut] & 0xC0 == 0x80:  # raw[cut] is a continuation byte: a character straddles the cut
        cut -= 1
    return raw[:cut].decode("utf-8", "surrogatepass")


def _directive_tokens(window: str) -> list[str] | None:
    """The ``key=value`` candidates of the first directive in ``window``; None if it holds no usable one."""
    idx = window.find(MARKER)
    if idx < 0:
        return None
    rest = window[idx + len(MARKER) :]
    nl = rest.find("\n")
    first_line = rest if nl < 0 else rest[:nl]
    if first_line.strip():
        return first_line.split()
    if nl < 0:
        return None  # bare marker at the end of the window
    end = rest.find(END_MARKER, nl + 1)
    if end < 0:
        return None  # unterminated block: the caller keeps scanning later messages
    return [line.strip() for line in rest[nl + 1 : end].split("\n") if line.strip()]


def _build(tokens: list[str], allowed_modes: Collection[str]) -> Directives:
    values: dict[str, Any] = {}
    ignored: list[str] = []
    for token in tokens:
        key, sep, raw = token.partition("=")
        if not sep:
            ignored.append(f"token {_clip(token)} has no '='")
            continue
        # Later valid values override earlier ones within one directive; invalid ones never clear a valid one.
        if key == "mode":
            if raw in allowed_modes:
                values["mode"] = raw
            else:
                ignored.append(f"mode {_clip(raw)} is not an allowed mode")
        elif key == "budget":
            budget = _parse_float(raw)
            if budget is not None and 0 < budget <= 100:
                values["max_budget_usd"] = budget
            else:
                ignored.append(f"budget {_clip(raw)} is not a number in (0, 100]")
        elif key == "latency":
            latency = _parse_int(raw)
            if latency is not None and 0 < latency <= 300_000:
                values["max_latency_ms"] = latency
            else:
                ignored.append(f"latency {_clip(raw)} is not an integer in (0, 300000]")
        elif key == "min_weight":
            weight = _parse_int(raw)
            if weight is not None and 0 <= weight <= 1000:
                values["min_weight"] = weight
            else:
                ignored.append(f"min_weight {_clip(raw)} is not an integer in [0, 1000]")
        elif key == "iterations":
            iterations = _parse_int(raw)
            if iterations is not None and 0 <= iterations <= 10:
                values["iterations"] = iterations
            else:
                ignored.append(f"iterations {_clip(raw)} is not an integer in [0, 10]")
        elif key == "output_schema":
            schema = _parse_json(raw)
            if schema is None:
                # JSON null cannot be told apart from "no schema"; say so rather than drop it silently.
                ignored.append("output_schema null means no schema")
            else:
                values["output_schema"] = schema
        else:
            ignored.append(f"unknown key {_clip(key)}")
    return Directives(**values, ignored=tuple(ignored))


def _parse_int(raw: str) -> int | None:
    return int(raw) if _INT_RE.fullmatch(raw) else None


def _parse_float(raw: str) -> float | None:
    # 1e400 becomes inf and 1e-400 becomes 0.0; both then fail the range check, as Go's ERANGE would.
    return float(raw) if _FLOAT_RE.fullmatch(raw) else None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_json(raw: str) -> Any:
    try:
        # parse_constant: NaN/Infinity are Python extensions, not JSON.
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # RecursionError: deeply nested arrays fit in 2048 bytes
        raise DirectiveError("invalid output_schema directive JSON") from exc


def _clip(text: str) -> str:
    """The client's text quoted for a note, at most ~_NOTE_VALUE_MAX characters once quoted: clipped after
    quoting, since repr writes an unprintable character as up to ten ('\\U0001da8c')."""
    shown = repr(text[: _NOTE_VALUE_MAX + 1])
    return shown if len(shown) <= _NOTE_VALUE_MAX + 2 else shown[:_NOTE_VALUE_MAX] + "..."


def _strip_content(content: str) -> str | None:
    """``content`` without its first directive, or None when it has no marker."""
    idx = content.find(MARKER)
    if idx < 0:
        return None
    after = idx + len(MARKER)
    nl = content.find("\n", after)
    first_line = content[after:] if nl < 0 else content[after:nl]
    if nl >= 0 and not first_line.strip():
        end = content.find(END_MARKER, nl + 1)
        if end >= 0:
            cut = end + len(END_MARKER)
            if content.startswith("\n", cut):
                cut += 1
            return content[:idx] + content[cut:]
    # Single-line form, or a block without @@end: drop the marker's line only.
    if nl >= 0:
        return content[:idx] + content[nl + 1 :]
    # Last line: spec says "keep only the trimmed text before the marker" (Go strings.TrimSpace: both ends).
    return content[:idx].strip()
