"""The lane (pipeline/edge/lane.py): chat requests answered from the socket, everything else handed to aiohttp on
the same connection, from that request's first byte; raw sockets, so each test controls the bytes on the wire."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from pipeline.edge.lane import LaneServer, _head
from tests.conftest import Hub
from tests.fakes.openai_fake import FakeOpenAI, Gated, Hang
from tests.support.server import Server, quiet_server_env

CHAT = {"model": "auto", "messages": [{"role": "user", "content": "hello"}]}


def _post(key: str, body: Any = CHAT, *, path: str = "/v1/chat/completions", extra: str = "") -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n{extra}\r\n"
    )
    return head.encode() + data


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode()


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response: status, headers (lower-case names), body (de-chunked)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if status < 200 or "content-length" in headers:  # 100 Continue has no body
        return status, headers, await reader.readexactly(int(headers.get("content-length", 0)))
    body = b""
    while True:  # chunked
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return status, headers, body
        body += chunk[:-2]


def _lane(hub: Hub) -> LaneServer:
    server = hub.client.server.runner.server
    assert isinstance(server, LaneServer)
    return server


async def _open(hub: Hub) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(hub.client.server.host, hub.client.server.port)


async def test_a_chat_request_is_answered_by_the_lane_and_the_connection_stays_with_it(
    ready_hub: tuple[Hub, str],
) -> None:
    hub, key = ready_hub
    reader, writer = await _open(hub)
    for _ in range(2):  # keep-alive: the second request on the same connection
        writer.write(_post(key))
        status, headers, body = await _response(reader)
        assert status == 200, body
        assert json.loads(body)["choices"][0]["message"]["content"]
        assert headers["content-type"] == "application/json"
        assert headers["x-request-id"].startswith("th-")
        assert headers["x-negotiated-model"] and headers["date"]
        assert len(_lane(hub).connections) == 1  # still the lane's, not aiohttp's
    writer.close()


async def test_errors_on_the_lane_carry_the_request_id_and_keep_the_connection(ready_hub: tuple[Hub, str]) -> None:
    hub, key = ready_hub
    reader, writer = await _open(hub)
    writer.write(_post("th-wrong-key"))
    status, headers, body = await _response(reader)
    assert status == 401
    assert json.loads(body)["error"]["request_id"] == headers["x-request-id"]
    writer.write(_post(key, {"model": "auto", "messages": "not a list"}))
    status, headers, body = await _response(reader)
    assert status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error"
    writer.write(_post(key))
    assert (await _response(reader))[0] == 200
    writer.close()


async def test_a_stream_on_the_lane_ends_and_the_connection_serves_the_next_request(
    ready_hub: tuple[Hub, str],
) -> None:
    hub, key = ready_hub
    reader, writer = await _open(hub)
    writer.write(_post(key, {**CHAT, "stream": True}))
    status, headers, body = await _response(reader)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert headers["transfer-encoding"] == "chunked" and headers["x-request-id"].startswith("th-")
    assert headers["date"] and headers["server"] and headers["x-negotiated-model"]
    assert body.startswith(b"data: ") and body.rstrip().endswith(b"data: [DONE]")
    writer.write(_post(key))
    assert (await _response(reader))[0] == 200
    writer.close()


async def test_a_stream_the_client_asked_to_close_after_ends_and_closes(ready_hub: tuple[Hub, str]) -> None:
    hub, key = ready_hub
    reader, writer = await _open(hub)
    writer.write(_post(key, {**CHAT, "stream": True}, extra="Connection: close\r\n"))
    status, headers, body = await _response(reader)
    assert status == 200 and headers["connection"] == "close"
    assert body.rstrip().endswith(b"data: [DONE]")
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server, nothing after the stream
    writer.close()


async def test_other_routes_are_handed_to_aiohttp_which_then_serves_the_connection(ready_hub: tuple[Hub, str]) -> None:
    hub, key = ready_hub
    lane = _lane(hub)
    aiohttp_connections = len(lane.aiohttp.connections)  # the test client's own (the admin API's)
    reader, writer = await _open(hub)
    writer.write(_post(key))  # the lane first
    assert (await _response(reader))[0] == 200
    writer.write(_get("/v1/models"))  # then a route of aiohttp's on the same connection
    status, headers, body = await _response(reader)
    assert status == 200 and json.loads(body)["object"] == "list"
    assert headers["x-request-id"].startswith("th-")  # aiohttp's middleware answered
    assert not lane.connections and len(lane.aiohttp.connections) == aiohttp_connections + 1
    writer.write(_post(key))  # aiohttp now serves the chat route too, as it did before the lane
    status, _, body = await _response(reader)
    assert status == 200, body
    writer.close()


async def test_what_the_lane_does_not_take_reaches_aiohttp_whole(ready_hub: tuple[Hub, str]) -> None:
    hub, key = ready_hub
    auth = f"Host: t\r\nAuthorization: Bearer {key}\r\n"
    cases = [
        (_post(key, extra="Expect: 100-continue\r\n"), (100, 200)),  # aiohttp sends 100 Continue, then answers
        (_post(key).replace(b"HTTP/1.1", b"HTTP/1.0", 1), (200,)),
        (_post(key, path="/v1/chat/completions?x=1"), (200,)),
        (_post(key).replace(b"Host: t", b"Host: t\r\nX-Not-Utf8: \xff"), (200,)),
        (f"POST /v1/chat/completions HTTP/1.1\r\n{auth}Content-Length: 99999999999\r\n\r\n".encode(), (413,)),
        (f"POST /v1/chat/completions HTTP/1.1\r\n{auth}Content-Length: 1x\r\n\r\n".encode(), (400,)),
        (b"GARBAGE\r\n\r\n", (400,)),
    ]
    for raw, statuses in cases:
        reader, writer = await _open(hub)
        writer.write(raw)
        got = [(await _response(reader))[0] for _ in statuses]
        assert tuple(got) == statuses, (raw[:60], got)
        writer.close()


async def test_a_chunked_body_is_read_and_one_over_the_limit_is_refused(make_hub: Any) -> None:
    hub = await make_hub(max_body_bytes=4096)
    await hub.add_provider()
    await hub.add_model("fake-gpt")
    key = await hub.new_key()
    data = json.dumps(CHAT).encode()
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n"
    chunked = head.encode() + b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)
    reader, writer = await _open(hub)
    writer.write(chunked)
    status, _, body = await _response(reader)
    assert status == 200, body
    big = json.dumps({**CHAT, "user": "x" * 5000}).encode()
    # No last chunk: the answer comes once the limit is passed, not when (if ever) the body ends.
    writer.write(head.encode() + b"%x\r\n%s\r\n" % (len(big), big))
    status, headers, body = await _response(reader)
    assert status == 413 and json.loads(body)["error"]["request_id"] == headers["x-request-id"]
    assert headers["connection"] == "close" and await reader.read() == b""
    writer.close()


async def test_pipelined_requests_are_answered_in_order(ready_hub: tuple[Hub, str]) -> None:
    hub, key = ready_hub
    reader, writer = await _open(hub)
    writer.write(_post(key) + _post("th-wrong-key") + _post(key))
    assert [(await _response(reader))[0] for _ in range(3)] == [200, 401, 200]
    # A request for aiohttp pipelined behind a chat request in the same read: where it began is gone, so the
    # connection closes after the answers before it (RFC 9112 9.3.2: the client retries what was not answered).
    writer.write(_post(key) + _get("/healthz"))
    assert (await _response(reader))[0] == 200
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()


async def test_a_client_that_leaves_cancels_its_request(make_hub: Any) -> None:
    hub = await make_hub(provider_timeout_secs=60)  # only the client's leaving can end the provider call
    await hub.add_provider()
    await hub.add_model("gpt-test")
    key = await hub.new_key()
    hub.fake.script("gpt-test", Gated(asyncio.Event()))  # never answers
    _, writer = await _open(hub)
    writer.write(_post(key))
    await hub.fake.wait_until(lambda: hub.fake.in_flight == 1)  # the provider call is under way
    writer.close()
    await hub.fake.wait_until(lambda: hub.fake.cancelled == 1)  # and is cancelled with the request
    deadline = asyncio.get_running_loop().time() + 15
    while not any(line.get("status") == 499 for line in await hub.logs()):  # the writer logs it a little later
        assert asyncio.get_running_loop().time() < deadline, "no 499 in the request log"
        await asyncio.sleep(0.05)


async def test_with_the_lane_off_every_request_goes_through_aiohttp(make_hub: Any) -> None:
    hub = await make_hub(lane_enabled=False)
    assert not isinstance(hub.client.server.runner.server, LaneServer)


def test_a_newline_in_a_response_header_is_refused_not_sent() -> None:
    response = web.Response(body=b"{}", headers={"X-Alias-From": "a\r\nSet-Cookie: stolen=1"})
    with pytest.raises(ValueError, match="newline"):
        _head(response, "Content-Length: 2", True)
    assert _head(web.Response(status=204), "Content-Length: 0", False).endswith(b"Connection: close\r\n\r\n")


async def test_sigterm_answers_the_lane_request_in_flight_and_closes_idle_lane_connections(
    tmp_path: Path, fake: FakeOpenAI
) -> None:
    admin_token = "lane-admin-token-0123456789abcdef"
    server = Server(tmp_path / "data", **quiet_server_env(admin_token, tmp_path))
    await server.start()
    admin = {"Authorization": f"Bearer {admin_token}"}
    async with aiohttp.ClientSession(base_url=server.url) as session:
        provider = {"id": "fake", "base_url": fake.base_url, "api_key": "sk-x"}
        assert (await session.post("/admin/v1/providers", json=provider, headers=admin)).status == 201
        assert (
            await session.post("/admin/v1/models", json={"id": "slow", "provider_id": "fake"}, headers=admin)
        ).status == 201
        key = (await (await session.post("/admin/v1/apikeys", json={"name": "k"}, headers=admin)).json())["key"]
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", server.port)
    idle_writer.write(_post(key))
    assert (await _response(idle_reader))[0] == 200  # a lane connection, idle from here on
    fake.script("slow", Hang(1.0))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(_post(key))
    await fake.wait_until(lambda: fake.in_flight == 1)
    server.terminate()
    assert await asyncio.wait_for(idle_reader.read(), 5) == b""  # closed at once, not after the drain
    status, _, body = await _response(reader)
    assert status == 200 and json.loads(body)["model"] == "slow"
    assert await asyncio.wait_for(reader.read(), 5) == b""  # then closed: the server is stopping
    code, _, err = await server.stop()
    assert code == 0, err[-2000:]
    writer.close()
    idle_writer.close()


async def test_requests_split_into_single_bytes_are_parsed_and_handed_over_whole(ready_hub: tuple[Hub, str]) -> None:
    hub, key = ready_hub
    reader, writer = await _open(hub)
    for raw, want in ((_post(key), 200), (_get("/v1/models"), 200)):  # the lane's, then one for aiohttp
        for at in range(len(raw)):
            writer.write(raw[at : at + 1])
            await writer.drain()
            if at % 16 == 0:
                await asyncio.sleep(0)  # let the server read what came so far
        status, _, body = await _response(reader)
        assert status == want, body
    writer.close()
