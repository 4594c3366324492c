"""Hypothesis fuzzing of the two parsers that read text TokenHub does not control: the `@@tokenhub` directive
parser (stages/directive_syntax.py, run by stages/directives.py on every user message) and the upstream SSE
reader (adapters/sse.py) with the stream layer and chunk parsers above it (adapters/stream.py).

Bounded for CI: a few hundred examples per property, no deadline, no example database.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.anthropic_stream import AnthropicEventParser
from adapters.coarse_timeout import CoarseTimeouts
from adapters.errors import ProviderError
from adapters.openai import OpenAIChunkParser
from adapters.sse import MAX_LINE_BYTES, SseEvent, StreamTooLong, read_events
from adapters.stream import UpstreamStream
from pipeline.context import Policy, RequestContext
from pipeline.errors import InvalidRequest
from pipeline.modes import ROUTING_MODES
from pipeline.types import ChatRequest, Message, StreamDelta
from stages.directive_syntax import (
    END_MARKER,
    MARKER,
    SCAN_WINDOW_BYTES,
    DirectiveError,
    parse_directives,
    strip_directives,
)
from stages.directives import Directives, DirectivesOptions

FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# ---- directives ------------------------------------------------------------------------------------------

# Text that often holds the grammar's pieces: markers, keys, '=', newlines, numbers, JSON, odd characters.
_PIECES = st.sampled_from(
    [
        MARKER,
        END_MARKER,
        "\n",
        " ",
        "=",
        "mode",
        "budget",
        "latency",
        "min_weight",
        "iterations",
        "output_schema",
        "cheap",
        "fast",
        "1e400",
        "-0",
        "0.5",
        "{",
        "}",
        "[",
        "]",
        '"',
        "null",
        "NaN",
        "é",
        "�",
        "\r",
    ]
)
directive_text = st.lists(st.one_of(_PIECES, st.text(max_size=20)), max_size=40).map("".join)
roles = st.sampled_from(["user", "assistant", "system", "tool"])
messages = st.lists(st.builds(Message, roles, directive_text), max_size=4)


@FUZZ
@given(messages)
def test_the_directive_parser_raises_only_its_documented_error(msgs: list[Message]) -> None:
    try:
        found = parse_directives(msgs, ROUTING_MODES)
    except DirectiveError:
        return
    if found is not None:
        assert all(len(note) < 200 for note in found.ignored)  # client text in notes is clipped
        json.dumps(found.as_dict())  # what the log line and the response carry is JSON


@FUZZ
@given(messages)
def test_stripping_removes_each_contents_first_directive_and_nothing_else(msgs: list[Message]) -> None:
    stripped = strip_directives(msgs)
    assert len(stripped) == len(msgs)
    for before, after in zip(msgs, stripped, strict=True):
        assert after.role == before.role
        if MARKER not in before.content:
            assert after is before
        else:
            assert after.content.count(MARKER) <= before.content.count(MARKER) - 1


@FUZZ
@given(messages)
async def test_the_directives_stage_refuses_only_with_a_400(msgs: list[Message]) -> None:
    """The stage as a request runs it: the parser, then the output schema check; a 400 is the only refusal."""
    ctx = RequestContext(request_id="th-x", scope="chat", client_ip="", request=ChatRequest(messages=msgs))
    ctx.policy = Policy()
    reached: list[bool] = []

    async def after(ctx: RequestContext) -> None:
        reached.append(True)

    try:
        await Directives(None, DirectivesOptions())(ctx, after)  # type: ignore[arg-type]
    except InvalidRequest as exc:
        assert exc.status == 400 and exc.field and exc.field.startswith("directive.")
        return
    assert reached == [True] and len(ctx.request.messages) == len(msgs)


directive_values = st.fixed_dictionaries(
    {},
    optional={
        "mode": st.sampled_from(sorted(ROUTING_MODES)),
        "budget": st.floats(min_value=0.0001, max_value=100, allow_nan=False),
        "latency": st.integers(1, 300_000),
        "min_weight": st.integers(0, 1000),
        "iterations": st.integers(0, 10),
        "output_schema": st.fixed_dictionaries({"type": st.sampled_from(["object", "string", "array"])}),
    },
)
_FIELDS = {"budget": "max_budget_usd", "latency": "max_latency_ms"}
filler = st.text(st.characters(blacklist_characters="@\r", blacklist_categories=("Cs",)), max_size=60)


def _render(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value, separators=(',', ':')) if key == 'output_schema' else value}"


@FUZZ
@given(directive_values, st.booleans(), filler, filler)
def test_a_rendered_directive_parses_back_to_its_values_and_strips_away(
    values: dict[str, Any], block: bool, before: str, after: str
) -> None:
    tokens = [_render(key, value) for key, value in values.items()] or ["mode=cheap"]
    body = f"{MARKER}\n" + "\n".join(tokens) + f"\n{END_MARKER}\n" if block else f"{MARKER} " + " ".join(tokens) + "\n"
    before = before.replace("\n", " ") + "\n" if before else ""
    content = before + body + after
    found = parse_directives([Message("user", content)], ROUTING_MODES)
    if len(content[: len(before) + len(body)].encode("utf-8")) > SCAN_WINDOW_BYTES:
        return  # beyond the scan window: not a directive, by design
    assert found is not None and found.ignored == ()
    expected = {_FIELDS.get(key, key): value for key, value in values.items()} or {"mode": "cheap"}
    assert found.as_dict() == expected
    [stripped] = strip_directives([Message("user", content)])
    assert stripped.content == before + after
    assert parse_directives([stripped], ROUTING_MODES) is None


# ---- SSE reader ------------------------------------------------------------------------------------------


class _Body:
    """A response body as read_events reads it (adapters/sse.ByteStream): the byte stream in the given pieces."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = list(chunks)

    async def readany(self) -> bytes:
        return self._chunks.pop(0) if self._chunks else b""


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True) if b > a]


