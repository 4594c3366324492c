"""The Recorder: one record per request handed to a list of sinks, from the record stage and the edge alike;
a failing sink stops nothing; the request-line writer is the one the composition root injects."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from pipeline.app import create_app
from pipeline.context import RequestContext
from pipeline.logging import QueuedStream, RequestLines
from pipeline.types import RequestRecord
from stages.recorder import Recorder
from tests.conftest import Hub


class Collect:
    name = "collect"

    def __init__(self) -> None:
        self.records: list[RequestRecord] = []

    def __call__(self, record: RequestRecord, ctx: RequestContext) -> None:
        self.records.append(record)


class Boom:
    name = "boom"

    def __call__(self, record: RequestRecord, ctx: RequestContext) -> None:
        raise RuntimeError("this sink is broken")


def test_the_sink_list_lives_in_one_place_in_order() -> None:
    recorder = Recorder([Collect()])
    recorder.add(Boom(), before="collect")
    assert [sink.name for sink in recorder.sinks] == ["boom", "collect"]
    with pytest.raises(ValueError, match="no sink named 'nope'; sinks: boom, collect"):
        recorder.add(Collect(), before="nope")


async def test_services_run_the_default_sinks_learning_first_and_the_queue_before_accounting(hub: Hub) -> None:
    names = [sink.name for sink in hub.services.recorder.sinks]
    assert names == ["learning", "metrics", "events", "log_line", "request_log", "key_accounting"]


async def test_a_failing_sink_is_counted_and_stops_neither_the_others_nor_the_request(
    ready_hub: tuple[Hub, str],
) -> None:
    hub, key = ready_hub
    collect = Collect()
    hub.services.recorder.add(Boom(), before="learning")  # first: every real sink runs after it
    hub.services.recorder.add(collect)
    status, body, resp = await hub.chat(key, headers={"X-Request-Id": "survives-boom"})
    assert status == 200 and body["response"]["choices"][0]["message"]["content"] == "reply from gpt-test"
    request_id = resp.headers["X-Request-Id"]
    await hub.services.records.flush()
    [row] = [r for r in await hub.logs() if r["request_id"] == request_id]
    assert row["client_request_id"] == "survives-boom"
    assert row["status"] == 200 and row["attempts"] == "gpt-test=ok" and row["cost_usd"] > 0  # learning ran too
    assert [r.request_id for r in collect.records] == [request_id]
    metrics = await (await hub.client.get("/metrics")).text()
    assert 'tokenhub_record_sink_failures_total{sink="boom"} 1.0' in metrics
    assert 'tokenhub_requests_total{mode="normal",model="gpt-test",provider="fake",status="ok"} 1.0' in metrics


async def test_requests_rejected_at_the_edge_reach_the_same_sinks(ready_hub: tuple[Hub, str]) -> None:
    hub, key = ready_hub
    collect = Collect()
    hub.services.recorder.add(collect)
    auth = {"Authorization": f"Bearer {key}"}
    bad_chat = await hub.client.post("/v1/chat", data=b"{not json", headers={**auth, "X-Request-Id": "bad-chat"})
    bad_plan = await hub.client.post("/v1/plan", json={"request": {}}, headers={**auth, "X-Request-Id": "bad-plan"})
    assert (bad_chat.status, bad_plan.status) == (400, 400)
    assert (await bad_chat.json())["error"]["request_id"] == bad_chat.headers["X-Request-Id"]
    assert [(r.request_id, r.client_request_id, r.endpoint, r.status) for r in collect.records] == [
        (bad_chat.headers["X-Request-Id"], "bad-chat", "chat", 400),
        (bad_plan.headers["X-Request-Id"], "bad-plan", "plan", 400),
    ]
    key_id = hub.services.identify(key).id  # the edge resolves the key (it picks the tenant) before decoding
    assert all(r.api_key_id == key_id and r.model_id == "" and r.cost_usd == 0 for r in collect.records)


async def test_request_lines_go_to_the_writer_the_app_is_given(
    ready_hub: tuple[Hub, str], aiohttp_client: Any, tmp_path: Path
) -> None:
    base, _ = ready_hub  # only for its test settings; this app has its own data directory
    settings = base.services.settings.model_copy(update={"data_dir": tmp_path / "with-lines"})
    out = io.BytesIO()
    stream = QueuedStream(out, interval=60)
    client = await aiohttp_client(create_app(settings, request_lines=RequestLines(stream, level="info")))
    hub = Hub(client, base.fake)
    await hub.add_provider()
    await hub.add_model("gpt-test", input_per_1k=0.001, output_per_1k=0.002)
    key = await hub.new_key()
    status, _, resp = await hub.chat(key, headers={"X-Request-Id": "line-1"})
    assert status == 200
    stream.close()
    lines = [json.loads(line) for line in out.getvalue().decode().splitlines()]
    [line] = [line for line in lines if line.get("event") == "request"]
    assert line["request_id"] == resp.headers["X-Request-Id"] and line["client_request_id"] == "line-1"
    assert line["status"] == 200 and line["model"] == "gpt-test"
    assert (line["input_tokens"], line["output_tokens"], line["level"]) == (10, 5, "info")
    assert line["cost_usd"] == pytest.approx(10 / 1000 * 0.001 + 5 / 1000 * 0.002)
    assert key not in out.getvalue().decode() and "sk-test-secret" not in out.getvalue().decode()


class WaitsForTheClient:
    """A sink that holds the event loop until the client thread has the whole answer (or 5 s have passed): it can
    only see the answer if the server wrote it before recording."""

    name = "waits_for_the_client"

    def __init__(self) -> None:
        self.answered = threading.Event()
        self.seen: list[bool] = []

    def __call__(self, record: RequestRecord, ctx: RequestContext) -> None:
        self.seen.append(self.answered.wait(5))


@pytest.mark.parametrize("stream", [False, True])
async def test_a_request_is_recorded_after_its_answer_is_written_and_before_the_next_request(
    ready_hub: tuple[Hub, str], stream: bool
) -> None:
    hub, key = ready_hub
    sink = WaitsForTheClient()
    hub.services.recorder.add(sink)
    url = str(hub.client.make_url("/v1/chat/completions"))
    body = json.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "stream": stream})

    def ask() -> bytes:  # a plain blocking client in a thread: it reads the socket while the loop is held
        request = urllib.request.Request(
            url, body.encode(), {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = response.read()
        sink.answered.set()
        return answer

    answer = await asyncio.to_thread(ask)
    assert (b"data: [DONE]" in answer) if stream else json.loads(answer)["model"] == "gpt-test"
    assert sink.seen == [True]  # recorded once, after the client had the whole answer
    metrics = await (await hub.client.get("/metrics")).text()  # the next request: the record is counted
    assert 'tokenhub_requests_total{mode="normal",model="gpt-test",provider="fake",status="ok"} 1.0' in metrics
