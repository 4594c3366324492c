"""GET /admin/v1/events (SSE) and the event bus: order, payloads, keep-alives, slow subscribers, shutdown."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp

from pipeline.events import EventBus
from tests.conftest import ADMIN_TOKEN, Hub
from tests.fakes.openai_fake import Fail


class EventStream:
    """A client of /admin/v1/events that parses frames as they arrive."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self, timeout: float = 3.0) -> tuple[str, dict[str, Any]]:
        event, data = "", ""
        while True:
            line = (await asyncio.wait_for(self.response.content.readline(), timeout)).decode()
            if line == "":
                raise EOFError("stream ended")
            line = line.rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif line == "" and event:
                return event, json.loads(data)

    async def until(self, wanted: str, timeout: float = 3.0) -> dict[str, Any]:
        while True:
            event, data = await self.next(timeout)
            if event == wanted:
                return data


async def subscribe(hub: Hub) -> EventStream:
    response = await hub.client.get("/admin/v1/events", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    stream = EventStream(response)
    assert await stream.next() == ("connected", {"status": "ok"})
    return stream


async def test_subscribers_receive_routing_events_in_order(ready_hub: tuple[Hub, str]) -> None:
    hub, key = ready_hub
    first, second = await subscribe(hub), await subscribe(hub)
    expected = []
    for _ in range(8):
        _, _, resp = await hub.chat(key, policy={"mode": "cheap"})
        expected.append(("route_success", resp.headers["X-Request-Id"]))
    _, _, resp = await hub.chat(None)
    expected.append(("route_error", resp.headers["X-Request-Id"]))
    for stream in (first, second):
        received = []
        for _ in expected:
            event, data = await stream.next()
            assert data["type"] == event
            received.append((event, data["request_id"]))
        assert received == expected
    ok = await _route_event(hub, key)
    assert ok["model_id"] == "gpt-test" and ok["provider_id"] == "fake" and ok["mode"] == "cheap"
    assert ok["input_tokens"] == 10 and ok["output_tokens"] == 5 and ok["total_tokens"] == 15
    assert ok["cost_usd"] > 0 and ok["latency_ms"] > 0 and ok["api_key_name"] == "test"
    assert ok["reason"] and ok["timestamp"].endswith("Z")
    assert "error_class" not in ok  # empty fields are left out
    assert key not in json.dumps(ok)


async def _route_event(hub: Hub, key: str) -> dict[str, Any]:
    stream = await subscribe(hub)
    await hub.chat(key, policy={"mode": "cheap"})
    return await stream.until("route_success")


async def test_errors_health_changes_and_admin_actions_are_published(ready_hub: tuple[Hub, str]) -> None:
    hub, key = ready_hub
    stream = await subscribe(hub)
    hub.fake.script("gpt-test", *[Fail(500)] * 6)  # each request: retried, then failed
    status, _, resp = await hub.chat(key)
    assert status == 502
    error = await stream.until("route_error")
    assert (
        error["request_id"] == resp.headers["X-Request-Id"]
        and error["status"] == 502
        and error["error_class"] == "transient"
    )
    assert error["error_msg"] and "model_id" not in error  # no model served it: empty fields are left out
    status, _, resp = await hub.chat(key)
    assert status == 502  # second failure in a row
    change = await stream.until("health_change")
    assert (change["provider_id"], change["old_state"], change["new_state"]) == ("fake", "healthy", "degraded")
    assert "2 consecutive errors" in change["reason"]
    assert (await stream.next())[1]["request_id"] == resp.headers["X-Request-Id"]  # published while it was recorded

    hub.fake.reset()
    await hub.chat(key)
    recovered = await stream.until("health_change")
    assert (recovered["old_state"], recovered["new_state"]) == ("degraded", "healthy")

    await hub.add_model("gpt-other")
    action = await stream.until("admin_action")
    assert action["action"] == "create_model" and action["path"] == "/admin/v1/models"
    await hub.admin("DELETE", "/providers/fake", expect=200)
    action = await stream.until("admin_action")
    assert action["action"] == "delete_provider" and action["resource"] == "/admin/v1/providers/{id}"
    removed = await stream.until("health_change")
    assert (removed["provider_id"], removed["new_state"]) == ("fake", "removed")
    await hub.admin("POST", "/analytics/query", {"sql": "SELECT 1"}, expect=200)  # a read: no event
    await hub.admin("PUT", "/tsdb/retention", {"days": 3}, expect=200)
    assert (await stream.until("admin_action"))["action"] == "put_retention"


async def test_heartbeats_keep_idle_streams_alive(make_hub: Callable[..., Any]) -> None:
    hub = await make_hub(events_heartbeat_secs=0.05)
    stream = await subscribe(hub)
    beat = await stream.until("heartbeat")
    assert beat["reason"] == "providers=0 models=0"
    await stream.until("heartbeat")
    text = await (await hub.client.get("/metrics")).text()
    assert "tokenhub_heartbeat_total" in text and "tokenhub_event_subscribers 1.0" in text


async def test_shutdown_ends_open_streams_promptly(hub: Hub) -> None:
    stream = await subscribe(hub)  # "connected" has been read: the server holds an open stream
    assert hub.services.events.subscribers == 1
    reader = asyncio.create_task(stream.response.content.read())
    await asyncio.wait_for(hub.client.server.close(), 5)  # would wait the whole drain timeout otherwise
    assert await asyncio.wait_for(reader, 5) == b""  # the stream ended cleanly, nothing after "connected"
    assert hub.services.events.subscribers == 0


async def test_a_slow_subscriber_is_dropped_and_never_blocks_publishing() -> None:
    dropped: list[None] = []
    bus = EventBus(buffer=3, on_subscriber_dropped=lambda: dropped.append(None))
    slow, fast = bus.subscribe(), bus.subscribe()
    received: list[bytes] = []
    for i in range(3):
        bus.publish("route_success", request_id=f"r{i}")
        received += await fast.next_frames()
    bus.publish("route_success", request_id="r3")  # the slow one's buffer is already full
    assert slow.dropped and slow.closed and not fast.closed
    assert bus.subscribers == 1 and len(dropped) == 1
    frames = await slow.next_frames()  # what it had buffered is still delivered, then the stream ends
    assert [json.loads(f.split(b"data: ")[1])["request_id"] for f in frames] == ["r0", "r1", "r2"]
    assert await slow.next_frames() == []
    received += await fast.next_frames()
    assert [json.loads(f.split(b"data: ")[1])["request_id"] for f in received] == ["r0", "r1", "r2", "r3"]


async def test_publishing_without_subscribers_does_nothing() -> None:
    bus = EventBus()
    assert not bus.active
    bus.publish("route_success", request_id="nobody")  # no error, nothing kept
    subscriber = bus.subscribe()
    assert bus.active
    bus.unsubscribe(subscriber)
    assert not bus.active and subscriber.closed
    bus.close()
    late = bus.subscribe()
    assert late.closed and await late.next_frames() == []