async def _read(chunks: list[bytes]) -> tuple[list[tuple[str, str]], str]:
    events: list[tuple[str, str]] = []
    try:
        async for event in read_events(_Body(chunks), idle_timeout=5, timeouts=CoarseTimeouts()):
            events.append((event.event, event.data))
    except StreamTooLong as exc:
        return events, type(exc).__name__
    return events, ""


# Streams built from SSE's pieces (fields, line ends of every kind, comments, multi-byte characters) and noise.
_SSE_PIECES = st.sampled_from(
    [
        b"data: ",
        b"data:",
        b"event: ",
        b"event:",
        b": ping",
        b"id: 1",
        b"retry: 5",
        b"\n",
        b"\r\n",
        b"\r",
        b"\n\n",
        b"[DONE]",
        b'{"a": 1}',
        "é中😀".encode(),
        b"\xff\xfe",
        b"\xe4\xb8",
        b" ",
        b":",
    ]
)
sse_bytes = st.lists(st.one_of(_SSE_PIECES, st.binary(max_size=12)), max_size=60).map(b"".join)


@FUZZ
@given(sse_bytes, st.lists(st.integers(0, 800), max_size=20))
async def test_the_sse_reader_yields_the_same_events_whatever_the_chunk_boundaries(
    data: bytes, cuts: list[int]
) -> None:
    whole = await _read([data])
    assert await _read(_split(data, cuts)) == whole
    assert await _read([data[i : i + 1] for i in range(len(data))]) == whole  # byte by byte


events = st.lists(
    st.tuples(
        st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=10),
        st.text(st.characters(blacklist_characters="\r", blacklist_categories=("Cs",)), min_size=1, max_size=40),
    ),
    max_size=8,
)


@FUZZ
@given(events, st.sampled_from(["\n", "\r\n"]), st.lists(st.integers(0, 400), max_size=10))
async def test_sse_events_round_trip_through_the_reader(
    sent: list[tuple[str, str]], newline: str, cuts: list[int]
) -> None:
    wire = ""
    for name, data in sent:
        if name:
            wire += f"event: {name}{newline}"
        wire += "".join(f"data: {line}{newline}" for line in data.split("\n"))
        wire += ": keep-alive" + newline + newline
    got, error = await _read(_split(wire.encode(), cuts))
    assert error == ""
    assert got == sent


async def test_an_overlong_line_is_refused_however_it_arrives() -> None:
    line = b"data: " + b"x" * MAX_LINE_BYTES + b"\n\n"
    assert await _read([line]) == ([], "StreamTooLong")
    assert await _read(_split(line, list(range(0, len(line), 1 << 16)))) == ([], "StreamTooLong")


async def test_an_endless_event_is_refused_instead_of_growing_without_bound() -> None:
    """Data lines without the blank line that ends an event: bounded like one long line."""
    line = b"data: " + b"y" * (1 << 20) + b"\n"
    chunks = [line] * 9
    assert await _read(chunks) == ([], "StreamTooLong")


# ---- the stream layer and the chunk parsers above the reader -----------------------------------------------


class _Response(_Body):
    """An open upstream stream as UpstreamStream reads it: its body, and the connection's end."""

    def close(self) -> None:
        pass

    def release(self) -> None:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
_KEYS = ["type", "index", "delta", "choices", "content_block", "message", "usage", "error", "finish_reason"]
_KINDS = ["content_block_delta", "content_block_start", "content_block_stop", "message_start", "message_delta"]
_KINDS += ["message_stop", "error", "ping", "text_delta", "input_json_delta", "tool_use", "text", "thinking"]
chunk_objects = st.recursive(
    st.sampled_from(_KINDS) | json_values,
    lambda inner: (
        st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=6), inner, max_size=4) | st.lists(inner, max_size=3)
    ),
    max_leaves=20,
)
upstream_events = st.lists(
    st.tuples(st.sampled_from(["", *_KINDS]), st.one_of(chunk_objects.map(json.dumps), st.just("[DONE]"))),
    max_size=12,
)


@FUZZ
@pytest.mark.parametrize("parser", [OpenAIChunkParser, AnthropicEventParser])
@given(upstream_events)
async def test_a_garbage_stream_yields_deltas_or_a_provider_error_never_a_crash(
    parser: type, sent: list[tuple[str, str]]
) -> None:
    wire = b"".join(
        (f"event: {name}\n" if name else "").encode() + b"data: " + data.encode() + b"\n\n" for name, data in sent
    )
    malformed: list[int] = []
    stream = UpstreamStream(
        _Response([wire]),  # type: ignore[arg-type]
        parser(),
        provider_id="fuzz",
        idle_timeout=5,
        timeouts=CoarseTimeouts(),
        on_malformed=lambda: malformed.append(1),
    )

    try:
        async for delta in stream:
            assert isinstance(delta, StreamDelta)
    except ProviderError:
        pass
    assert len(malformed) <= len(sent)


def test_the_fuzz_helpers_split_without_losing_bytes() -> None:
    data = bytes(range(50))
    assert b"".join(_split(data, [7, 3, 3, 80, 0])) == data
    assert asyncio.run(_read([b"data: a\n", b"\n"])) == ([("", "a")], "")
    assert SseEvent("", "x").data == "x"
