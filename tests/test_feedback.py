"""Request ids are ours, and /v1/feedback finds a key's own requests only, keeps comments, and is rate-limited."""

from __future__ import annotations

import io
import json
import os
import re
import time
from typing import Any

import pytest

from pipeline.logging import RequestLines, configure_logging
from pipeline.web import new_request_id, request_id_started
from stages.sinks.log_line import LogLineSink
from tests.conftest import Hub

OUR_ID = re.compile(r"th-[0-9a-f]{12}-[0-9a-f]{24}")


async def _setup(hub: Hub) -> tuple[str, str]:
    await hub.add_provider()
    await hub.add_model("gpt-test", weight=5, input_per_1k=0.001, output_per_1k=0.001)
    return await hub.new_key(), await hub.new_key()


async def _rate(hub: Hub, key: str | None, request_id: str, score: float, **extra: Any) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    headers.update(extra.pop("headers", {}))
    resp = await hub.client.post(
        "/v1/feedback", json={"request_id": request_id, "score": score, **extra}, headers=headers
    )
    return resp.status, await resp.json()


async def _rows(hub: Hub, **filters: str) -> list[dict[str, Any]]:
    query = "&".join(f"{name}={value}" for name, value in filters.items())
    return (await hub.admin("GET", f"/logs?{query}", expect=200))["logs"]


def test_ids_are_unique_unguessable_and_say_when_they_started() -> None:
    before = time.time()
    ids = [new_request_id() for _ in range(2000)]
    assert len(set(ids)) == 2000 and all(OUR_ID.fullmatch(i) for i in ids)
    # 96 random bits each: no two share even their first 32 random bits (a counter would share most of them)
    assert len({i[16:24] for i in ids}) == 2000
    started = request_id_started(ids[0])
    assert started is not None and before - 0.001 <= started <= time.time()
    assert request_id_started(ids[0] + ".1-plan") == started  # a /v1/plan step's id names its plan's
    assert request_id_started("shared-2") is None and request_id_started("th-5f1c0e2a9b7d-00000042") is None


def test_a_forked_process_never_repeats_its_parents_ids() -> None:
    new_request_id()  # the parent's random buffer now holds ids it has not handed out yet
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave without running any test machinery
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.close(write)
    child_id = os.read(read, 100).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert OUR_ID.fullmatch(child_id) and child_id[16:] != new_request_id()[16:]


async def test_a_client_id_is_correlation_only_and_cannot_reach_another_keys_row(hub: Hub) -> None:
    key_a, key_b = await _setup(hub)
    out = io.BytesIO()
    stream = configure_logging("info", stream=out)
    hub.services.recorder.add(LogLineSink(RequestLines(stream, level="info")))  # what `tokenhub serve` wires
    try:
        _, _, resp_a = await hub.chat(key_a, headers={"X-Request-Id": "shared-2"})
        _, _, resp_b = await hub.chat(key_b, headers={"X-Request-Id": "shared-2"})
    finally:
        stream.close()
        configure_logging("error")
    id_a, id_b = resp_a.headers["X-Request-Id"], resp_b.headers["X-Request-Id"]
    assert OUR_ID.fullmatch(id_a) and OUR_ID.fullmatch(id_b) and id_a != id_b
    assert resp_a.headers["X-Client-Request-Id"] == resp_b.headers["X-Client-Request-Id"] == "shared-2"
    lines = [json.loads(line) for line in out.getvalue().decode().splitlines()]
    logged = {line["request_id"]: line["client_request_id"] for line in lines if line["event"] == "request"}
    assert logged == {id_a: "shared-2", id_b: "shared-2"}

    # B can reach neither A's request by the shared client id nor by A's own id (in memory or in DuckDB)
    assert (await _rate(hub, key_b, "shared-2", 0.0))[0] == 404
    status, body = await _rate(hub, key_b, id_a, 0.0, comment="B was here")
    assert status == 404 and body["error"]["type"] == "not_found" and body["error"]["field"] == "request_id"
    await hub.services.records.flush()
    hub.services.recent_requests._records.clear()
    assert (await _rate(hub, key_b, id_a, 0.0))[0] == 404
    status, body = await _rate(hub, key_a, id_a, 0.5, comment="fine")
    assert status == 200 and body["request_id"] == id_a and body["score"] == 0.5
    assert (await _rate(hub, key_b, id_b, 0.9))[0] == 200
    rows = {r["request_id"]: r for r in await _rows(hub, client_request_id="shared-2")}
    assert rows.keys() == {id_a, id_b}
    assert (rows[id_a]["feedback_score"], rows[id_a]["feedback_comment"]) == (0.5, "fine")
    assert (rows[id_b]["feedback_score"], rows[id_b]["feedback_comment"]) == (0.9, None)
    assert all(r["client_request_id"] == "shared-2" for r in rows.values())


