"""A stream's opening (its HTTP head, the chunk prefix, the role chunk) is rendered while its first token is awaited
(`StreamSink.expect`), so the first token waits only for its own bytes; what reaches the client must be what
opening afresh would have sent: the served model, the attempts so far, a Date true to the second."""

from __future__ import annotations

import json
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from pipeline.context import Attempt, Candidate, RequestContext
from pipeline.edge.lane import HEAD_FRESH_SECS, LaneRequest
from pipeline.edge.openai import OpenAIStreamSink
from pipeline.types import ChatRequest, Message, ModelInfo, StreamDelta
from pipeline.web import REQUEST_ID


class _Loop:
    """The connection's loop clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def time(self) -> float:
        return self.now


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False


class _Connection:
    """What a LaneStreamResponse uses of its lane connection."""

    def __init__(self) -> None:
        self._loop = _Loop()
        self.transport = _Transport()
        self.writing_paused = False


def _candidate(model_id: str) -> Candidate:
    return Candidate(ModelInfo(model_id, f"{model_id}-provider"), 1.0, 0.0)


def _sink() -> tuple[OpenAIStreamSink, _Connection, RequestContext]:
    connection = _Connection()
    request = LaneRequest("/v1/chat/completions", CIMultiDictProxy(CIMultiDict()), "127.0.0.1", b"", 0, connection)
    request[REQUEST_ID] = "th-1"
    ctx = RequestContext("th-1", "chat", "127.0.0.1", ChatRequest(messages=[Message("user", "hi")]))
    return OpenAIStreamSink(request, "th-1", include_usage=False), connection, ctx


def _sent(connection: _Connection) -> tuple[dict[str, str], dict[str, Any]]:
    """The head's fields and the first event's JSON, from what was written."""
    raw = b"".join(connection.transport.written).decode()
    head, _, body = raw.partition("\r\n\r\n")
    fields = dict(line.split(": ", 1) for line in head.split("\r\n")[1:])
    first = body.split("\r\n", 1)[1].split("\n\n")[0]
    return fields, json.loads(first.removeprefix("data: "))


async def _open_and_send(sink: OpenAIStreamSink, ctx: RequestContext, served: Candidate) -> None:
    ctx.served_by = served
    await sink.open(ctx)
    await sink.send(StreamDelta(content="hello"))


async def test_what_expect_rendered_is_what_the_first_token_carries() -> None:
    sink, connection, ctx = _sink()
    ctx.attempts.append(Attempt("a", "a-provider", "transient", "503", 1.0))
    served = _candidate("b")
    sink.expect(ctx, served)
    sink.response.headers["X-Late"] = "set after the head was rendered"
    await _open_and_send(sink, ctx, served)
    fields, first = _sent(connection)
    assert len(connection.transport.written) == 1  # head, role chunk and first token: one write
    assert fields["X-Negotiated-Model"] == "b" and fields["X-Provider"] == "b-provider"
    assert fields["X-TokenHub-Attempts"] == "a=transient, b=ok" and fields["X-Request-Id"] == "th-1"
    assert "X-Late" not in fields  # sent as rendered at expect
    assert first["model"] == "b" and first["choices"][0]["delta"]["role"] == "assistant"


async def test_a_first_token_from_another_candidate_is_opened_afresh() -> None:
    sink, connection, ctx = _sink()
    sink.expect(ctx, _candidate("a"))
    await _open_and_send(sink, ctx, _candidate("b"))
    fields, first = _sent(connection)
    assert fields["X-Negotiated-Model"] == "b" and fields["X-TokenHub-Attempts"] == "b=ok"
    assert first["model"] == "b"


async def test_an_attempt_ended_since_expect_is_in_the_attempts_header() -> None:
    sink, connection, ctx = _sink()
    served = _candidate("b")
    sink.expect(ctx, served)
    ctx.attempts.append(Attempt("a", "a-provider", "transient", "cut", 1.0))
    await _open_and_send(sink, ctx, served)
    fields, _ = _sent(connection)
    assert fields["X-TokenHub-Attempts"] == "a=transient, b=ok"


async def test_a_head_older_than_its_freshness_is_rendered_again() -> None:
    sink, connection, ctx = _sink()
    served = _candidate("b")
    sink.expect(ctx, served)
    sink.response.headers["X-Late"] = "seen only in a head rendered at open"
    connection._loop.now += HEAD_FRESH_SECS + 0.01  # the first token came late: the Date would be stale
    await _open_and_send(sink, ctx, served)
    fields, first = _sent(connection)
    assert fields["X-Late"] == "seen only in a head rendered at open"
    assert fields["X-Negotiated-Model"] == "b" and first["model"] == "b"


async def test_a_sink_opened_without_expect_renders_everything_at_open() -> None:
    sink, connection, ctx = _sink()
    await _open_and_send(sink, ctx, _candidate("b"))
    fields, first = _sent(connection)
    assert fields["X-Negotiated-Model"] == "b" and fields["Transfer-Encoding"] == "chunked"
    assert first["model"] == "b" and first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
