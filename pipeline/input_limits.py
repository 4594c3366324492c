"""Caps on hostile input that the JSON parser and the body-size limit do not cover: nesting depth (checked
on the raw bytes before parsing), the number of messages (checked on the raw structure before any model
validates them) and message content length (checked once after any codec decoded: text characters plus the
decoded bytes of any image, document or audio, so base64's third more does not count against the caps)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import numpy as np
import orjson

from pipeline.errors import InvalidRequest
from pipeline.types import Message

__all__ = ["check_content", "check_json_depth", "check_json_integers", "check_message_count"]

_STEP = np.zeros(256, dtype=np.int8)  # +1 opens a level, -1 closes one
_STEP[list(b"[{")] = 1
_STEP[list(b"]}")] = -1
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in b'[]{}"')


def check_json_depth(raw: bytes, limit: int) -> None:
    """400 when the body nests arrays/objects deeper than ``limit``, checked before parsing.

    The usual body has fewer brackets than the limit and returns at once. Otherwise, all in C: drop
    escaped backslashes and quotes, keep only quotes and brackets, zero the brackets inside strings
    (odd quote count so far), and take the maximum running sum. Unbalanced input is left to the parser.
    Measured: ~10 ms for a 2.5 MiB body of 20 000 messages, 100-170 ms for 10 MiB of brackets.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return
    structure = raw.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_STRUCTURE)
    chars = np.frombuffer(structure, dtype=np.uint8)
    steps = _STEP[chars]
    steps[(np.cumsum(chars == ord('"'), dtype=np.int32) & 1).astype(bool)] = 0
    if len(steps) and int(np.cumsum(steps, dtype=np.int32).max()) > limit:
        raise InvalidRequest(f"JSON nesting is deeper than {limit} levels", field="body")


_LONG_DIGITS = re.compile(rb"\d{19,}")  # 2**63 has 19 digits: anything shorter fits
_INT_MIN, _UINT_MAX = -(2**63), 2**64 - 1  # what the upstream encoder (orjson) can write


class _IntegerOutOfRange(Exception):
    pass


def _integer(text: str) -> int:
    if len(text) > 21 or not _INT_MIN <= (value := int(text)) <= _UINT_MAX:
        raise _IntegerOutOfRange(text if len(text) <= 40 else text[:40] + "…")
    return value


def check_json_integers(raw: bytes) -> None:
    """400 when the body holds an integer outside the 64-bit range. Such a number passes validation
    (Python's ints are unbounded) and then cannot be written to the provider, the log or the analytics
    store. The usual body has no run of 19 digits and returns at once; otherwise it is parsed once, and a
    digit run inside a string is not a number. Malformed JSON is left to the parser that names the error."""
    if not _LONG_DIGITS.search(raw):
        return
    try:
        json.loads(raw, parse_int=_integer)
    except _IntegerOutOfRange:  # the number itself is not echoed: it may be a secret typed as a number
        raise InvalidRequest("an integer is out of range: JSON integers must fit in 64 bits", field="body") from None
    except (ValueError, RecursionError):
        return


def check_message_count(raw: bytes, limit: int, path: tuple[str, ...]) -> None:
    """400 when the body's message array (at `path`, e.g. ("request", "messages")) has more than ``limit``
    entries, checked before pydantic validates them: it would validate, and report on, every entry of a huge
    array (measured: 0.5 s for 160 000 tiny messages in 2 MiB, 3.4 s for 500 000 numbers in 1 MB).

    An array of N entries holds N - 1 commas, so a body with fewer commas than the limit (the usual one)
    returns at once. Otherwise the bytes are parsed once in C (orjson: ~45 ms for those 2 MiB) and the
    array's length read. Malformed JSON and other shapes are left to the codec, which names the error.
    """
    if raw.count(b",") < limit:
        return
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return
    for name in path:
        if not isinstance(value, dict):
            return
        value = value.get(name)
    if isinstance(value, list) and len(value) > limit:
        raise InvalidRequest(f"too many messages: {len(value)} > {limit}", field=".".join(path))


def check_content(messages: Sequence[Message], *, max_chars: int, max_total_chars: int, field: str) -> None:
    """400 when one message's content (text characters + decoded media bytes) or all of them together are
    longer than the configured caps."""
    total = 0
    what = "characters of content"
    for index, message in enumerate(messages):
        size = len(message.content)
        if message.parts:
            size += sum(part.size for part in message.media)
            what = "characters and decoded media bytes of content"
        if size > max_chars:
            raise InvalidRequest(
                f"message {index} has {size} {what}; the limit is {max_chars}", field=f"{field}.{index}.content"
            )
        total += size
    if total > max_total_chars:
        raise InvalidRequest(f"the messages hold {total} {what}; the limit is {max_total_chars}", field=field)