async def test_a_malformed_client_id_is_dropped_and_every_response_carries_ours(hub: Hub) -> None:
    key, _ = await _setup(hub)
    _, body, resp = await hub.chat(None, headers={"X-Request-Id": "bad id"})  # an error, before any pipeline
    assert OUR_ID.fullmatch(resp.headers["X-Request-Id"]) and "X-Client-Request-Id" not in resp.headers
    assert body["error"]["request_id"] == resp.headers["X-Request-Id"]
    status, body = await _rate(hub, key, "th-never-seen", 0.5, headers={"X-Request-Id": "fb-1"})
    assert status == 404 and "made with this key" in body["error"]["message"]
    stream = await hub.client.post(
        "/v1/chat",
        json={"request": {"messages": [{"role": "user", "content": "hi"}], "stream": True}},
        headers={"Authorization": f"Bearer {key}", "X-Request-Id": "stream-1"},
    )
    await stream.read()
    assert stream.status == 200 and stream.headers["X-Client-Request-Id"] == "stream-1"
    (row,) = await _rows(hub, client_request_id="stream-1")
    assert row["request_id"] == stream.headers["X-Request-Id"]


async def test_a_comment_on_a_queued_record_is_written_with_it(hub: Hub) -> None:
    key, _ = await _setup(hub)
    writer = hub.services.records
    await writer.stop()  # the writer is paused: the record stays queued until the flush below
    _, _, resp = await hub.chat(key)
    request_id = resp.headers["X-Request-Id"]
    status, body = await _rate(hub, key, request_id, 0.25, comment="missed the point")
    assert status == 200 and writer.depth == 1  # rated while still in the queue
    await writer.flush()
    (row,) = await _rows(hub, request_id=request_id)
    assert (row["feedback_score"], row["feedback_comment"]) == (0.25, "missed the point")
    assert row["reward"] == pytest.approx(body["reward"])


async def test_a_request_older_than_the_window_cannot_be_rated(make_hub: Any) -> None:
    hub = await make_hub(feedback_window_secs=60)
    key, _ = await _setup(hub)
    _, _, resp = await hub.chat(key)
    fresh = resp.headers["X-Request-Id"]
    stale_ms = int((time.time() - 120) * 1000)
    stale = f"th-{stale_ms:012x}-{fresh[-24:]}"
    status, body = await _rate(hub, key, stale, 0.5)
    assert status == 409 and "older than the feedback window" in body["error"]["message"]
    assert (await _rate(hub, key, fresh, 0.5))[0] == 200


async def test_feedback_is_rate_limited_per_ip_and_per_key(make_hub: Any) -> None:
    hub = await make_hub(
        feedback_rate_limit_rps=0.001, feedback_rate_limit_burst=2, trusted_proxies="127.0.0.1/32,::1/128"
    )
    key_a, key_b = await _setup(hub)
    _, _, resp = await hub.chat(key_a)
    id_a = resp.headers["X-Request-Id"]

    def ip(n: int) -> dict[str, dict[str, str]]:
        return {"headers": {"X-Forwarded-For": f"10.0.0.{n}"}}

    assert (await _rate(hub, key_a, id_a, 0.5, **ip(1)))[0] == 200
    assert (await _rate(hub, key_a, id_a, 0.6, **ip(1)))[0] == 200
    status, body = await _rate(hub, key_a, id_a, 0.1, **ip(2))  # a fresh IP, but the key's burst is spent
    assert status == 429 and body["error"]["type"] == "rate_limited" and body["error"]["retry_after_secs"] >= 1
    assert (await _rate(hub, key_b, id_a, 0.1, **ip(1)))[0] == 429  # another key, but the IP's burst is spent
    assert (await _rate(hub, key_b, "th-never-seen", 0.1, **ip(3)))[0] == 404  # a fresh key and IP pass
    # guessing keys costs the IP's burst too
    assert [(await _rate(hub, "tokenhub_wrong", id_a, 0.1, **ip(4)))[0] for _ in range(3)] == [401, 401, 429]
    await hub.services.records.flush()
    (row,) = await _rows(hub, request_id=id_a)
    assert row["feedback_score"] == 0.6  # the rejected ratings changed nothing
