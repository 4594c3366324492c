"""The JSON log: redaction of secrets, and the buffered writer's bounds and flushing."""

from __future__ import annotations

import io
import json

import structlog

from pipeline.logging import QueuedStream, RequestLines, configure_logging, redact


def test_secret_attributes_are_redacted_but_ids_and_counters_are_not() -> None:
    event = redact(
        None,
        "info",
        {
            "authorization": "Bearer x",
            "api_key": "k",
            "admin_token": "t",
            "password": "p",
            "api_key_id": "id1",
            "input_tokens": 5,
            "model": "m",
        },
    )
    assert event == {
        "authorization": "[REDACTED]",
        "api_key": "[REDACTED]",
        "admin_token": "[REDACTED]",
        "password": "[REDACTED]",
        "api_key_id": "id1",
        "input_tokens": 5,
        "model": "m",
    }


def test_log_lines_are_json_with_time_and_level_and_flushed_on_close() -> None:
    out = io.BytesIO()
    stream = configure_logging("info", stream=out)
    structlog.get_logger("t").info("hello", provider_key="sk-secret", n=1)
    structlog.get_logger("t").debug("hidden")
    stream.close()
    lines = out.getvalue().decode().splitlines()
    assert len(lines) == 1
    line = json.loads(lines[0])
    assert line["event"] == "hello" and line["level"] == "info" and line["n"] == 1
    assert line["provider_key"] == "[REDACTED]" and line["time"].endswith("Z")
    configure_logging("error")  # leave the suite quiet


def test_request_lines_match_structlogs_shape_and_follow_the_level() -> None:
    out = io.BytesIO()
    stream = configure_logging("info", stream=out)
    structlog.get_logger("t").info("request", request_id="r1", status=200)
    lines = RequestLines(stream, level="info")
    assert lines.enabled
    lines.write("request", {"request_id": "r1", "status": 200})
    stream.close()
    via_structlog, fast = (json.loads(line) for line in out.getvalue().decode().splitlines())
    assert via_structlog.keys() == fast.keys() and fast["level"] == "info" and fast["time"].endswith("Z")
    quiet = io.BytesIO()
    stream = configure_logging("warning", stream=quiet)
    for hidden in (RequestLines(stream, level="warning"), RequestLines()):  # level hides info / no stream
        assert not hidden.enabled
        hidden.write("request", {"request_id": "r2"})
    stream.close()
    assert quiet.getvalue() == b""
    configure_logging("error")  # leave the suite quiet


def test_buffer_is_bounded_when_the_output_is_stuck() -> None:
    stream = QueuedStream(io.BytesIO(), interval=60, max_pending=3)
    for i in range(5):
        stream.msg(b"line %d" % i)
    assert stream.dropped == 2
    stream.close()
